"""Compare priors, posteriors and likelihoods on one data set: change one name, refit, evaluate.

Starting from a baseline (prior "normal", posterior "normal", likelihood
"bernoulli"), each row changes exactly one name: every prior in
``pyro_vae.PRIORS``, every variational family in ``pyro_vae.POSTERIORS``, then
every likelihood that fits data in [0, 1]. Each model is fitted the same way and
evaluated on the test split with the ELBO, the IWAE log-likelihood (Burda et
al. 2016), the number of active units and the share of test points whose PSIS
k-hat exceeds 0.7 (Yao et al. 2018: the importance estimates are unreliable
there). ``examples/compare_posteriors.py`` looks at the families alone, with
the gap and k-hat over the same draws.

    python examples/compare_models.py                  # digits, a few minutes on one CPU core
    python examples/compare_models.py --smoke          # seconds; run by the tests
    python examples/compare_models.py --out results/   # where the table and figure go

Log-likelihoods are comparable between rows with the same likelihood. Across
likelihoods they are not: "bernoulli" on grey values is not a normalised
density, while "continuous-bernoulli" (on [0, 1]) and "normal" (on the real
line) are densities of different supports.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pyro_vae import PRIORS, VAE, fit, make_optimizer
from pyro_vae.data import load_dataset
from pyro_vae.diagnostics import psis_diagnostic
from pyro_vae.evaluate import elbo_decomposition
from pyro_vae.posteriors import POSTERIORS

BASELINE = {"prior": "normal", "posterior": "normal", "likelihood": "bernoulli"}
UNIT_INTERVAL_LIKELIHOODS = ["bernoulli", "continuous-bernoulli", "normal"]
COLUMNS = ["prior", "posterior", "likelihood", "elbo", "iwae", "iwae_gap", "active_units", "khat_above_07", "kl_method"]


def variants():
    """The baseline, then one changed name per row."""
    rows = [dict(BASELINE)]
    rows += [{**BASELINE, "prior": name} for name in PRIORS.names() if name != BASELINE["prior"]]
    rows += [{**BASELINE, "posterior": name} for name in POSTERIORS.names() if name != BASELINE["posterior"]]
    rows += [{**BASELINE, "likelihood": name} for name in UNIT_INTERVAL_LIKELIHOODS if name != BASELINE["likelihood"]]
    return rows


def evaluate(vae, test, k: int, num_samples: int) -> dict:
    dec = elbo_decomposition(vae, test, num_samples=num_samples, iwae_samples=k, seed=0)
    psis = psis_diagnostic(vae, test, num_samples=k, smoothed_log_likelihood=False, seed=0)  # the IWAE draws
    return {"elbo": dec.elbo, "iwae": dec.iwae, "iwae_gap": dec.iwae_gap, "active_units": dec.active_units,
            "khat_above_07": psis.fraction_above_07, "kl_method": dec.kl_method}


def print_table(rows, k: int, latent_dim: int) -> None:
    print(f"\n{'prior':<10} {'posterior':<12} {'likelihood':<21} {'test ELBO':>10} {f'IWAE k={k}':>11} {'gap':>6} "
          f"{f'active/{latent_dim}':>9} {'k>0.7':>6}  KL")
    for r in rows:
        print(f"{r['prior']:<10} {r['posterior']:<12} {r['likelihood']:<21} {r['elbo']:>10.2f} {r['iwae']:>11.2f} {r['iwae_gap']:>6.2f} "
              f"{r['active_units']:>9d} {r['khat_above_07']:>6.0%}  {r['kl_method']}")
    print("(nats per test point; compare log-likelihoods only between rows with the same likelihood)")


def save(rows, out: Path, k: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare_models.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    labels = [f"{r['prior']} / {r['posterior']} / {r['likelihood']}" for r in rows]
    fig = Figure(figsize=(11, 0.45 * len(rows) + 1.5))
    ax_ll, ax_k = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    ys = range(len(rows))
    ax_ll.barh([y + 0.2 for y in ys], [r["iwae"] for r in rows], height=0.4, label=f"IWAE (k={k})")
    ax_ll.barh([y - 0.2 for y in ys], [r["elbo"] for r in rows], height=0.4, label="ELBO")
    ax_ll.set_yticks(list(ys), labels)
    ax_ll.invert_yaxis()
    ax_ll.set_xlabel("test log-likelihood bound (nats per point)")
    ax_ll.legend(loc="best", fontsize="small")
    ax_k.barh(list(ys), [r["khat_above_07"] for r in rows], color="tab:red")
    ax_k.set_xlim(0, 1)
    ax_k.set_xlabel("share of points with k-hat > 0.7")
    fig.savefig(out / "compare_models.png", dpi=100, bbox_inches="tight")
    print(f"wrote {out / 'compare_models.csv'} and {out / 'compare_models.png'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="a dataset name or file (see pyro_vae.data)")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--k", type=int, default=1000, help="importance samples for IWAE and PSIS")
    parser.add_argument("--out", default="compare_models_out")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; small nets run fastest on one")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 2 epochs, k=50, 128 test points")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.k = 2, 50
    torch.set_num_threads(args.threads)

    data = load_dataset(args.data, preprocess="scale")
    test = data.test[:128] if args.smoke else data.test
    rows = []
    for spec in variants():
        vae = VAE(data.data_shape, latent_dim=args.latent_dim, prior=spec["prior"], likelihood=spec["likelihood"],
                  posterior=spec["posterior"], net={"name": "mlp", "hidden": [128]})
        fit(vae, data.train, epochs=args.epochs, batch_size=128, optim=make_optimizer("adam", lr=3e-3), seed=0,
            progress=False)
        rows.append({**spec, **evaluate(vae, test, args.k, num_samples=min(args.k, 100))})
        print(f"fitted {spec['prior']} / {spec['posterior']} / {spec['likelihood']}: IWAE {rows[-1]['iwae']:.2f}", flush=True)
    print_table(rows, args.k, args.latent_dim)
    save(rows, Path(args.out), args.k)

    # Self-check: the IWAE bound is at least the ELBO (up to the Monte Carlo noise of the analytic-KL ELBO),
    # every figure is finite and active units are counts of latent units.
    for r in rows:
        assert all(math.isfinite(r[c]) for c in ("elbo", "iwae", "iwae_gap")), r
        assert r["iwae"] >= r["elbo"] - 0.5, \
            f"IWAE below the ELBO for {r['prior']} / {r['posterior']} / {r['likelihood']}: {r}"
        assert 0 <= r["active_units"] <= args.latent_dim and 0.0 <= r["khat_above_07"] <= 1.0, r
    assert len(rows) == len(PRIORS.names()) + len(POSTERIORS.names()) + len(UNIT_INTERVAL_LIKELIHOODS) - 2
    print("self-check passed: IWAE >= ELBO - 0.5 nats for every model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
