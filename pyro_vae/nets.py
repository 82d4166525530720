"""Encoders and decoders: MLP, convolutional and linear.

Shapes (any number of leading batch dims, so vectorised particles work)::

    encoder(x: [*b, *data_shape]) -> (p_1: [*b, h_1], ..., p_k: [*b, h_k])   one tensor per head
    decoder(z: [*b, latent_dim])  -> params: [*b, n_params, *data_shape]

The heads come from the posterior (:mod:`pyro_vae.posteriors`: the posterior
sizes the encoder), by default the diagonal Normal's ``(loc, scale)``, each
``[*b, latent_dim]``; ``n_params`` comes from the likelihood (the likelihood
sizes the decoder). Users may pass any ``nn.Module`` with these signatures to ``VAE``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import NETS, did_you_mean

__all__ = [
    "MLP",
    "MLPEncoder",
    "MLPDecoder",
    "LinearEncoder",
    "LinearDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "NETS",
    "make_encoder",
    "make_decoder",
    "make_activation",
    "layer_sizes",
    "MIN_SCALE",
    "inv_softplus",
    "Head",
    "normal_heads",
    "apply_links",
]

_ACTIVATIONS = {
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky-relu": nn.LeakyReLU,
}
MIN_SCALE = 1e-4  # floor of every scale a network emits: softplus(raw) + MIN_SCALE


def inv_softplus(y: float) -> float:
    """The raw value whose softplus is ``y > 0``: initialises a parameter that enters as ``softplus(raw)``."""
    return y + math.log(-math.expm1(-y))


class Head(NamedTuple):
    """One encoder output: ``size`` features per point, and the ``link`` the encoder applies to it."""

    size: int
    link: str = "real"  # "real": as emitted; "positive": softplus(raw) + MIN_SCALE


def normal_heads(latent_dim: int) -> tuple[Head, Head]:
    """``(loc, scale)``: the outputs of the diagonal Normal posterior (and the base of every flow)."""
    return Head(int(latent_dim)), Head(int(latent_dim), "positive")


def apply_links(raw, heads) -> tuple:
    """The raw outputs (one tensor per head) with each head's link applied."""
    return tuple(F.softplus(value) + MIN_SCALE if head.link == "positive" else value
                 for value, head in zip(raw, heads))


def _heads(heads, latent_dim: int) -> tuple[Head, ...]:
    return normal_heads(latent_dim) if heads is None else tuple(Head(*h) for h in heads)


