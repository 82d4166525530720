"""Which variational family is good enough for your data? Fit one data set with each, tabulate the diagnostics.

Every family in ``pyro_vae.POSTERIORS`` (or those given by ``--families``)
trains the same VAE (same networks, prior, likelihood, epochs, seed); only
q(z | x) changes. Each is scored on the test split with:

* ELBO and IWAE (K draws), both over the same K draws per point, so the
  IWAE - ELBO gap is the Jensen gap of those draws: >= 0 for every point, and
  small when q(z | x) is close to the model's posterior;
* PSIS k-hat (Yao et al. 2018, ``pyro_vae.diagnostics.psis_diagnostic``) of
  the same importance weights: its median, and the share of points above 0.7,
  where importance estimates (the IWAE one included) are unreliable.

A family is good enough when its gap is small and few points have k-hat
above 0.7; a richer family costs more per step (benchmarks/RESULTS.md) and,
at equal epochs, is not guaranteed to end with a higher bound: it trains the
encoder and the generative model jointly, and a diagonal posterior can be
matched by a model that makes its posterior nearly diagonal.

    python examples/compare_posteriors.py                        # the embedded digits, about 2 minutes
    python examples/compare_posteriors.py --dataset mnist --epochs 5 --families normal,iaf,planar
    python examples/compare_posteriors.py --quick                # seconds; run by the tests
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch

from pyro_vae import VAE, fit, iwae_log_likelihood, make_optimizer
from pyro_vae.data import load_dataset
from pyro_vae.diagnostics import psis_diagnostic
from pyro_vae.evaluate import elbo_decomposition
from pyro_vae.posteriors import POSTERIORS

COLUMNS = ["posterior", "guide_params", "train_s", "elbo", "iwae", "iwae_gap", "khat_median", "khat_above_07",
           "active_units"]


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def evaluate(vae, test, k: int) -> dict:
    """ELBO, IWAE and their gap over the same ``k`` draws per point (Monte Carlo KL for every family, so the
    estimators are the same for all), and PSIS k-hat of those importance weights (same seed: same draws)."""
    dec = elbo_decomposition(vae, test, num_samples=k, iwae_samples=k, analytic_kl=False, seed=0)
    psis = psis_diagnostic(vae, test, num_samples=k, smoothed_log_likelihood=False, seed=0)
    return {"elbo": dec.elbo, "iwae": dec.iwae, "iwae_gap": dec.iwae_gap, "active_units": dec.active_units,
            "khat_median": psis.khat.median().item(), "khat_above_07": psis.fraction_above_07}


def print_table(rows, k: int, latent_dim: int) -> None:
    print(f"\n{'posterior':<12} {'guide params':>12} {'train s':>8} {'test ELBO':>10} {f'IWAE k={k}':>11} "
          f"{'gap':>6} {'k-hat med':>9} {'k>0.7':>6} {f'active/{latent_dim}':>9}")
    for r in rows:
        print(f"{r['posterior']:<12} {r['guide_params']:>12d} {r['train_s']:>8.1f} {r['elbo']:>10.2f} "
              f"{r['iwae']:>11.2f} {r['iwae_gap']:>6.2f} {r['khat_median']:>9.2f} {r['khat_above_07']:>6.0%} "
              f"{r['active_units']:>9d}")
    print("(nats per test point; gap = IWAE - ELBO over the same draws; k-hat > 0.7: importance weights unreliable)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="a dataset name or file (see pyro_vae.data)")
    parser.add_argument("--families", default="all", help=f"comma-separated subset of {', '.join(POSTERIORS.names())}")
    parser.add_argument("--likelihood", default="bernoulli")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--k", type=int, default=1000, help="draws per test point for ELBO, IWAE and PSIS")
    parser.add_argument("--test-points", type=int, default=None, help="score the first N test points (default all)")
    parser.add_argument("--data-dir", default=None, help="where a torchvision data set lives (for --dataset mnist)")
    parser.add_argument("--out", default="compare_posteriors_out")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; small nets run fastest on one")
    parser.add_argument("--quick", action="store_true", help="tiny run: 2 epochs, k=50, 64 test points")
    args = parser.parse_args(argv)
    families = list(POSTERIORS.names()) if args.families == "all" else [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in POSTERIORS.names()]
    if unknown:
        parser.error(f"--families: unknown {unknown}; choose from {', '.join(POSTERIORS.names())}")
    if args.quick:
        args.epochs, args.k, args.test_points = 2, 50, min(args.test_points or 64, 64)
    torch.set_num_threads(args.threads)

    data = load_dataset(args.dataset, data_dir=args.data_dir, preprocess="scale")
    test = data.test[:args.test_points] if args.test_points else data.test
    rows = []
    for family in families:
        torch.manual_seed(0)
        vae = VAE(data.data_shape, latent_dim=args.latent_dim, likelihood=args.likelihood, posterior=family,
                  net={"name": "mlp", "hidden": [args.hidden]}, name=f"vae_{family}")
        start = time.perf_counter()
        fit(vae, data.train, epochs=args.epochs, batch_size=args.batch_size, optim=make_optimizer("adam", lr=args.lr),
            seed=0, progress=False)
        row = {"posterior": family, "guide_params": n_params(vae.encoder) + n_params(vae.posterior),
               "train_s": time.perf_counter() - start, **evaluate(vae, test, args.k)}
        # the documented identity: the decomposition's IWAE is iwae_log_likelihood's with the same seed
        alone = iwae_log_likelihood(vae, test, num_samples=args.k, seed=0).mean
        assert abs(alone - row["iwae"]) < 1e-4 * max(1.0, abs(alone)), (family, alone, row["iwae"])
        rows.append(row)
        print(f"fitted {family}: ELBO {row['elbo']:.2f}, IWAE {row['iwae']:.2f}", flush=True)
    print_table(rows, args.k, args.latent_dim)
    best = max(rows, key=lambda r: r["iwae"])
    tight = min(rows, key=lambda r: r["iwae_gap"])
    print(f"highest IWAE: {best['posterior']} ({best['iwae']:.2f}); smallest gap: {tight['posterior']} "
          f"({tight['iwae_gap']:.2f} nats)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare_posteriors.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'compare_posteriors.csv'}")

    # Self-check: every family scored with finite bounds; the gap is Jensen's over the same draws (>= 0 up to
    # float rounding); k-hat shares are shares; active units count latent units.
    assert [r["posterior"] for r in rows] == families
    for r in rows:
        assert all(math.isfinite(r[c]) for c in ("elbo", "iwae", "iwae_gap")), r
        assert r["iwae_gap"] >= -1e-3, f"IWAE below the ELBO over the same draws for {r['posterior']}: {r}"
        assert 0.0 <= r["khat_above_07"] <= 1.0 and 0 <= r["active_units"] <= args.latent_dim, r
    print("self-check passed: IWAE >= ELBO over the same draws for every family")
    return 0


if __name__ == "__main__":
    sys.exit(main())
