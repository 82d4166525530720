"""Test log-likelihood on dynamically binarised MNIST: pyro_vae against a hand-written PyTorch reference.

Three models in the configuration of Burda et al. (2016, one and two stochastic
layers; tanh hidden layers of 200 units, z = 50) and the VampPrior of Tomczak &
Welling (2018, K = 500 pseudo-inputs):

======== ==========================================================================
vae      q(z|x), p(x|z): 784-200-200-50 / 50-200-200-784, N(0, I) prior
vamp     the same with p(z) = 1/K sum_k q(z | u_k)
two      z1 = 100, z2 = 50: x-200-200-z1 and z1-100-100-z2 (up), z2-100-100-z1 and z1-200-200-x (down)
======== ==========================================================================

For each model the reference is a deep copy of the library model's networks at
initialisation (same weights), trained by a hand-written loss and loop with no
Pyro: the single-sample ELBO with Monte Carlo KL (the estimator ``Trace_ELBO``
uses), the same batch size, learning rate, epochs and per-epoch dynamic
binarisation. Both are then scored by the IWAE estimate of log p(x) with K
samples on the same binarised test images: the library model by
``pyro_vae.iwae_log_likelihood``, the reference by a hand-written estimator,
which also scores the library model as a cross-check (the two estimators
agree to their Monte Carlo error).

    python benchmarks/bench_quality.py --epochs 10                  # MNIST, K = 5000 on 1000 test images
    python benchmarks/bench_quality.py --epochs 10 --test-points 10000
    python benchmarks/bench_quality.py --quick                      # digits, tiny: seconds (run by the tests)
    python benchmarks/bench_quality.py --models vae --posterior iaf --posterior-options '{"n_flows": 4}'

``--posterior NAME`` (a family of ``pyro_vae.POSTERIORS``; options as JSON)
trains the library model with that variational family; the reference stays the
hand-written diagonal Normal, so the comparison reads "this family against the
diagonal posterior at equal epochs on the same networks". With a non-normal
family the library model's encoder has more outputs (and the posterior its own
parameters), so the reference cannot be a deep copy: it is a separate diagonal
library model built with the same seed whose every shared weight is then
overwritten by the family model's initial one: the whole decoder (and prior),
the encoder's hidden layers, and the encoder's output rows of the first two
heads (loc and a positive scale in every built-in family). The two models
differ only in the family's extra heads and parameters. The table also gives the paired difference
``reference NLL - library NLL`` over the same test images with its standard
error (positive: the library model is better). Published figures for the
families (Kingma et al. 2016; Rezende & Mohamed 2015) are in ANCHORS.md and the
``published`` column; their networks differ from these MLPs.

The published figures (thousands of epochs on GPUs) are in ANCHORS.md; the
comparison that matters here is library against reference at equal epochs.
Writes ``benchmarks/results/quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pyro_vae import VAE, fit, iwae_log_likelihood, make_optimizer
from pyro_vae.data import load_dataset
from pyro_vae.models import StackedVAE
from pyro_vae.posteriors import POSTERIORS

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
PUBLISHED = {"vae": 86.76, "vamp": 85.57, "two": 85.33}  # ANCHORS.md: Burda et al. 2016; Tomczak & Welling 2018
# ANCHORS.md, richer posteriors (other networks): (the family's NLL, its paper's diagonal/baseline NLL, source)
PUBLISHED_POSTERIOR = {
    "iaf": (79.10, 81.08, "Kingma et al. 2016, Table 1, ResNets: IAF vs diagonal"),
    "planar": (85.1, 89.9, "Rezende & Mohamed 2015: planar K=80 vs DLGM baseline"),
}


# ----------------------------------------------------------------------------- the models
def build(kind: str, data_shape, hidden: int, latent: int, components: int, activation: str = "tanh",
          posterior="normal"):
    net = {"name": "mlp", "hidden": [hidden, hidden], "activation": activation}
    if kind == "vae":
        return VAE(data_shape, latent, prior="normal", likelihood="bernoulli", net=net, posterior=posterior)
    if kind == "vamp":
        return VAE(data_shape, latent, prior={"name": "vamp", "n_components": components}, likelihood="bernoulli",
                   net=net, posterior=posterior)
    if (posterior if isinstance(posterior, str) else posterior["name"]) != "normal":
        raise ValueError(f"--posterior: model {kind!r} takes no posterior family; use --models vae (or vamp)")
    return StackedVAE(data_shape, [2 * latent, latent], likelihood="bernoulli", net=net,
                      stage_hidden=[hidden // 2, hidden // 2], activation=activation)


def diagonal_twin(lib, kind, data_shape, args):
    """A diagonal-Normal library model holding ``lib``'s initial weights wherever the two share a weight.

    Built with the same seed, then every tensor of its state whose name ``lib`` shares is copied from
    ``lib``: equal shapes whole (decoder, prior, hidden layers), and the encoder's output layer by its
    first rows, which are the loc and scale heads in every family (``lib`` emits more heads after them).
    """
    torch.manual_seed(args.seed)
    twin = build(kind, data_shape, args.hidden, args.latent, args.components, args.activation)
    theirs = lib.state_dict()
    state = twin.state_dict()
    for name, value in state.items():
        other = theirs.get(name)
        if other is None or other.dim() != value.dim() or other.shape[1:] != value.shape[1:] \
                or other.shape[0] < value.shape[0]:
            raise ValueError(f"{name}: no matching weight in the {args.posterior!r} model to copy")
        value.copy_(other[: value.shape[0]])
    return twin


# ----------------------------------------------------------------------------- the hand-written reference
def _normal_log_prob(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _sample(loc, scale, k):
    return loc + scale * torch.randn((k, *loc.shape), dtype=loc.dtype, device=loc.device)


def log_weights(m, kind: str, x: torch.Tensor, k: int) -> torch.Tensor:
    """``log p(x, z) - log q(z | x)`` for ``k`` draws per point: ``[k, B]``, written out without Pyro."""
    flat = x.flatten(1)
    if kind == "two":
        l1, s1 = m.first_encoder(x)
        z1 = _sample(l1, s1, k)
        l2, s2 = m.up[0].loc_scale(z1)
        z2 = l2 + s2 * torch.randn_like(s2)
        log_q = _normal_log_prob(z1, l1, s1) + _normal_log_prob(z2, l2, s2)
        pl, ps = m.stages[0].loc_scale(z2)
        log_prior = _normal_log_prob(z2, torch.zeros_like(z2), torch.ones_like(z2)) + _normal_log_prob(z1, pl, ps)
        z = z1
    else:
        loc, scale = m.encoder(x)
        z = _sample(loc, scale, k)
        log_q = _normal_log_prob(z, loc, scale)
        if kind == "vamp":
            lu, su = m.encoder(m.prior.pseudo_inputs)  # [K, d]
            # sum_d ((z - lu) / su)^2 by einsum over the expanded square in float64: broadcasting
            # [k, B, K, d] instead takes hours for K = 5000 particles on 10,000 test images
            zd, lu, prec = z.double(), lu.double(), su.double() ** -2
            sq = (torch.einsum("...d,cd->...c", zd * zd, prec) - 2 * torch.einsum("...d,cd->...c", zd, lu * prec)
                  + torch.einsum("cd,cd->c", lu * lu, prec))
            comp = -0.5 * sq - su.double().log().sum(-1) - 0.5 * lu.shape[-1] * math.log(2 * math.pi)  # [k, B, K]
            log_prior = (torch.logsumexp(comp, -1) - math.log(lu.shape[0])).float()
        else:
            log_prior = _normal_log_prob(z, torch.zeros_like(z), torch.ones_like(z))
    logits = m.decoder(z).flatten(2)  # [k, B, 784]: one Bernoulli head per pixel
    log_lik = -F.binary_cross_entropy_with_logits(logits, flat.expand_as(logits), reduction="none").sum(-1)
    return log_lik + log_prior - log_q


def log_weights_family(m, x: torch.Tensor, k: int) -> torch.Tensor:
    """As :func:`log_weights` for any posterior family: ``q = m.posterior(*m.encoder(x))`` drawn and scored by
    its own ``rsample``/``log_prob`` and the prior by ``m.prior().log_prob``, outside Pyro's traces and the
    library's noise streams (an independent check of ``iwae_log_likelihood``, not a hand-written model)."""
    q = m.posterior(*m.encoder(x))
    z = q.rsample((k,))
    logits = m.decoder(z).flatten(2)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.flatten(1).expand_as(logits), reduction="none").sum(-1)
    return log_lik + m.prior().log_prob(z) - q.log_prob(z)


