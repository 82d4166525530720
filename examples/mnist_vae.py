"""The classic MNIST VAE (Kingma & Welling 2014) with pyro_vae's Python API.

The network of Pyro's own MNIST example::

    encoder  784 -> 400 -> (loc, scale) in R^50        softplus
    decoder   50 -> 400 -> 784 Bernoulli logits        softplus
    p(z) = N(0, I),  Adam, lr 1e-3, batch 128

Usage::

    python examples/mnist_vae.py --data-dir ~/data --download       # 30 epochs, test ELBO every 5
    python examples/mnist_vae.py --smoke                             # 500 points, 2 epochs (used by the tests)

Writes ``elbo.png``, ``reconstructions.png`` and ``samples.png`` to ``--out`` and
ends by checking that training improved the test ELBO.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import VAE, Callback, elbo, fit, make_optimizer
from pyro_vae.data import load_dataset
from pyro_vae.plots import plot_history, save_image_grid


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", help="mnist (default), fashion-mnist, kmnist or digits")
    p.add_argument("--data-dir", default=None, help="torchvision root holding MNIST/raw (default ~/.cache/pyro_vae)")
    p.add_argument("--download", action="store_true", help="fetch MNIST if it is not under --data-dir")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--test-every", type=int, default=5, help="epochs between test ELBO evaluations")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="mnist_vae_out", help="folder for the figures")
    p.add_argument("--smoke", action="store_true", help="500 training / 300 test points, 2 epochs")
    return p.parse_args(argv)


def main(argv=None) -> float:
    args = parse_args(argv)
    if args.smoke:
        args.epochs, args.test_every = 2, 1
    pyro.set_rng_seed(args.seed)
    try:
        data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download, preprocess="scale",
                            val_fraction=0.0, seed=args.seed)
    except FileNotFoundError as err:  # no data here: one line, not a traceback
        if not args.smoke:
            raise SystemExit(f"mnist_vae.py: {err}")
        print(f"mnist_vae.py --smoke: skipped, {err}")
        return None
    train, test = (data.train[:500], data.test[:300]) if args.smoke else (data.train, data.test)

    vae = VAE(data.data_shape, latent_dim=50, prior="normal", likelihood="bernoulli",
              net={"name": "mlp", "hidden": [400], "activation": "softplus"}).to(args.device)
    initial = elbo(vae, test)
    print(f"{args.dataset}: {len(train)} training / {len(test)} test points; test ELBO before training "
          f"{initial:.2f} nats")

    class TestELBO(Callback):
        """The test ELBO every ``--test-every`` epochs and at the last, added to the epoch's record."""

        def on_epoch_end(self, state, record):
            if record["epoch"] % args.test_every == 0 or record["epoch"] == args.epochs:
                record["test_elbo"] = elbo(vae, test)
                print(f"epoch {record['epoch']:3d}  train ELBO {record['train_elbo']:9.2f}  "
                      f"test ELBO {record['test_elbo']:9.2f}  ({record['seconds']:.1f} s)", flush=True)

    start = time.perf_counter()
    result = fit(vae, train, epochs=args.epochs, batch_size=128, optim=make_optimizer("adam", lr=1e-3),
                 seed=args.seed, callbacks=[TestELBO()], progress=not args.smoke)
    final = result.history[-1]["test_elbo"]

    out = Path(args.out)
    plot_history(result.history, out / "elbo.png", keys=("train_elbo", "test_elbo"))
    originals = test[:32]
    rebuilt = vae.reconstruct(originals).cpu()
    pairs = torch.cat([torch.cat([originals[i:i + 8], rebuilt[i:i + 8]]) for i in range(0, 32, 8)])
    save_image_grid(pairs, out / "reconstructions.png", nrow=8)  # originals and reconstructions, row by row
    save_image_grid(vae.sample(64).cpu(), out / "samples.png", nrow=8)
    print(f"test ELBO {initial:.2f} -> {final:.2f} nats in {time.perf_counter() - start:.1f} s; figures in {out}")

    if not final > initial:  # the example checks itself
        raise SystemExit(f"training did not improve the test ELBO ({initial:.2f} -> {final:.2f})")
    return final


if __name__ == "__main__":
    main()
