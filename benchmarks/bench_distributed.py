"""Training throughput in 1 process (plain ``fit``) against N data-parallel processes (DDP under torchrun).

The same job each time: ``pyro_vae.fit`` on MNIST-sized random binary data
(60000 x 784 by default), a 784-400-50 MLP VAE, global batch 128, Adam. Each
configuration runs in fresh processes; the figure is the fastest epoch after
the first (which pays for warm-up), as steps/s and points/s. Threads per
process: the machine's cores divided by the number of processes (override
with --threads), which is what ``pyro-vae train --nproc`` does.

    python benchmarks/bench_distributed.py                # writes benchmarks/results/distributed.{json,md}
    python benchmarks/bench_distributed.py --quick        # tiny sizes, seconds (run by the test suite)
    python benchmarks/bench_distributed.py --nproc 1,2,4  # on a machine with more cores

On GPUs (one process per GPU, NCCL), add ``--device cuda``; each rank uses cuda:LOCAL_RANK.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from _report import write_report

HERE = Path(__file__).resolve().parent


def worker(out: Path, n: int, hidden: int, latent: int, epochs: int, device: str) -> None:
    """One rank (or the single process): train and, on rank 0, write the epoch times."""
    import torch

    from pyro_vae import VAE, distributed, fit

    with distributed.process_group():
        dev = distributed.local_device(torch.device(device))
        x = torch.bernoulli(torch.full((n, 784), 0.3), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        vae = VAE((784,), latent_dim=latent, net={"name": "mlp", "hidden": [hidden]}).to(dev)
        result = fit(vae, x, epochs=epochs, batch_size=128, seed=0, progress=False)
        if distributed.is_main():
            out.write_text(json.dumps({"seconds": [r["seconds"] for r in result.history],
                                       "world_size": distributed.world_size(),
                                       "threads": torch.get_num_threads(),
                                       "steps_per_epoch": -(-n // 128) if distributed.world_size() == 1 else
                                       distributed.ShardSampler(n, 128, 0, world=distributed.world_size(),
                                                                rank_=0).steps_per_epoch}))


def measure(nproc: int, args) -> dict:
    threads = args.threads or max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        job = [str(Path(__file__).resolve()), "--worker", str(out), "--n-data", str(args.n_data), "--hidden",
               str(args.hidden), "--latent", str(args.latent), "--epochs", str(args.epochs), "--device", args.device]
        if nproc == 1:
            cmd = [sys.executable, *job]
        else:
            from pyro_vae.distributed import launch_command

            cmd = launch_command(nproc, job)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, timeout=3600)
        times = json.loads(out.read_text())
    best = min(times["seconds"][1:] or times["seconds"])
    points = times["steps_per_epoch"] * 128
    return {"nproc": nproc, "ddp": nproc > 1, "threads_per_process": threads, "epoch_s": best,
            "steps_per_s": times["steps_per_epoch"] / best, "points_per_s": points / best,
            "epoch_seconds": times["seconds"]}


def markdown(rows: list, meta: dict) -> str:
    base = rows[0]["points_per_s"]
    head = ("| processes | threads each | epoch (s) | steps/s | points/s | speed-up |\n"
            "|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['nproc']}{' (DDP)' if r['ddp'] else ''} | {r['threads_per_process']} | {r['epoch_s']:.2f} "
                   f"| {r['steps_per_s']:.1f} | {r['points_per_s']:.0f} | {r['points_per_s'] / base:.2f} |\n"
                   for r in rows)
    return (f"torch {meta['torch']}, {meta['cores']} cores, {meta['device']}, {meta['n_data']} points, "
            f"784-{meta['hidden']}-{meta['latent']} MLP, global batch 128\n\n" + head + body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", default="1,2", help="comma-separated process counts (default 1,2)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--n-data", type=int, default=60000, help="points per epoch (MNIST-sized by default)")
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not counted")
    p.add_argument("--threads", type=int, help="threads per process (default: cores / processes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    p.add_argument("--out", default=str(HERE / "results"), help="directory for distributed.json and .md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n_data, args.hidden, args.latent, args.epochs = 1024, 32, 4, 2
    if args.worker:
        worker(Path(args.worker), args.n_data, args.hidden, args.latent, args.epochs, args.device)
        return 0
    import pyro
    import torch

    rows = [measure(int(k), args) for k in args.nproc.split(",") if k]
    for row in rows:
        print(json.dumps(row), flush=True)
    meta = {"torch": torch.__version__, "pyro": pyro.__version__, "cores": os.cpu_count(), "device": args.device,
            "n_data": args.n_data, "hidden": args.hidden, "latent": args.latent, "epochs": args.epochs,
            "python": platform.python_version(), "quick": args.quick}
    write_report(args.out, "distributed", meta, rows, markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