def train_reference(m, kind, x_train, epochs, batch_size, lr, seed):
    """The hand-written loop: per epoch a fresh binarisation and permutation, Adam on the mean -ELBO."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    n = len(x_train)
    for _ in range(epochs):
        xb = torch.bernoulli(x_train)
        perm = torch.randperm(n)
        for lo in range(0, n, batch_size):
            batch = xb[perm[lo:lo + batch_size]]
            loss = -log_weights(m, kind, batch, 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return m


@torch.no_grad()
def iwae_reference(m, kind, x, k, chunk=250, seed=0, weights=None):
    """Hand-written IWAE: ``logmeanexp_k log_weights`` per point, particles in chunks: ``[N]`` (float64)."""
    torch.manual_seed(seed)
    weights = weights or (lambda batch, n: log_weights(m, kind, batch, n))
    per_point = []
    for lo in range(0, len(x), 100):
        batch = x[lo:lo + 100]
        lw = torch.cat([weights(batch, min(chunk, k - s)) for s in range(0, k, chunk)])
        per_point.append(torch.logsumexp(lw.double(), 0) - math.log(k))
    return torch.cat(per_point)


# ----------------------------------------------------------------------------- one comparison
def run(kind, data, x_test, args) -> dict:
    torch.manual_seed(args.seed)
    lib = build(kind, data.data_shape, args.hidden, args.latent, args.components, args.activation, args.posterior_spec)
    if kind == "vamp":
        lib.prior.init_from(data.train)  # pseudo-inputs start at training images, as `pyro-vae train` does
    # identical initial weights: a deep copy, or for another family a diagonal twin holding the shared ones
    ref = copy.deepcopy(lib) if args.posterior == "normal" else diagonal_twin(lib, kind, data.data_shape, args)
    start = time.perf_counter()  # the optimiser is built inside the timed span, as fit built it before
    fit(lib, data.train, epochs=args.epochs, batch_size=args.batch_size, optim=make_optimizer("adam", lr=args.lr),
        seed=args.seed, train_transform=torch.bernoulli, progress=not args.quiet)
    lib_s = time.perf_counter() - start
    start = time.perf_counter()
    train_reference(ref, kind, data.train, args.epochs, args.batch_size, args.lr, args.seed)
    ref_s = time.perf_counter() - start
    lib.eval()
    ref.eval()
    start = time.perf_counter()
    lib_ll = iwae_log_likelihood(lib, x_test, num_samples=args.k, seed=args.seed)
    lib_eval_s = time.perf_counter() - start
    start = time.perf_counter()
    ref_pp = iwae_reference(ref, kind, x_test, args.k, seed=args.seed)
    ref_eval_s = time.perf_counter() - start
    cross = None
    if not args.no_cross:
        family = None if args.posterior == "normal" else (lambda batch, n: log_weights_family(lib, batch, n))
        cross = iwae_reference(lib, kind, x_test, args.k, seed=args.seed + 1, weights=family).mean().item()
    gain = lib_ll.per_point.double() - ref_pp  # ref NLL - lib NLL, paired over the same images: > 0, library better
    published = PUBLISHED_POSTERIOR.get(args.posterior) if args.dataset == "mnist" else None
    row = {"model": kind, "posterior": args.posterior, "posterior_options": args.posterior_options,
           "activation": args.activation, "epochs": args.epochs, "k": args.k, "test_points": len(x_test),
           "lib_nll": -lib_ll.mean, "lib_stderr": lib_ll.stderr, "ref_nll": -ref_pp.mean().item(),
           "ref_minus_lib_nll": gain.mean().item(),
           "ref_minus_lib_stderr": (gain.std() / math.sqrt(len(gain))).item() if len(gain) > 1 else float("nan"),
           "lib_nll_by_reference_estimator": None if cross is None else -cross, "lib_train_s": round(lib_s, 1),
           "ref_train_s": round(ref_s, 1), "lib_eval_s": round(lib_eval_s, 1), "ref_eval_s": round(ref_eval_s, 1),
           "published_nll": PUBLISHED[kind] if args.dataset == "mnist" and args.posterior == "normal" else None,
           "published_family_nll": published and published[0], "published_diagonal_nll": published and published[1],
           "published_source": published and published[2]}
    print(json.dumps(row), flush=True)
    return row


def load(args):
    if args.quick:
        data = load_dataset("digits", preprocess="scale", val_fraction=0.0, test_fraction=0.2, seed=0)
    else:
        root = args.data_dir
        if root is None:  # torchvision extracts the archives next to them: work on a temporary copy
            root = tempfile.mkdtemp(prefix="bench_quality_")
            shutil.copytree(SHARED / "MNIST" / "raw", Path(root) / "MNIST" / "raw")
        data = load_dataset("mnist", data_dir=root, download=True, preprocess="scale", val_fraction=0.0, seed=0)
    g = torch.Generator().manual_seed(1234)  # one fixed binarisation of the test images, shared by all scores
    x_test = torch.bernoulli(data.test[: args.test_points], generator=g)
    return data, x_test


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help="comma-separated subset of vae, vamp, two (default: all three "
                   "with --posterior normal, else vae)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--k", type=int, default=5000, help="importance samples of the IWAE estimate")
    p.add_argument("--test-points", type=int, default=1000, help="test images scored (10000: the whole set)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--activation", default="tanh", help="hidden units (Burda et al.: tanh; with tanh the VampPrior "
                   "collapses here, see RESULTS.md)")
    p.add_argument("--components", type=int, default=500, help="VampPrior pseudo-inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quick", action="store_true", help="digits, tiny networks, 2 epochs, K = 50")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-cross", action="store_true", help="skip scoring the library model with the reference's "
                   "estimator (saves a third of the evaluation time)")
    p.add_argument("--posterior", default="normal", help=f"the library model's variational family, one of "
                   f"{', '.join(POSTERIORS.names())} (the reference stays diagonal)")
    p.add_argument("--posterior-options", default="{}", help='the family\'s options as JSON, e.g. \'{"n_flows": 4}\'')
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    if args.posterior not in POSTERIORS.names():
        p.error(f"--posterior {args.posterior!r}: unknown family; choose from {', '.join(POSTERIORS.names())}")
    try:
        options = json.loads(args.posterior_options)
    except json.JSONDecodeError as e:
        p.error(f"--posterior-options: not JSON ({e}); write e.g. '{{\"n_flows\": 4}}'")
    if not isinstance(options, dict):
        p.error("--posterior-options: give a JSON object, e.g. '{\"n_flows\": 4}'")
    args.posterior_options = options
    if args.models is None:
        args.models = "vae,vamp,two" if args.posterior == "normal" else "vae"
    if args.posterior != "normal" and "two" in args.models.split(","):
        p.error("--posterior: model 'two' takes no posterior family; use --models vae (or vamp)")
    args.posterior_spec = {"name": args.posterior, **options} if options else args.posterior
    if args.quick:
        args.epochs, args.k, args.hidden, args.latent, args.components, args.quiet = 2, 50, 16, 4, 10, True
        args.test_points = min(args.test_points, 200)
    args.dataset = "digits" if args.quick else "mnist"
    torch.set_num_threads(args.threads)
    data, x_test = load(args)
    print(f"{args.dataset}: {len(data.train)} train, {len(x_test)} test images scored; torch {torch.__version__}, "
          f"{args.threads} threads", flush=True)
    rows = [run(kind, data, x_test, args) for kind in args.models.split(",")]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    lines = [f"Test NLL (nats, lower is better), IWAE K={args.k} on {len(x_test)} {args.dataset} test images, "
             f"{args.epochs} epochs; the reference is the hand-written diagonal Normal", "",
             "| model | posterior | pyro_vae | hand-written reference | reference - pyro_vae (paired) | "
             "pyro_vae scored by the reference's estimator | published | train s (lib / ref) | eval s (lib / ref) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cross = r["lib_nll_by_reference_estimator"]
        published = r["published_nll"] or "-"
        if r["published_family_nll"]:
            published = f"{r['published_family_nll']} vs {r['published_diagonal_nll']} ({r['published_source']})"
        family = r["posterior"] + (f" {json.dumps(r['posterior_options'])}" if r["posterior_options"] else "")
        lines.append(f"| {r['model']} | {family} | {r['lib_nll']:.2f} +- {r['lib_stderr']:.2f} | {r['ref_nll']:.2f} | "
                     f"{r['ref_minus_lib_nll']:+.2f} +- {r['ref_minus_lib_stderr']:.2f} | "
                     f"{'-' if cross is None else f'{cross:.2f}'} | {published} | "
                     f"{r['lib_train_s']} / {r['ref_train_s']} | {r['lib_eval_s']} / {r['ref_eval_s']} |")
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
