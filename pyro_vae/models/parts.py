"""Parts the hierarchical models are composed of.

* :class:`ConditionalNormal`: a :class:`~pyro_vae.priors.Prior` that takes
  context, ``p(z | c) = N(loc(c), diag(scale(c)^2))``. It is the stage of a
  stacked model, the conditional prior of a CVAE and the upward inference step
  of a stacked guide with the ``"normal"`` posterior.
* :class:`OffsetPrior`: any prior shifted by a context vector, ``z = u + e``
  with ``e ~ base``; the per-group prior of the grouped model.
* :class:`ContextEncoder` / :class:`ContextDecoder`: the core encoder and
  decoder families fed ``(x, c)`` or ``(z, c)`` concatenated.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.transforms import AffineTransform

from .._registry import spec_name
from ..distributions import IndependentNormal
from ..nets import MIN_SCALE, MLP, inv_softplus, layer_sizes, make_decoder, make_encoder
from ..priors import Prior
from .base import _shape

__all__ = [
    "ConditionalNormal",
    "OffsetPrior",
    "ContextEncoder",
    "ContextDecoder",
    "one_hot",
    "precision_merge",
]

def _flatten(t: torch.Tensor, event_shape) -> torch.Tensor:
    """``[*b, *event_shape] -> [*b, prod(event_shape)]``."""
    n = len(event_shape)
    return t.reshape(*t.shape[: t.dim() - n], math.prod(event_shape))


def _concat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two ``[*batch, features]`` tensors along the last dim, broadcasting their batch dims.

    Broadcasting is what lets an enumerated label ``[K, 1, K]`` meet a minibatch ``[B, D]``.
    """
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*batch, a.shape[-1]), b.expand(*batch, b.shape[-1])], -1)


def one_hot(y: torch.Tensor, n_classes: int, dtype=torch.float32) -> torch.Tensor:
    """``y: [*b]`` integer labels -> ``[*b, n_classes]`` one-hot vectors."""
    return F.one_hot(y.long(), n_classes).to(dtype)


def precision_merge(loc1, scale1, loc2, scale2):
    """Product of two diagonal Gaussians, renormalised (Sonderby et al. 2016, eq. 17-19)::

        1 / s^2 = 1 / s1^2 + 1 / s2^2,     m = s^2 (m1 / s1^2 + m2 / s2^2)
    """
    p1, p2 = scale1.pow(-2), scale2.pow(-2)
    var = 1.0 / (p1 + p2)
    return var * (loc1 * p1 + loc2 * p2), var.sqrt()


class ConditionalNormal(Prior):
    """``p(z | c) = N(loc(c), diag(scale(c)^2))``, a prior that takes context.

    ``hidden=()`` makes it linear-Gaussian, ``loc = A c + a`` with a learned
    scale that does not depend on ``c`` (so a stack of them with linear
    encoders/decoders has a closed-form marginal). With hidden layers, a
    :class:`~pyro_vae.nets.MLP` emits the loc and raw-scale heads.

    Args:
        latent_dim: size of ``z``.
        context_shape: shape of one context ``c`` (an int or a tuple; flattened).
        hidden: hidden layer sizes; empty for the linear stage.
        activation: nonlinearity of the hidden layers.
        init_scale: starting value of the constant scale of the linear stage.

    Shapes: ``context: [*b, *context_shape] -> Normal`` with batch ``[*b]``, event ``[latent_dim]``.
    """

    def __init__(self, latent_dim: int, context_shape, hidden=(), activation: str = "softplus",
                 init_scale: float = 1.0):
        super().__init__(latent_dim)
        self.context_shape = _shape(context_shape)
        self.hidden = tuple(layer_sizes(hidden, "hidden", "[] makes a conditional Gaussian linear in its context",
                                        allow_empty=True))
        flat = math.prod(self.context_shape)
        if self.hidden:
            self.net = MLP(flat, self.hidden, [latent_dim, latent_dim], activation)
        else:
            self.linear = nn.Linear(flat, latent_dim)
            self.raw_scale = nn.Parameter(torch.full((latent_dim,), inv_softplus(init_scale - MIN_SCALE)))

    def loc_scale(self, context: torch.Tensor):
        """``(loc, scale)``, each ``[*b, latent_dim]``."""
        c = _flatten(context, self.context_shape)
        if self.hidden:
            loc, raw = self.net(c)
            return loc, F.softplus(raw) + MIN_SCALE
        loc = self.linear(c)
        return loc, (F.softplus(self.raw_scale) + MIN_SCALE).expand_as(loc)

    def forward(self, context=None):
        if context is None:
            raise ValueError("ConditionalNormal is a conditional prior: call it with context=c "
                             f"of shape [*batch, {', '.join(map(str, self.context_shape))}]")
        return IndependentNormal(*self.loc_scale(context))

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, context_shape={self.context_shape}, hidden={self.hidden}"


class OffsetPrior(Prior):
    """Any prior shifted by a context vector: ``z = u + e``, ``e ~ base``, so ``p(z | u) = base(z - u)``.

    With ``u`` a group's latent offset this is the per-observation prior of the
    grouped model; ``context=None`` gives the base prior itself.
    """

    def __init__(self, base: Prior):
        super().__init__(base.latent_dim)
        self.base = base

    def setup(self, vae) -> None:
        self.base.setup(vae)

    def forward(self, context=None):
        base = self.base()
        if context is None:
            return base
        return dist.TransformedDistribution(base, [AffineTransform(context, 1.0, event_dim=1)])


class ContextEncoder(nn.Module):
    """``q(z | x, c)``: a core encoder (from a net spec) applied to ``[flatten(x), flatten(c)]``.

    ``x: [*b1, *data_shape]``, ``c: [*b2, *context_shape]`` with broadcastable
    batch dims ``-> (p_1, ..., p_k)``, one tensor ``[*broadcast(b1, b2), h_i]`` per
    posterior head (``heads``; default the diagonal Normal's ``(loc, scale)``).
    Dense families only (``"mlp"``, ``"linear"``, or any module taking a flat vector).
    """

    def __init__(self, net, data_shape, context_shape, latent_dim: int, heads=None):
        super().__init__()
        self.data_shape, self.context_shape = _shape(data_shape), _shape(context_shape)
        flat = math.prod(self.data_shape) + math.prod(self.context_shape)
        _require_dense(net, "encoder")
        self.net = make_encoder(net, (flat,), latent_dim, heads)

    def forward(self, x, c):
        return self.net(_concat(_flatten(x, self.data_shape), _flatten(c, self.context_shape)))


class ContextDecoder(nn.Module):
    """``p(x | z, c)`` parameters: a core decoder (any family) applied to ``[z, flatten(c)]``.

    ``z: [*b1, latent_dim]``, ``c: [*b2, *context_shape] -> [*broadcast, n_params, *data_shape]``.
    """

    def __init__(self, net, latent_dim: int, context_shape, data_shape, n_params: int):
        super().__init__()
        self.context_shape = _shape(context_shape)
        self.net = make_decoder(net, latent_dim + math.prod(self.context_shape), data_shape, n_params)

    def forward(self, z, c):
        return self.net(_concat(z, _flatten(c, self.context_shape)))


def _require_dense(net, what):
    if spec_name(net) == "conv":
        raise ValueError(f"a context-taking {what} sees [flatten(x), c] and needs a dense net family "
                         "('mlp' or 'linear'); the conv family is only available for the decoder side")
