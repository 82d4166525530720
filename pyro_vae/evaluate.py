"""Evaluation of fitted VAEs: held-out ELBO per data point."""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO

__all__ = ["elbo"]


@torch.no_grad()
def elbo(vae, data: torch.Tensor, num_particles: int = 1, batch_size: int = 1024, loss=None) -> float:
    """Monte Carlo ELBO per data point, in nats (higher is better)::

        ELBO(x) = E_q(z|x)[log p(x, z) - log q(z | x)]

    ``data: [N, *data_shape]`` is evaluated in chunks of ``batch_size`` with
    ``num_particles`` vectorised draws per point; ``loss`` defaults to Pyro's
    ``Trace_ELBO``.
    """
    vae.check_data(data)
    device = vae._device()
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    total = 0.0
    for start in range(0, data.shape[0], batch_size):
        total += loss.loss(vae.model, vae.guide, data[start:start + batch_size].to(device))
    return -total / data.shape[0]
