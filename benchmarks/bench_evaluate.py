"""IWAE log-likelihood: ``pyro_vae.evaluate.iwae_log_likelihood`` against hand-written torch.

The network is the one of Pyro's MNIST VAE example (MLP 784-400-50 encoder and
50-400-784 decoder, softplus, Bernoulli likelihood with logits). Both sides
evaluate the same untrained VAE (speed does not depend on the weights) on the
same binarised images, with the same data and particle chunks; repeats are
interleaved in one process so that machine noise hits both alike. Peak memory
is the high-water resident set size (``VmHWM``) of a fresh child process
running one evaluation of each kind, reported with its growth over the RSS
before the evaluation (imports and data alone take about 500 MiB). Not
``ru_maxrss``: Linux carries it over ``fork`` and ``exec``, so a child would
report its parent's peak.

    python benchmarks/bench_evaluate.py                   # 5000 points, K=100, 5 repeats
    python benchmarks/bench_evaluate.py --points 1000 --k 5000
    python benchmarks/bench_evaluate.py --quick           # seconds; a smoke run

Target (ANCHORS.md): at most 1.05x the hand-written time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pyro_vae import VAE
from pyro_vae.evaluate import iwae_log_likelihood

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def torch_iwae(vae, x, k: int, batch_size: int, particle_chunk: int) -> torch.Tensor:
    """The same estimate written directly in torch: ``[N]`` log-mean-exp of the log weights."""
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        loc, scale = vae.encoder(xb)
        log_scale = scale.log().sum(-1)
        parts = []
        for k0 in range(0, k, particle_chunk):
            eps = torch.randn(min(particle_chunk, k - k0), *loc.shape)
            z = loc + scale * eps
            logits = vae.decoder(z).squeeze(-4)  # [k, B, n_params=1, 1, 28, 28] -> [k, B, 1, 28, 28]
            log_lik = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits),
                                                          reduction="none").flatten(-3).sum(-1)
            log_prior = -0.5 * (z * z).sum(-1)
            log_q = -0.5 * (eps * eps).sum(-1) - log_scale  # the 2 pi terms of prior and guide cancel
            parts.append(log_lik + log_prior - log_q)
        log_w = torch.cat(parts)
        out.append(log_w.logsumexp(0) - math.log(k))
    return torch.cat(out)


def make_problem(points: int, seed: int = 0):
    torch.manual_seed(seed)
    vae = VAE((1, 28, 28), latent_dim=50, likelihood="bernoulli", net={"name": "mlp", "hidden": [400]}).eval()
    x = torch.bernoulli(torch.full((points, 1, 28, 28), 0.13))  # MNIST-like ink density
    return vae, x


def run_once(kind: str, vae, x, args) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one evaluation."""
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "pyro":
        iwae_log_likelihood(vae, x, num_samples=args.k, batch_size=args.batch_size, particle_chunk=args.particle_chunk,
                            seed=0)
    else:
        torch_iwae(vae, x, args.k, args.batch_size, args.particle_chunk)
    return time.perf_counter() - start, time.process_time() - cpu


def rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from ``/proc``; ``ru_maxrss`` where there is no ``/proc``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib(kind: str, args) -> tuple[float, float]:
    """Peak RSS of a child process running one evaluation of ``kind``, and its growth during the evaluation."""
    cmd = [sys.executable, __file__, "--child", kind, "--points", str(args.points), "--k", str(args.k),
           "--batch-size", str(args.batch_size), "--particle-chunk", str(args.particle_chunk),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    before, peak = map(float, out.stdout.split()[-2:])
    return peak, peak - before


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--k", type=int, default=100, help="importance samples per point")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--particle-chunk", type=int, default=None, help="default: 32768 // batch_size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="500 points, K=20, 2 repeats")
    parser.add_argument("--json", default="bench_evaluate.json", help="where to write the results")
    parser.add_argument("--child", choices=["pyro", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.k, args.repeats = 500, 20, 2
    if args.particle_chunk is None:
        args.particle_chunk = max(1, 2 ** 15 // args.batch_size)
    torch.set_num_threads(args.threads)
    vae, x = make_problem(args.points)

    if args.child:
        before = rss_mib("VmRSS")
        run_once(args.child, vae, x, args)
        print(before, rss_mib("VmHWM"))
        return

    # Same estimator, same network: the two must agree to Monte Carlo error.
    ours = iwae_log_likelihood(vae, x[:256], num_samples=args.k, seed=0).mean
    ref = torch_iwae(vae, x[:256], args.k, args.batch_size, args.particle_chunk).double().mean().item()
    for kind in ("pyro", "torch"):  # warm-up
        run_once(kind, vae, x[:args.batch_size], args)
    times, cpu = {"pyro": [], "torch": []}, {"pyro": [], "torch": []}
    for r in range(args.repeats):
        order = ("pyro", "torch") if r % 2 == 0 else ("torch", "pyro")
        for kind in order:
            wall, used = run_once(kind, vae, x, args)
            times[kind].append(wall)
            cpu[kind].append(used)
    med = {kind: statistics.median(t) for kind, t in times.items()}
    med_cpu = {kind: statistics.median(t) for kind, t in cpu.items()}
    ratio = med["pyro"] / med["torch"]
    # per-repeat ratios of adjacent runs are less exposed to load that changes over the run
    pair_ratios = [p / t for p, t in zip(times["pyro"], times["torch"])]
    rss = {kind: peak_rss_mib(kind, args) for kind in ("pyro", "torch")}
    result = {
        "points": args.points, "k": args.k, "batch_size": args.batch_size, "particle_chunk": args.particle_chunk,
        "threads": args.threads, "repeats": args.repeats, "times_s": times, "median_s": med, "ratio": ratio,
        "cpu_s": cpu, "median_cpu_s": med_cpu, "cpu_ratio": med_cpu["pyro"] / med_cpu["torch"],
        "median_pair_ratio": statistics.median(pair_ratios), "load_average": list(os.getloadavg()),
        "peak_rss_mib": {kind: v[0] for kind, v in rss.items()},
        "rss_growth_mib": {kind: v[1] for kind, v in rss.items()}, "iwae_pyro_vae": ours, "iwae_torch": ref,
        "torch": torch.__version__, "machine": platform.machine(),
    }
    print(f"IWAE, {args.points} points, K={args.k}, batch {args.batch_size} x {args.particle_chunk} particles, "
          f"{args.threads} threads, {args.repeats} interleaved repeats")
    for kind, label in (("torch", "hand-written torch"), ("pyro", "pyro_vae (traces)")):
        print(f"  {label:<20} {med[kind]:8.3f} s  (CPU {med_cpu[kind]:7.3f} s)   peak RSS {rss[kind][0]:5.0f} MiB "
              f"(+{rss[kind][1]:.0f} during evaluation)")
    print(f"  ratio of medians     {ratio:8.3f}x  (CPU {result['cpu_ratio']:.3f}x; median of paired ratios "
          f"{result['median_pair_ratio']:.3f}x; target <= 1.05x)")
    print(f"  load average during the run: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"  estimates on 256 points: pyro_vae {ours:.3f}, torch {ref:.3f} nats")
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
