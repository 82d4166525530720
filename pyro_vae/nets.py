"""Encoders and decoders: MLP, convolutional and linear.

Shapes (any number of leading batch dims, so vectorised particles work)::

    encoder(x: [*b, *data_shape]) -> (loc: [*b, latent_dim], scale: [*b, latent_dim])
    decoder(z: [*b, latent_dim])  -> params: [*b, n_params, *data_shape]

``n_params`` comes from the likelihood (principle: the likelihood sizes the
decoder). Users may pass any ``nn.Module`` with these signatures to ``VAE``.
"""

from __future__ import annotations

import math

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
    """``q(z|x) = N(loc(x), scale(x))`` from a dense network with two heads (:class:`MLP`)."""

    def __init__(self, data_shape, latent_dim: int, hidden=(400,), activation: str = "softplus"):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.net = MLP(_flat(self.data_shape), hidden, [latent_dim, latent_dim], activation)

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.data_shape)]
        loc, raw_scale = self.net(x.reshape(*batch, -1))
        return loc, F.softplus(raw_scale) + MIN_SCALE


class MLPDecoder(nn.Module):
    """Dense network ``z -> [n_params, *data_shape]`` decoder outputs."""

    def __init__(self, latent_dim: int, data_shape, n_params: int = 1, hidden=(400,), activation: str = "softplus"):
        super().__init__()
        self.out_shape = (int(n_params), *tuple(data_shape))
        self.net = MLP(latent_dim, hidden, [_flat(self.out_shape)], activation)

    def forward(self, z):
        return self.net(z).reshape(*z.shape[:-1], *self.out_shape)


class LinearEncoder(nn.Module):
    """``q(z|x) = N(A x + b, diag(s^2))`` with a scale that does not depend on ``x``.

    This family contains the exact posterior of probabilistic PCA, so a linear
    VAE with a Normal likelihood can reach the pPCA maximum likelihood exactly.
    """

    def __init__(self, data_shape, latent_dim: int):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.loc = nn.Linear(_flat(self.data_shape), latent_dim)
        self.raw_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.data_shape)]
        loc = self.loc(x.reshape(*batch, -1))
        return loc, (F.softplus(self.raw_scale) + MIN_SCALE).expand_as(loc)


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

    def __init__(self, data_shape, latent_dim: int, channels=(32, 64), hidden=(256,), activation: str = "relu"):
        super().__init__()
        self.data_shape = _image_shape(data_shape, "encoder")
        c, h, w = self.data_shape
        sizes = _conv_sizes((h, w), len(channels))
        layers, cin = [], c
        for cout in channels:
            layers += [nn.Conv2d(cin, int(cout), 4, stride=2, padding=1), make_activation(activation)]
            cin = int(cout)
        self.conv = nn.Sequential(*layers)
        flat = cin * sizes[-1][0] * sizes[-1][1]
        self.head = MLP(flat, hidden, [latent_dim, latent_dim], activation)

    def forward(self, x):
        batch = x.shape[:-3]
        h = self.conv(x.reshape(-1, *self.data_shape)).flatten(1)
        loc, raw_scale = self.head(h)
        return loc.reshape(*batch, -1), (F.softplus(raw_scale) + MIN_SCALE).reshape(*batch, -1)


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


def make_encoder(spec, data_shape, latent_dim: int) -> nn.Module:
    """An encoder from a net name/dict (``"mlp"``, ``{"name": "conv", "channels": [32, 64]}``) or a module."""
    if isinstance(spec, nn.Module):
        return spec
    (enc, _), options = _net_spec(spec)
    return NETS.call(enc, data_shape, latent_dim, **options)


def make_decoder(spec, latent_dim: int, data_shape, n_params: int) -> nn.Module:
    """A decoder emitting ``[*b, n_params, *data_shape]`` from a net name/dict or a module."""
    if isinstance(spec, nn.Module):
        return spec
    (_, dec), options = _net_spec(spec)
    return NETS.call(dec, latent_dim, data_shape, n_params, **options)