def make_activation(name: str) -> nn.Module:
    """The activation module for a config name (``softplus``, ``relu``, ``tanh``, ...)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(_ACTIVATIONS)}.{did_you_mean(name, _ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def layer_sizes(hidden, option: str = "hidden", hint: str = "use net 'linear' for no hidden layer",
                allow_empty: bool = False) -> list[int]:
    """Hidden layer sizes as a list of positive ints, or a ``ValueError`` naming ``option`` and ``hint``."""
    sizes = [int(h) for h in ([hidden] if isinstance(hidden, int) else hidden)]
    if (not sizes and not allow_empty) or (sizes and min(sizes) < 1):
        raise ValueError(f"{option} must be a {'' if allow_empty else 'non-empty '}list of positive layer sizes, "
                         f"got {hidden!r}; {hint}")
    return sizes


def _flat(shape) -> int:
    return math.prod(shape)


class MLP(nn.Module):
    """Dense layers ``in_dim -> *hidden -> sum(heads)``, the activation between them, the output split in heads.

    The layout of Pyro's ``DenseNN`` (parameters ``layers.{i}.weight``, ``layers.{i}.bias``,
    so checkpoints written with it load), with less work per call: ``DenseNN``
    slices its ``ModuleList`` (constructing a new module) and indexes each head
    on every call, which was ~55 of the ~90 microseconds of a 784-16-(2+2)
    encoder call at batch 32 on 2 cores. One head is returned as a tensor,
    several as a tuple of views.

    Args:
        in_dim: input features.
        hidden: hidden layer sizes (at least one).
        heads: output sizes, e.g. ``[latent_dim, latent_dim]`` for loc and raw scale.
        activation: a config name (``softplus``, ``relu``, ``tanh``, ...) or a module.
    """

    def __init__(self, in_dim: int, hidden, heads, activation="softplus"):
        super().__init__()
        self.heads = tuple(int(h) for h in heads)
        sizes = [int(in_dim), *layer_sizes(hidden), sum(self.heads)]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.f = make_activation(activation) if isinstance(activation, str) else activation

    def forward(self, x):
        *hidden, last = self.layers
        for layer in hidden:
            x = self.f(layer(x))
        out = last(x)
        return out if len(self.heads) == 1 else out.split(self.heads, -1)


class MLPEncoder(nn.Module):
    """The posterior's parameters from a dense network with one output head per posterior head (:class:`MLP`);
    by default ``(loc, scale)`` of a diagonal Normal."""

    def __init__(self, data_shape, latent_dim: int, hidden=(400,), activation: str = "softplus", heads=None):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.heads = _heads(heads, latent_dim)
        self.net = MLP(_flat(self.data_shape), hidden, [h.size for h in self.heads], activation)

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.data_shape)]
        out = self.net(x.reshape(*batch, -1))
        return apply_links((out,) if len(self.heads) == 1 else out, self.heads)


class MLPDecoder(nn.Module):
    """Dense network ``z -> [n_params, *data_shape]`` decoder outputs."""

    def __init__(self, latent_dim: int, data_shape, n_params: int = 1, hidden=(400,), activation: str = "softplus"):
        super().__init__()
        self.out_shape = (int(n_params), *tuple(data_shape))
        self.net = MLP(latent_dim, hidden, [_flat(self.out_shape)], activation)

    def forward(self, z):
        return self.net(z).reshape(*z.shape[:-1], *self.out_shape)


class LinearEncoder(nn.Module):
    """The first head linear in x, ``A x + b``, every other head a learned constant.

    With the diagonal Normal, ``q(z|x) = N(A x + b, diag(s^2))``: this family
    contains the exact posterior of probabilistic PCA, so a linear VAE with a
    Normal likelihood can reach the pPCA maximum likelihood exactly; with
    ``fullrank`` it contains the exact posterior of any linear-Gaussian model.
    Head 1 is the parameter ``raw_scale`` (zeros), heads 2 on ``raw_heads``
    (small random values: a low-rank factor of zero is a saddle point).
    """

    def __init__(self, data_shape, latent_dim: int, heads=None):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.heads = _heads(heads, latent_dim)
        self.loc = nn.Linear(_flat(self.data_shape), self.heads[0].size)
        if len(self.heads) > 1:
            self.raw_scale = nn.Parameter(torch.zeros(self.heads[1].size))
        self.raw_heads = nn.ParameterList(nn.Parameter(0.01 * torch.randn(h.size)) for h in self.heads[2:])

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.data_shape)]
        loc = self.loc(x.reshape(*batch, -1))
        constants = apply_links([self.raw_scale, *self.raw_heads], self.heads[1:]) if len(self.heads) > 1 else ()
        return (loc, *(c.expand(*batch, c.shape[-1]) for c in constants))


class LinearDecoder(nn.Module):
    """``params = W z + mu``: with a Normal likelihood this is probabilistic PCA (Tipping & Bishop 1999)."""

    def __init__(self, latent_dim: int, data_shape, n_params: int = 1):
        super().__init__()
        self.out_shape = (int(n_params), *tuple(data_shape))
        self.linear = nn.Linear(latent_dim, _flat(self.out_shape))

    def forward(self, z):
        return self.linear(z).reshape(*z.shape[:-1], *self.out_shape)


def _image_shape(data_shape, what):
    if len(data_shape) != 3:
        raise ValueError(f"the conv {what} needs image-shaped data [channels, height, width]; got data_shape "
                         f"{tuple(data_shape)}. Use net 'mlp' for flat data, or reshape the data to [N, C, H, W].")
    return tuple(int(s) for s in data_shape)


def _conv_sizes(hw, n_layers):
    """Spatial sizes after each stride-2 conv (kernel 4, padding 1): ``s -> floor(s / 2)``."""
    sizes = [tuple(hw)]
    for _ in range(n_layers):
        h, w = sizes[-1]
        if min(h, w) < 2:
            raise ValueError(f"image of size {tuple(hw)} is too small for {n_layers} stride-2 conv layers; "
                             "pass fewer 'channels'")
        sizes.append((h // 2, w // 2))
    return sizes


class ConvEncoder(nn.Module):
    """Stride-2 convolutions then a dense network with loc/scale heads; for [C, H, W] data of any size."""

    def __init__(self, data_shape, latent_dim: int, channels=(32, 64), hidden=(256,), activation: str = "relu",
                 heads=None):
        super().__init__()
        self.data_shape = _image_shape(data_shape, "encoder")
        self.heads = _heads(heads, latent_dim)
        c, h, w = self.data_shape
        sizes = _conv_sizes((h, w), len(channels))
        layers, cin = [], c
        for cout in channels:
            layers += [nn.Conv2d(cin, int(cout), 4, stride=2, padding=1), make_activation(activation)]
            cin = int(cout)
        self.conv = nn.Sequential(*layers)
        flat = cin * sizes[-1][0] * sizes[-1][1]
        self.head = MLP(flat, hidden, [h.size for h in self.heads], activation)

    def forward(self, x):
        batch = x.shape[:-3]
        out = self.head(self.conv(x.reshape(-1, *self.data_shape)).flatten(1))
        out = (out,) if len(self.heads) == 1 else out
        return apply_links([o.reshape(*batch, -1) for o in out], self.heads)


class ConvDecoder(nn.Module):
    """Dense network to a small feature map, then stride-2 transposed convolutions back to [n_params*C, H, W]."""

    def __init__(self, latent_dim: int, data_shape, n_params: int = 1, channels=(32, 64), hidden=(256,),
                 activation: str = "relu"):
        super().__init__()
        c, h, w = _image_shape(data_shape, "decoder")
        self.out_shape = (int(n_params), c, h, w)
        self.sizes = _conv_sizes((h, w), len(channels))[::-1]  # smallest first
        chans = [int(ch) for ch in channels][::-1]
        self.start = (chans[0], *self.sizes[0])
        self.head = MLP(latent_dim, hidden, [_flat(self.start)], activation)
        outs = chans[1:] + [int(n_params) * c]
        self.deconvs = nn.ModuleList(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1) for cin, cout in zip(chans, outs))
        self.act = make_activation(activation)

    def forward(self, z):
        batch = z.shape[:-1]
        h = self.act(self.head(z).reshape(-1, *self.start))
        last = len(self.deconvs) - 1
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h, output_size=self.sizes[i + 1])
            if i < last:
                h = self.act(h)
        return h.reshape(*batch, *self.out_shape)


NETS.register("mlp", (MLPEncoder, MLPDecoder), doc="dense layers; options hidden, activation",
              target=MLPDecoder)
NETS.register("conv", (ConvEncoder, ConvDecoder), doc="stride-2 conv layers for [C, H, W] data; options channels, "
              "hidden, activation", target=ConvDecoder)
NETS.register("linear", (LinearEncoder, LinearDecoder), doc="linear maps (probabilistic PCA with a normal "
              "likelihood)", target=LinearDecoder)


def _net_spec(spec):
    name, options = NETS.split_spec(spec)
    NETS.check_options(name, {k: v for k, v in options.items() if k != "n_params"})
    return NETS[name].factory, options


def make_encoder(spec, data_shape, latent_dim: int, heads=None) -> nn.Module:
    """An encoder from a net name/dict (``"mlp"``, ``{"name": "conv", "channels": [32, 64]}``) or a module,
    emitting ``heads`` (a posterior's :class:`Head` tuple; default the diagonal Normal's ``(loc, scale)``)."""
    if isinstance(spec, nn.Module):
        return spec
    (enc, _), options = _net_spec(spec)
    return NETS.call(enc, data_shape, latent_dim, **options, **({} if heads is None else {"heads": heads}))


def make_decoder(spec, latent_dim: int, data_shape, n_params: int) -> nn.Module:
    """A decoder emitting ``[*b, n_params, *data_shape]`` from a net name/dict or a module."""
    if isinstance(spec, nn.Module):
        return spec
    (_, dec), options = _net_spec(spec)
    return NETS.call(dec, latent_dim, data_shape, n_params, **options)
