"""Semi-supervised M2 on MNIST: test accuracy with 100 / 600 / 1000 / 3000 labels.

The setting of Pyro's SS-VAE tutorial, whose accuracies (mean of 5 label
splits) are the reference in ANCHORS.md: classifier 784-500-10, q(z|x,y)
794-500-(50, 50), decoder 60-500-784, softplus, Bernoulli likelihood on grey
MNIST, ``alpha = 46`` per labelled point, batch 200. The labels are balanced
(``n / 10`` per class) and drawn from the 50,000 training images; the other
10,000 of the official training set are the validation split, the official
test set gives the reported accuracy. Training uses ``pyro_vae.train.fit`` on
``(x, y)`` with ``y = -1`` for unlabelled images and the objective
``model_objective(m2, "enum", 1)`` (``TraceEnum_ELBO``).

Not part of the test suite (hours on 2 CPU cores)::

    python benchmarks/bench_m2.py --epochs 10                       # all four label counts
    python benchmarks/bench_m2.py --labels 100 --epochs 50 --seeds 0 1 2
    python benchmarks/bench_m2.py --quick                           # digits, seconds: a smoke run

MNIST is read from ``--data-dir`` (a torchvision root with ``MNIST/raw/*.gz``);
by default the archives in ``../shared/data`` are copied to a temporary folder.
Prints one JSON record per run and a table against the reference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from pyro_vae import make_optimizer
from pyro_vae.data import load_dataset
from pyro_vae.models import SSVAE, balanced_labels, labels_only_classifier
from pyro_vae.objectives import model_objective
from pyro_vae.train import Callback, fit

REFERENCE = {100: 0.9319, 600: 0.9437, 1000: 0.9487, 3000: 0.9582}  # ANCHORS.md, Pyro's SS-VAE tutorial
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(args):
    if args.quick:
        return load_dataset("digits", preprocess="scale", val_fraction=0.1, test_fraction=0.25, seed=0)
    root = args.data_dir
    if root is None:
        root = tempfile.mkdtemp(prefix="bench_m2_")
        shutil.copytree(SHARED / "MNIST" / "raw", Path(root) / "MNIST" / "raw")
    return load_dataset("mnist", data_dir=root, download=True, preprocess="scale", val_fraction=1 / 6, seed=0)


def run(data, n_labels: int, seed: int, args) -> dict:
    torch.manual_seed(seed)
    y = balanced_labels(data.train_labels, n_labels, seed)
    hidden = [args.hidden]
    m2 = SSVAE(data.data_shape, latent_dim=args.latent_dim, n_classes=10, likelihood="bernoulli",
               net={"name": "mlp", "hidden": hidden}, classifier_hidden=hidden, alpha=args.alpha)
    curve = []

    class ValCurve(Callback):
        def on_epoch_end(self, state, record):
            if record["epoch"] % args.eval_every == 0 or record["epoch"] == args.epochs:
                curve.append((record["epoch"], round(m2.accuracy(data.val, data.val_labels), 4)))
                print(f"  labels={n_labels} seed={seed} epoch {record['epoch']}: train ELBO "
                      f"{record['train_elbo']:.2f}, val accuracy {curve[-1][1]:.4f}", flush=True)

    start = time.perf_counter()  # optimiser and objective are built inside the timed span, as fit built them before
    fit(m2, (data.train, y), epochs=args.epochs, batch_size=args.batch_size, optim=make_optimizer("adam", lr=args.lr),
        objective=model_objective(m2, "enum", 1), seed=seed, progress=False, callbacks=[ValCurve()])
    base = labels_only_classifier(m2, data.train, y, seed=seed)
    with torch.no_grad():
        base_acc = (base(data.test.flatten(1)).argmax(-1) == data.test_labels).float().mean().item()
    return {"labels": n_labels, "seed": seed, "epochs": args.epochs, "alpha": args.alpha,
            "test_accuracy": m2.accuracy(data.test, data.test_labels), "labels_only_accuracy": base_acc,
            "val_curve": curve, "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--alpha", type=float, default=46.0, help="classifier-loss weight per labelled point")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=1, help="epochs between validation accuracies")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quick", action="store_true", help="digits, 100 labels, 2 epochs, small nets")
    args = p.parse_args(argv)
    if args.quick:
        args.labels, args.epochs, args.hidden, args.latent_dim, args.eval_every = [100], 2, 64, 4, 1
    torch.set_num_threads(args.threads)
    data = load(args)
    print(f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test; "
          f"torch {torch.__version__}, {args.threads} threads", flush=True)
    results = []
    for n in args.labels:
        for seed in args.seeds:
            res = run(data, n, seed, args)
            print(json.dumps(res), flush=True)
            results.append(res)
    print("\n| labels | epochs | alpha | M2 test accuracy (mean over seeds) | classifier on the labels alone | "
          "reference (Pyro tutorial) |")
    print("|---|---|---|---|---|---|")
    for n in args.labels:
        rows = [r for r in results if r["labels"] == n]
        acc = sum(r["test_accuracy"] for r in rows) / len(rows)
        base = sum(r["labels_only_accuracy"] for r in rows) / len(rows)
        print(f"| {n} | {args.epochs} | {args.alpha:g} | {acc:.4f} ({len(rows)} seeds) | {base:.4f} | "
              f"{REFERENCE.get(n, float('nan'))} |")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
