"""Evaluation of fitted VAEs: held-out ELBO per data point."""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO

__all__ = ["elbo"]


@torch.no_grad()
def elbo(vae, data, num_particles: int = 1, batch_size: int = 1024, loss=None) -> float:
    """Monte Carlo ELBO per data point, in nats (higher is better)::

        ELBO(x) = E_q(z|x)[log p(x, z) - log q(z | x)]

    ``data: [N, *data_shape]`` is evaluated in chunks of ``batch_size`` with
    ``num_particles`` vectorised draws per point; ``loss`` defaults to Pyro's
    ``Trace_ELBO``. ``data`` may be a tuple ``(x, y, ...)`` as in :func:`~pyro_vae.train.fit`.
    """
    from .train import as_tensors

    tensors = as_tensors(data)
    vae.check_data(tensors[0])
    device = vae._device()
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    n = tensors[0].shape[0]
    total = 0.0
    for start in range(0, n, batch_size):
        total += loss.loss(vae.model, vae.guide, *(t[start:start + batch_size].to(device) for t in tensors))
    return -total / n
