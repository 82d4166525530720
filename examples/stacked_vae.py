"""A VAE with two stochastic layers on MNIST: z2 -> z1 -> x (Burda et al. 2016; Sonderby et al. 2016).

The stack is a list of conditional-Gaussian stages over the usual likelihood::

    z2 ~ N(0, I),   z1 ~ N(stage(z2)),   x ~ Bernoulli(decoder(z1))

with bottom-up inference ``q(z1|x) q(z2|z1)`` or, with ``--inference ladder``,
the ladder VAE's top-down posterior (precision-weighted merge of the upward
message and the generative stage).

Usage::

    python examples/stacked_vae.py                           # MNIST, 10 epochs, bottom-up
    python examples/stacked_vae.py --inference ladder --epochs 30 --out stacked_out
    python examples/stacked_vae.py --smoke                   # digits, seconds (used by the tests)

MNIST is read from ``--data-dir`` (a torchvision root holding ``MNIST/raw``); by
default the archives in ``../shared/data`` are copied to a temporary folder, and
without either the embedded 8x8 digits are used. Ends by checking that training
improved the test ELBO and that the IWAE bound is at least the ELBO.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import torch

from pyro_vae import elbo, fit, make_optimizer
from pyro_vae.evaluate import iwae_log_likelihood
from _images import load_images  # examples/_images.py
from pyro_vae.models import StackedVAE



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latent-dims", type=int, nargs="+", default=[64, 32])
    p.add_argument("--inference", default="bottom-up", choices=["bottom-up", "ladder"])
    p.add_argument("--out", default=None, help="folder for sample and reconstruction grids")
    p.add_argument("--smoke", action="store_true", help="digits, small layers, 5 epochs")
    args = p.parse_args(argv)
    if args.smoke:
        args.dataset, args.epochs, args.latent_dims = "digits", 5, [8, 4]
        torch.set_num_threads(1)  # tiny networks: one thread is fastest, and far faster on a busy machine
    pyro.set_rng_seed(0)
    data = load_images(args.dataset, args.data_dir)
    hidden = [64] if args.smoke else [400]
    vae = StackedVAE(data.data_shape, args.latent_dims, likelihood="bernoulli",
                     net={"name": "mlp", "hidden": hidden}, stage_hidden=hidden[:1], inference=args.inference)
    test = data.test[:1000]
    before = elbo(vae, test)
    fit(vae, data.train, epochs=args.epochs, batch_size=128, optim=make_optimizer("adam", lr=1e-3),
        progress=not args.smoke)
    after = elbo(vae, test, num_particles=10)
    iwae = iwae_log_likelihood(vae, test, num_samples=100, seed=0)
    print(f"{data.name}, latent sizes {args.latent_dims}, {args.inference} inference, {args.epochs} epochs")
    print(f"test ELBO per image: {before:.2f} -> {after:.2f} nats; IWAE (k=100): {iwae.mean:.2f} +- {iwae.stderr:.2f}")

    samples = vae.sample(64)
    if args.out:
        from pyro_vae.plots import save_image_grid

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_image_grid(samples, out / "samples.png")
        save_image_grid(torch.cat([test[:32], vae.reconstruct(test[:32])]), out / "reconstructions.png")
        print(f"figures in {out}")

    assert samples.shape == (64, *data.data_shape)
    assert after > before + (5 if args.smoke else 100), "training did not improve the test ELBO"
    assert iwae.mean >= after - 3 * iwae.stderr, "the IWAE bound fell below the ELBO"
    return after, iwae.mean


if __name__ == "__main__":
    main()
