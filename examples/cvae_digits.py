"""Conditional VAE (Sohn et al. 2015): digits of a chosen class, and completing images from quadrants.

1. Class-conditional generation: ``c`` is the one-hot label, ``p(z | c)`` a
   conditional Gaussian prior, ``p(x | z, c)`` the decoder. Samples for each
   class are classified by a logistic regression trained on real images.
2. Quadrant completion (the setup of Pyro's CVAE tutorial): ``c`` is the image
   with the hidden quadrants masked (-1), ``x`` the hidden pixels. The
   conditional negative log-likelihood bound ``-ELBO(x | c)`` per test image is
   reported for 1, 2 and 3 observed quadrants.

Usage::

    python examples/cvae_digits.py                   # MNIST, 10 epochs per model
    python examples/cvae_digits.py --out cvae_out    # also saves sample and completion grids
    python examples/cvae_digits.py --smoke           # digits, seconds (used by the tests)

Reference (ANCHORS.md, Pyro's tutorial on MNIST, lower is better): -ELBO
71.8 / 51.0 / 24.2 nats for 1 / 2 / 3 observed quadrants. MNIST comes from
``--data-dir`` or the archives in ``../shared/data``; without either the
embedded 8x8 digits are used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from pyro_vae import elbo, fit, make_optimizer
from _images import load_images  # examples/_images.py
from pyro_vae.models import CVAE, fill_hidden, quadrant_task

TUTORIAL = {1: 71.8, 2: 51.0, 3: 24.2}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default=None, help="folder for the image grids")
    p.add_argument("--smoke", action="store_true", help="digits, small networks, 12 epochs")
    args = p.parse_args(argv)
    if args.smoke:
        args.dataset, args.epochs = "digits", 12
        torch.set_num_threads(1)  # tiny networks: one thread is fastest, and far faster on a busy machine
    pyro.set_rng_seed(0)
    data = load_images(args.dataset, args.data_dir)
    net = {"name": "mlp", "hidden": [128] if args.smoke else [500]}
    latent = 4 if args.smoke else 20
    train, test = data.train, data.test[:2000]

    # 1. digits of a chosen class
    cvae = CVAE(data.data_shape, n_classes=10, latent_dim=latent, net=net, name="cvae_class")
    fit(cvae, (train, data.train_labels), epochs=args.epochs, batch_size=128,
        optim=make_optimizer("adam", lr=3e-3 if args.smoke else 1e-3), progress=not args.smoke)
    flat = train.reshape(len(train), -1)[:5000].numpy()
    with threadpool_limits(1):  # a small problem: one BLAS thread is ~100x faster than two on a busy machine
        judge = LogisticRegression(max_iter=2000).fit(flat, data.train_labels[:5000].numpy())
    wanted = torch.arange(10).repeat_interleave(20)
    samples = cvae.sample(wanted)
    judged = torch.as_tensor(judge.predict(samples.reshape(len(samples), -1).numpy()))
    class_acc = (judged == wanted).float().mean().item()
    print(f"{data.name}: samples of class c classified as c by a logistic regression on real images: {class_acc:.3f}")

    # 2. quadrant completion
    nll = {}
    for n_observed in (1, 2, 3):
        hidden, context, mask = quadrant_task(train, n_observed)
        hidden_test, context_test, _ = quadrant_task(test, n_observed)
        model = CVAE(hidden.shape[1:], context_shape=context.shape[1:], latent_dim=latent, net=net,
                     name=f"cvae_q{n_observed}")
        fit(model, (hidden, context), epochs=args.epochs, batch_size=128,
            optim=make_optimizer("adam", lr=3e-3 if args.smoke else 1e-3), progress=not args.smoke)
        nll[n_observed] = -elbo(model, (hidden_test, context_test), num_particles=10)
        ref = f" (tutorial on MNIST: {TUTORIAL[n_observed]})" if data.name == "mnist" else ""
        print(f"{n_observed} quadrant(s) observed: -ELBO of the hidden pixels {nll[n_observed]:.2f} nats{ref}")
        completions = fill_hidden(context_test[:8], model.sample(context_test[:8], num_samples=4), mask)
        assert (completions[..., ~mask] == test[:8][..., ~mask]).all()
        if args.out:
            from pyro_vae.plots import save_image_grid

            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            masked = context_test[:8].clamp(min=0)
            save_image_grid(torch.cat([masked, test[:8], completions.reshape(-1, *test.shape[1:])]),
                            out / f"completion_{n_observed}q.png", nrow=8)
    if args.out:
        from pyro_vae.plots import save_image_grid

        save_image_grid(samples, Path(args.out) / "samples_by_class.png", nrow=20)

    assert class_acc > (0.6 if args.smoke else 0.8), "class-conditional samples do not look like their class"
    assert nll[1] > nll[2] > nll[3], "observing more quadrants should leave less to explain"
    return class_acc, nll


if __name__ == "__main__":
    main()
