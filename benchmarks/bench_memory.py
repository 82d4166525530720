"""Peak memory (RSS) of training: the ``pyro-vae train`` command against a plain Pyro ``SVI.step`` loop.

Three cases, each in a fresh process, in alternating rounds, side by side:

    command   the whole ``pyro-vae train --dataset NAME ...`` (load, split, preprocess, train, validation
              decompositions, evaluation, checkpoint and figures)
    plain     Pyro's own MNIST example style: train and test sets read with torchvision as float tensors in [0, 1],
              an encoder/decoder ``nn.Module`` of the same sizes (784-400-50, softplus), ``pyro.optim.Adam``,
              ``Trace_ELBO``, ``SVI.step`` on shuffled minibatches
    fit       ``pyro_vae.data.load_dataset`` then the library's ``fit`` alone on the training tensor

The figure is the child's peak resident set (``ru_maxrss`` from ``os.wait4``, the same as its ``VmHWM``),
in MiB; every child runs with the same number of threads. Target (issue #20): command within 1.1x of plain.

    python benchmarks/bench_memory.py --data-dir /work/shared/data --epochs 3       # MNIST, writes results/memory.*
    python benchmarks/bench_memory.py --quick                                      # digits, seconds (the tests)
    python benchmarks/bench_memory.py --pythonpath /tmp/before ...                 # another copy of the package
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("command", "plain", "fit")
TARGET = 1.1


# --------------------------------------------------------------------------- the children

def _load_plain(dataset: str, data_dir: str | None):
    """(train, test) float tensors [N, 784] in [0, 1], as Pyro's MNIST example reads them (torchvision's
    official train and test sets, then ``/ 255``); digits: all 1797 as train, no test."""
    import torch

    if dataset == "digits":
        from sklearn.datasets import load_digits

        return torch.as_tensor(load_digits().images, dtype=torch.float32).reshape(-1, 64) / 16.0, None
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST}[dataset]
    train, test = (cls(data_dir, train=t, download=False).data for t in (True, False))
    return train.reshape(len(train), -1).float() / 255.0, test.reshape(len(test), -1).float() / 255.0


def child_plain(args) -> None:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from torch import nn

    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    x, _test = _load_plain(args.dataset, args.data_dir)  # trained on the whole official training set
    d, h, z_dim = x.shape[1], args.hidden, args.latent_dim

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(d, h), nn.Linear(h, z_dim), nn.Linear(h, z_dim)

        def forward(self, x):
            hidden = nn.functional.softplus(self.fc1(x))
            return self.fc21(hidden), torch.exp(self.fc22(hidden))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(z_dim, h), nn.Linear(h, d)

        def forward(self, z):
            return torch.sigmoid(self.fc2(nn.functional.softplus(self.fc1(z))))

    class PlainVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(), Decoder()

        def model(self, x):
            pyro.module("decoder", self.decoder)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], z_dim),
                                                      x.new_ones(x.shape[0], z_dim)).to_event(1))
                pyro.sample("obs", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, scale = self.encoder(x)
                pyro.sample("latent", dist.Normal(loc, scale).to_event(1))

    vae = PlainVAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x)).split(args.batch_size):
            svi.step(x[idx])


def child_fit(args) -> None:
    from pyro_vae import VAE, fit
    from pyro_vae.data import load_dataset

    data = load_dataset(args.dataset, data_dir=args.data_dir, preprocess="scale")
    vae = VAE(data.data_shape, latent_dim=args.latent_dim, net={"name": "mlp", "hidden": [args.hidden]})
    fit(vae, data.train, epochs=args.epochs, batch_size=args.batch_size, progress=False)


def command_argv(args, out_dir: str) -> list[str]:
    argv = [sys.executable, "-m", "pyro_vae", "train", "--dataset", args.dataset, "--epochs", str(args.epochs),
            "--hidden", str(args.hidden), "--latent-dim", str(args.latent_dim), "--batch-size",
            str(args.batch_size), "--out", out_dir, "--quiet"]
    return argv + (["--data-dir", args.data_dir] if args.data_dir and args.dataset != "digits" else [])


# --------------------------------------------------------------------------- the parent

def environment(args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    return env


def measure(case: str, args) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one fresh process running ``case``."""
    with tempfile.TemporaryDirectory() as tmp:
        if case == "command":
            argv = command_argv(args, str(Path(tmp) / "run"))
        else:
            argv = [sys.executable, str(Path(__file__).resolve()), "--child", case, *forwarded(args)]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=environment(args), cwd=tmp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{case} failed ({proc.returncode}):\n{stderr.decode(errors='replace')[-3000:]}")
    return usage.ru_maxrss / 1024.0, seconds  # Linux: KiB


def forwarded(args) -> list[str]:
    out = ["--dataset", args.dataset, "--epochs", str(args.epochs), "--hidden", str(args.hidden),
           "--latent-dim", str(args.latent_dim), "--batch-size", str(args.batch_size)]
    return out + (["--data-dir", args.data_dir] if args.data_dir else [])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=os.environ.get("PYRO_VAE_DATA_DIR"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--pythonpath", help="another copy of the package (e.g. a git worktree of an older commit)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default="memory")
    p.add_argument("--quick", action="store_true", help="digits, 1 epoch, 1 round, a small net (seconds)")
    p.add_argument("--child", choices=("plain", "fit"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        {"plain": child_plain, "fit": child_fit}[args.child](args)
        return 0
    if args.quick:
        args.dataset, args.epochs, args.rounds, args.hidden, args.latent_dim = "digits", 1, 1, 64, 4
    cases = [c for c in args.cases.split(",") if c]
    peaks: dict[str, list[float]] = {c: [] for c in cases}
    times: dict[str, list[float]] = {c: [] for c in cases}
    for r in range(args.rounds):
        for case in (cases if r % 2 == 0 else cases[::-1]):  # alternate the order round by round
            peak, seconds = measure(case, args)
            peaks[case].append(peak)
            times[case].append(seconds)
            print(f"round {r + 1}: {case:8s} peak RSS {peak:8.1f} MiB  ({seconds:.1f} s)", flush=True)
    med = {c: statistics.median(v) for c, v in peaks.items()}
    rows = [{"case": c, "peak_rss_mib": med[c], "all_mib": peaks[c], "seconds": statistics.median(times[c]),
             "ratio_to_plain": (med[c] / med["plain"]) if "plain" in med else None} for c in cases]
    meta = {"dataset": args.dataset, "epochs": args.epochs, "hidden": args.hidden, "latent_dim": args.latent_dim,
            "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
            "pythonpath": args.pythonpath, "python": platform.python_version(), "target_ratio": TARGET}
    lines = [f"Peak RSS, {args.dataset}, {args.epochs} epoch(s), {args.hidden}-{args.latent_dim} MLP, batch "
             f"{args.batch_size}, {args.threads} threads, median of {args.rounds} fresh process(es) each", "",
             "| case | peak RSS (MiB) | x plain | seconds |", "|---|---:|---:|---:|"]
    for row in rows:
        ratio = f"{row['ratio_to_plain']:.2f}" if row["ratio_to_plain"] is not None else "-"
        lines.append(f"| {row['case']} | {row['peak_rss_mib']:.0f} | {ratio} | {row['seconds']:.1f} |")
    sys.path.insert(0, str(HERE))
    from _report import write_report

    write_report(args.out, args.name, meta, rows, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
