"""Training speed of pyro_vae against a hand-written PyTorch VAE of the same architecture.

Both run in one process, interleaved in blocks, on the same minibatches:

* step: median time of one optimisation step (library: the step ``fit`` takes,
  ``pyro_vae.step.Stepper`` on the VAE's Pyro model and guide with validation
  off, as in training; reference: loss, backward, ``Adam.step``);
* epoch: one full pass over MNIST-sized data (60000 x 784 by default) with the
  data pipeline included: a fresh dynamic binarisation, a permutation, slicing
  (library: an epoch of ``pyro_vae.fit`` after its first, which also holds
  one-off setup such as compiling and is reported apart; reference: the
  equivalent plain loop, one epoch after each of the library's);
* peak RSS of a training run, each implementation in its own subprocess.

The reference lives here only. It uses the closed-form Gaussian KL, as the
figures in ANCHORS.md do; the library's default objective is
``SummedTrace_ELBO`` (Pyro's ``Trace_ELBO`` estimator) with a Monte Carlo KL.
Both use torch's Adam with the same kernel (fused where torch has one).

    python benchmarks/bench_train.py                 # all cases, writes benchmarks/results/train.{json,md}
    python benchmarks/bench_train.py --quick         # tiny sizes, seconds (run by the test suite)
    python benchmarks/bench_train.py --cases b128,tiny --repeats 40
    python benchmarks/bench_train.py --posteriors all --cases b128   # each variational family against the default

``--posteriors`` (a comma-separated list of ``pyro_vae.POSTERIORS`` families,
or ``all``) times, for each case, the library VAE with each family against the
same VAE with the diagonal default ``normal`` and the hand-written reference,
all in one process and rotated within every round (each round runs a block of
steps of every implementation, the starting one moving on by one each round).
"step" is the same Stepper step as above; "epoch" is a pass over the data of
that step with the data pipeline (binarisation, permutation, slicing), one
epoch of every implementation per round, and its ratio the median over rounds
of the two epochs measured in that round. Every family uses the case's network
and objective; only the encoder's output heads and the posterior's own
parameters differ.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pyro

from pyro_vae import VAE, Callback, fit, make_optimizer, tune_allocator
from pyro_vae.objectives import model_objective
from pyro_vae.step import Stepper

from _report import write_report

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- the hand-written reference
class Reference(nn.Module):
    """Encoder/decoder of the same shapes as pyro_vae's MLP or conv nets, with a hand-written loss."""

    def __init__(self, vae: VAE, likelihood: str, k: int = 1):
        super().__init__()
        self.kind, self.k = likelihood, k
        self.data_shape = vae.data_shape
        d, z = math.prod(vae.data_shape), vae.latent_dim
        enc, dec = vae.encoder, vae.decoder
        if hasattr(enc, "conv"):  # conv nets: same layers as pyro_vae.nets.ConvEncoder/ConvDecoder
            self.enc_conv = nn.Sequential(*[type(m)(*_args(m)) if isinstance(m, nn.Conv2d) else nn.ReLU()
                                            for m in enc.conv])
            self.enc_head = _mlp([m.in_features for m in enc.head.layers] + [2 * z], nn.ReLU)
            self.dec_head = _mlp([m.in_features for m in dec.head.layers] + [dec.head.layers[-1].out_features],
                                 nn.ReLU)
            self.start = dec.start
            self.deconvs = nn.ModuleList(nn.ConvTranspose2d(m.in_channels, m.out_channels, 4, 2, 1)
                                         for m in dec.deconvs)
            self.sizes = dec.sizes
        else:
            sizes = [m.in_features for m in enc.net.layers]
            self.enc = _mlp(sizes + [2 * z], nn.Softplus)
            self.dec = _mlp([m.in_features for m in dec.net.layers] + [dec.net.layers[-1].out_features], nn.Softplus)
        if likelihood == "normal":
            self.log_scale = nn.Parameter(torch.zeros(d))
        if likelihood == "negative-binomial":
            self.raw_r = nn.Parameter(torch.zeros(d))

    def encode(self, x):
        if hasattr(self, "enc_conv"):
            h = self.enc_head(self.enc_conv(x).flatten(1))
        else:
            h = self.enc(x.flatten(1))
        loc, raw = h.chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4

    def decode(self, z):
        if hasattr(self, "enc_conv"):
            h = F.relu(self.dec_head(z).reshape(-1, *self.start))
            for i, deconv in enumerate(self.deconvs):
                h = deconv(h, output_size=self.sizes[i + 1])
                if i < len(self.deconvs) - 1:
                    h = F.relu(h)
            return h.flatten(1)
        return self.dec(z)

    def log_lik(self, out, x):
        x = x.flatten(1)
        if self.kind == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
        if self.kind == "normal":
            scale = F.softplus(self.log_scale) + 1e-4
            return (-0.5 * ((x - out) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        mu, r = F.softplus(out) + 1e-8, F.softplus(self.raw_r) + 1e-8  # negative binomial
        return (torch.lgamma(x + r) - torch.lgamma(r) - torch.lgamma(x + 1) + r * (r.log() - (r + mu).log())
                + x * (mu.log() - (r + mu).log())).sum(-1)

    def loss(self, x, num_data):
        loc, scale = self.encode(x)
        if self.k == 1:
            z = loc + scale * torch.randn_like(scale)
            kl = (0.5 * (scale ** 2 + loc ** 2 - 1) - scale.log()).sum(-1)
            elbo = self.log_lik(self.decode(z), x) - kl
            return -elbo.sum() * num_data / x.shape[0]
        eps = torch.randn((self.k,) + scale.shape)
        z = loc + scale * eps
        log_q = (-0.5 * eps ** 2 - scale.log()).sum(-1)
        log_p = (-0.5 * z ** 2).sum(-1)
        out = self.decode(z.reshape(-1, z.shape[-1])).reshape(self.k, x.shape[0], -1)
        log_w = self.log_lik(out, x.flatten(1)) + log_p - log_q
        iwae = torch.logsumexp(log_w, 0) - math.log(self.k)
        return -iwae.sum() * num_data / x.shape[0]


def _ref_adam(ref: nn.Module) -> torch.optim.Adam:
    """The reference's Adam with the kernel the library's optimiser takes: fused where torch has it, else foreach.

    Both sides run the same update, so the ratio measures the library's overhead, not a choice of kernel
    (fused Adam took 0.70 ms a step over the 784-400-50 parameters on 2 cores, ``foreach`` 1.60 ms)."""
    try:
        return torch.optim.Adam(ref.parameters(), 1e-3, fused=True)
    except RuntimeError:
        return torch.optim.Adam(ref.parameters(), 1e-3, foreach=True)


def _args(conv: nn.Conv2d):
    return conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding


def _mlp(sizes, act):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- cases
JIT = {"name": "elbo", "jit": True}
CASES = {
    # name: (data, likelihood, net spec, latent dim, batch, objective, particles)
    "b128": ("binary", "bernoulli", {"name": "mlp", "hidden": [400]}, 50, 128, "elbo", 1),
    "b1024": ("binary", "bernoulli", {"name": "mlp", "hidden": [400]}, 50, 1024, "elbo", 1),
    "tiny": ("binary", "bernoulli", {"name": "mlp", "hidden": [16]}, 2, 32, "elbo", 1),
    "conv": ("image", "bernoulli", {"name": "conv"}, 16, 128, "elbo", 1),
    "meanfield": ("binary", "bernoulli", {"name": "mlp", "hidden": [400]}, 50, 128, "meanfield", 1),
    "iwae5": ("binary", "bernoulli", {"name": "mlp", "hidden": [400]}, 50, 128, "iwae", 5),
    "normal": ("grey", "normal", {"name": "mlp", "hidden": [400]}, 50, 128, "elbo", 1),
    "nb-counts": ("counts", "negative-binomial", {"name": "mlp", "hidden": [400]}, 10, 128, "elbo", 1),
    # the default objective compiled (objective {name = "elbo", jit = true}: Pyro's JitTrace_ELBO)
    "jit-b128": ("binary", "bernoulli", {"name": "mlp", "hidden": [400]}, 50, 128, JIT, 1),
    "jit-b1024": ("binary", "bernoulli", {"name": "mlp", "hidden": [400]}, 50, 1024, JIT, 1),
    "jit-tiny": ("binary", "bernoulli", {"name": "mlp", "hidden": [16]}, 2, 32, JIT, 1),
}


def make_data(kind: str, n: int, d: int = 784):
    g = torch.Generator().manual_seed(0)
    if kind == "counts":
        return torch.poisson(5 * torch.rand(n, d, generator=g)), (d,)
    x = torch.rand(n, d, generator=g)
    if kind == "image":
        return x.reshape(n, 1, 28, 28), (1, 28, 28)
    return x, (d,)


def build(case: str, posterior="normal"):
    kind, lik, net, z, batch, objective, k = CASES[case]
    spec = {"name": "normal", "scale": "feature"} if lik == "normal" else lik
    data_shape = (1, 28, 28) if kind == "image" else (784,)
    torch.manual_seed(0)
    if posterior != "normal":  # its own name: each model's parameters are their own param-store entries
        return VAE(data_shape, latent_dim=z, likelihood=spec, net=net, posterior=posterior, name=f"vae_{posterior}")
    vae = VAE(data_shape, latent_dim=z, likelihood=spec, net=net)
    ref = Reference(vae, lik, k=k if objective == "iwae" else 1)
    n_lib, n_ref = _n_params(vae), _n_params(ref)
    assert n_lib == n_ref, f"{case}: library has {n_lib} parameters, reference {n_ref}"
    return vae, ref, batch, objective, k


def _binarise(kind, x):
    return torch.bernoulli(x) if kind in ("binary", "image") else x


# ----------------------------------------------------------------------------- measurements
def step_times(case: str, n_data: int, repeats: int, block: int):
    kind = CASES[case][0]
    vae, ref, batch, objective, k = build(case)
    x, _ = make_data(kind, n_data)
    x = _binarise(kind, x)
    pyro.clear_param_store()
    step = Stepper(vae.model, vae.guide, make_optimizer("adam", 1e-3), model_objective(vae, objective, k))
    opt = _ref_adam(ref)

    def lib(idx):
        step(x[idx], idx, num_data=n_data)  # tensors positionally, as fit passes them (jit keys on keywords)

    def hand(idx):
        opt.zero_grad(set_to_none=True)
        ref.loss(x[idx], n_data).backward()
        opt.step()

    times = {"lib": [], "ref": []}
    g = torch.Generator().manual_seed(1)
    with pyro.validation_enabled(False):  # as fit runs its steps
        for r in range(repeats + 2):  # two warm-up rounds
            idx = torch.randint(0, n_data, (batch,), generator=g)
            for name, fn in (("lib", lib), ("ref", hand)) if r % 2 == 0 else (("ref", hand), ("lib", lib)):
                for _ in range(block):
                    t = time.perf_counter()
                    fn(idx)
                    if r >= 2:
                        times[name].append(time.perf_counter() - t)
    lib_ms, ref_ms = (statistics.median(times[k]) * 1e3 for k in ("lib", "ref"))
    return {"lib_step_ms": lib_ms, "ref_step_ms": ref_ms, "step_ratio": lib_ms / ref_ms,
            "lib_steps_per_s": 1e3 / lib_ms, "ref_steps_per_s": 1e3 / ref_ms}


def epoch_times(case: str, n_data: int, rounds: int):
    """Full epochs, interleaved: one ``fit`` of ``rounds + 1`` epochs, a reference epoch after each.

    The library's time is fit's own per-epoch record (binarisation, permutation,
    steps); its first epoch also holds one-off setup (optimiser state, compiling
    a jit objective) and is reported apart, not in the ratio. Times are medians.
    """
    kind = CASES[case][0]
    vae, ref, batch, objective, k = build(case)
    x, _ = make_data(kind, n_data)
    transform = torch.bernoulli if kind in ("binary", "image") else None
    opt = _ref_adam(ref)
    times = {"lib": [], "ref": []}

    class AfterEpoch(Callback):
        def on_epoch_end(self, state, record):  # called after fit has timed the epoch
            times["lib"].append(record["seconds"])
            start = time.perf_counter()
            _reference_epoch(ref, opt, x, transform, batch)
            times["ref"].append(time.perf_counter() - start)

    pyro.clear_param_store()
    fit(vae, x, epochs=rounds + 1, batch_size=batch, objective=model_objective(vae, objective, k), seed=None,
        train_transform=transform, callbacks=[AfterEpoch()], progress=False)
    lib, ref = times["lib"][1:], times["ref"][1:]
    # the machine's speed drifts between epochs: the ratio is the median over adjacent (lib, ref) pairs
    ratio = statistics.median(a / b for a, b in zip(lib, ref))
    return {"lib_epoch_s": statistics.median(lib), "ref_epoch_s": statistics.median(ref), "epoch_ratio": ratio,
            "lib_first_epoch_s": times["lib"][0]}


def _reference_epoch(ref, opt, x, transform, batch) -> None:
    """The hand-written epoch: fresh binarisation, a permutation, minibatch steps."""
    n_data = x.shape[0]
    xe = transform(x) if transform else x
    perm = torch.randperm(n_data)
    for lo in range(0, n_data, batch):
        idx = perm[lo:lo + batch]
        opt.zero_grad(set_to_none=True)
        ref.loss(xe[idx], n_data).backward()
        opt.step()


def posterior_times(case: str, families: list[str], n_data: int, repeats: int, block: int, epochs: int):
    """Step and epoch times of the VAE with each family, against ``normal`` and the hand-written reference.

    All implementations train side by side in one process on the same data, rotated within each round.
    Returns one row per family (``normal`` first) and one for the reference.
    """
    kind = CASES[case][0]
    vae, ref, batch, objective, k = build(case)
    models = {"normal": vae, **{f: build(case, f) for f in families if f != "normal"}}
    x, _ = make_data(kind, n_data)
    transform = torch.bernoulli if kind in ("binary", "image") else None
    xs = _binarise(kind, x)
    pyro.clear_param_store()
    steppers = {f: Stepper(m.model, m.guide, make_optimizer("adam", 1e-3), model_objective(m, objective, k))
                for f, m in models.items()}
    opt = _ref_adam(ref)

    def step_of(name):
        if name == "reference":
            def hand(data, idx):
                opt.zero_grad(set_to_none=True)
                ref.loss(data[idx], n_data).backward()
                opt.step()
            return hand
        stepper = steppers[name]
        return lambda data, idx: stepper(data[idx], idx, num_data=n_data)

    names = [*models, "reference"]
    fns = {name: step_of(name) for name in names}
    steps = {name: [] for name in names}
    g = torch.Generator().manual_seed(1)
    with pyro.validation_enabled(False):  # as fit runs its steps
        for r in range(repeats + 2):  # two warm-up rounds
            idx = torch.randint(0, n_data, (batch,), generator=g)
            for name in names[r % len(names):] + names[:r % len(names)]:
                for _ in range(block):
                    t = time.perf_counter()
                    fns[name](xs, idx)
                    if r >= 2:
                        steps[name].append(time.perf_counter() - t)
        epoch = {name: [] for name in names}
        for r in range(epochs + 1):  # a first epoch each, not counted
            for name in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                xe = transform(x) if transform else x
                perm = torch.randperm(n_data)
                for lo in range(0, n_data, batch):
                    fns[name](xe, perm[lo:lo + batch])
                if r >= 1:
                    epoch[name].append(time.perf_counter() - t)
    step_ms = {name: statistics.median(v) * 1e3 for name, v in steps.items()}
    rows = []
    for name in names:
        m = ref if name == "reference" else models[name]
        guide_params = (_n_params(ref.enc) if hasattr(ref, "enc") else None) if name == "reference" else \
            _n_params(m.encoder) + _n_params(m.posterior)
        rows.append({"case": case, "posterior": name, "guide_params": guide_params, "step_ms": step_ms[name],
                     "step_ratio_to_normal": step_ms[name] / step_ms["normal"],
                     "epoch_s": statistics.median(epoch[name]),
                     "epoch_ratio_to_normal": statistics.median(a / b for a, b in zip(epoch[name], epoch["normal"]))})
    return rows


def posterior_markdown(rows: list[dict], meta: dict) -> str:
    head = ("| case | posterior | guide parameters | step (ms) | step / normal | epoch (s) | epoch / normal |\n"
            "|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['case']} | {r['posterior']} | {r['guide_params'] or '-'} | {r['step_ms']:.2f} | "
                   f"{r['step_ratio_to_normal']:.2f} | {r['epoch_s']:.2f} | {r['epoch_ratio_to_normal']:.2f} |\n"
                   for r in rows)
    allocator = ", glibc thresholds raised (--tune-allocator)" if meta.get("tuned_allocator") else ""
    return (f"torch {meta['torch']}, pyro {meta['pyro']}, {meta['threads']} threads, {meta['n_data']} points"
            f"{allocator}; 'reference' is the hand-written diagonal VAE\n\n" + head + body)


def peak_rss(case: str, n_data: int, steps: int, tuned: bool = False):
    """Peak RSS (MiB) of a short training run per implementation, each in a fresh process."""
    out = {}
    for impl in ("lib", "ref"):
        done = subprocess.run([sys.executable, __file__, "--rss-child", impl, case, str(n_data), str(steps)]
                              + (["--tune-allocator"] if tuned else []), capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        out[f"{impl}_peak_rss_mib"] = float(done.stdout.strip().splitlines()[-1])
    out["rss_ratio"] = out["lib_peak_rss_mib"] / out["ref_peak_rss_mib"]
    return out


def _rss_child(impl: str, case: str, n_data: int, steps: int) -> None:
    kind = CASES[case][0]
    vae, ref, batch, objective, k = build(case)
    x, _ = make_data(kind, n_data)
    transform = torch.bernoulli if kind in ("binary", "image") else None
    epochs = max(1, math.ceil(steps * batch / n_data))
    if impl == "lib":
        fit(vae, x, epochs=epochs, batch_size=batch, objective=model_objective(vae, objective, k), progress=False,
            train_transform=transform)
    else:
        opt = _ref_adam(ref)
        for _ in range(epochs):
            _reference_epoch(ref, opt, x, transform, batch)
    print(_vm_hwm_mib())


def _vm_hwm_mib() -> float:
    """This process's peak RSS. ru_maxrss would do, but Linux carries it over fork+exec from the parent;
    VmHWM belongs to the new address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- report
def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| case | lib step (ms) | ref step (ms) | step ratio | lib epoch (s) | ref epoch (s) | epoch ratio "
            "| lib first epoch (s) | lib RSS (MiB) | ref RSS (MiB) | RSS ratio |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    fmt = lambda r, k, f: format(r[k], f) if k in r else "-"  # noqa: E731
    body = "".join(
        f"| {r['case']} | {fmt(r, 'lib_step_ms', '.2f')} | {fmt(r, 'ref_step_ms', '.2f')} | "
        f"{fmt(r, 'step_ratio', '.2f')} | {fmt(r, 'lib_epoch_s', '.2f')} | {fmt(r, 'ref_epoch_s', '.2f')} | "
        f"{fmt(r, 'epoch_ratio', '.2f')} | {fmt(r, 'lib_first_epoch_s', '.2f')} | {fmt(r, 'lib_peak_rss_mib', '.0f')} "
        f"| {fmt(r, 'ref_peak_rss_mib', '.0f')} "
        f"| {fmt(r, 'rss_ratio', '.2f')} |\n" for r in rows)
    allocator = ", glibc thresholds raised (--tune-allocator)" if meta.get("tuned_allocator") else ""
    return f"torch {meta['torch']}, pyro {meta['pyro']}, {meta['threads']} threads, {meta['n_data']} points{allocator}\n\n" \
           + head + body


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, help=f"comma-separated subset of {', '.join(CASES)} (default: all; "
                   "with --posteriors: b128)")
    p.add_argument("--posteriors", default=None, help="time these variational families (comma-separated, or "
                   "'all') against the default 'normal' and the hand-written reference; writes train_posteriors.*")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--repeats", type=int, default=30, help="interleaved rounds of step timing")
    p.add_argument("--block", type=int, default=5, help="steps per block within a round")
    p.add_argument("--n-data", type=int, default=60000, help="points per epoch (MNIST-sized by default)")
    p.add_argument("--epochs", type=int, default=6, help="timed epochs per implementation (after a first one)")
    p.add_argument("--no-epoch", action="store_true", help="skip the full-epoch timing")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", default=str(HERE / "results"), help="directory for train.json and train.md")
    p.add_argument("--tune-allocator", action="store_true",
                   help="raise glibc's trim/mmap thresholds first (pyro_vae.tune_allocator, what the pyro-vae "
                        "command does), for both implementations alike")
    p.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tune_allocator and not tune_allocator():
        p.error("--tune-allocator: not applied (needs Linux with glibc, and no MALLOC_* threshold in the environment)")
    if args.rss_child:
        impl, case, n, steps = args.rss_child
        _rss_child(impl, case, int(n), int(steps))
        return 0
    if args.cases is None:
        args.cases = "b128" if args.posteriors else ",".join(CASES)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    n_data = 512 if args.quick else args.n_data
    repeats, block = (2, 2) if args.quick else (args.repeats, args.block)
    meta = {"torch": torch.__version__, "pyro": pyro.__version__, "threads": args.threads, "n_data": n_data,
            "python": platform.python_version(), "quick": args.quick, "tuned_allocator": args.tune_allocator}
    if args.posteriors:
        from pyro_vae.posteriors import POSTERIORS

        known = POSTERIORS.names()
        families = list(known) if args.posteriors == "all" else [f for f in args.posteriors.split(",") if f]
        if [f for f in families if f not in known]:
            p.error(f"--posteriors: unknown famil(ies) {[f for f in families if f not in known]}; choose from "
                    f"{', '.join(known)} or 'all'")
        rows = []
        for case in cases:
            for row in posterior_times(case, families, n_data, repeats, block, 1 if args.quick else args.epochs):
                rows.append(row)
                print(json.dumps(row), flush=True)
        write_report(args.out, "train_posteriors", {**meta, "families": families}, rows,
                     posterior_markdown(rows, meta))
        return 0
    rows = []
    for case in cases:
        row = {"case": case, **step_times(case, n_data, repeats, block)}
        if not args.no_epoch:
            row.update(epoch_times(case, n_data, 2 if args.quick else args.epochs))
        if not args.no_rss:
            row.update(peak_rss(case, n_data, 20 if args.quick else 400, args.tune_allocator))
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_report(args.out, "train", meta, rows, markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
