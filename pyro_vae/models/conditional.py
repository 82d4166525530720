"""Conditional VAE (Sohn et al. 2015): every part of the VAE sees a conditioning tensor ``c``.

::

    model:  z_n ~ p(z | c_n),  x_n ~ p(x | decoder(z_n, c_n))
    guide:  z_n ~ q(z | x_n, c_n) = posterior(*encoder(x_n, c_n))     the posterior family, N(loc, scale) by default

``c`` is a one-hot label (class-conditional generation), a masked image (the
quadrant-completion task of Sohn et al.: condition on the observed quadrants,
generate the others) or any tensor. The prior is a
:class:`~pyro_vae.models.parts.ConditionalNormal` by default; any other
prior works too and then ignores ``c``.

References:
    1. Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep
       Conditional Generative Models.
"""

from __future__ import annotations

import pyro
import torch
from pyro.infer import Predictive

from .._registry import Registry, spec_name
from ..posteriors import make_posterior
from ..priors import VampPrior, make_prior
from .base import Model, SampleGrid, Unsupported, _shape
from .parts import ConditionalNormal, ContextDecoder, ContextEncoder, one_hot

__all__ = ["CVAE", "quadrant_task", "fill_hidden"]

# The CVAE's own prior p(z | c), beside the unconditional priors of PRIORS.
_CONDITIONAL_PRIORS = Registry("conditional prior", skip=("self", "latent_dim", "context_shape"))
_CONDITIONAL_PRIORS.register("conditional", ConditionalNormal, target=ConditionalNormal)


class CVAE(Model):
    """``p(x | z, c) p(z | c)`` with guide ``q(z | x, c)``.

    Args:
        data_shape: shape of one ``x``.
        context_shape: shape of one ``c`` (int or tuple). Give this or ``n_classes``.
        n_classes: ``c`` is an integer label, one-hot encoded inside (context size ``n_classes``);
            a float tensor of shape ``[B, n_classes]`` is accepted as is.
        latent_dim: size of ``z``.
        prior: ``"conditional"`` (default) or ``{"name": "conditional", "hidden": [...]}`` for
            ``p(z | c) = ConditionalNormal``; any other prior spec gives a ``p(z)`` that ignores ``c``.
        likelihood: ``p(x | z, c)``.
        net: family of ``q(z | x, c)`` (dense) and of the decoder (any).
        encoder, decoder: net specs or modules overriding ``net`` for one side.
        name: prefix in Pyro's param store.
        posterior: the family of ``q(z | x, c)``, a :class:`~pyro_vae.posteriors.Posterior` or its
            name/dict (``"normal"``, ``"fullrank"``, ``{"name": "iaf", "n_flows": 4}``, ...); it sizes the encoder.

    Call ``model(x, c, idx, num_data)``; ``model(c=c)`` with ``x=None`` generates.
    """

    inputs = ("x", "c")
    guide_parts = ("encoder", "posterior")  # the guide registers these, the model the rest
    latent_sites = ("z",)
    label_option = "n_classes"

    def __init__(self, data_shape, context_shape=None, latent_dim: int = 10, n_classes: int | None = None,
                 prior="conditional", likelihood="bernoulli", net="mlp", encoder=None, decoder=None,
                 name: str = "cvae", posterior="normal"):
        super().__init__(data_shape, likelihood, name)
        if (context_shape is None) == (n_classes is None):
            raise ValueError("give exactly one of context_shape (any conditioning tensor) or n_classes (labels)")
        self.n_classes = None if n_classes is None else int(n_classes)
        self.context_shape = (self.n_classes,) if n_classes is not None else _shape(context_shape)
        self.latent_dim = int(latent_dim)
        self.posterior = make_posterior(posterior, self.latent_dim)
        self.encoder = ContextEncoder(net if encoder is None else encoder, self.data_shape, self.context_shape,
                                      self.latent_dim, self.posterior.heads)
        self.decoder = ContextDecoder(net if decoder is None else decoder, self.latent_dim, self.context_shape,
                                      self.data_shape, self.likelihood.n_params)
        if spec_name(prior) == "conditional":
            options = {"hidden": (256,), **_CONDITIONAL_PRIORS.split_spec(prior)[1]}
            self.prior = _CONDITIONAL_PRIORS.build({"name": "conditional", **options}, latent_dim=self.latent_dim,
                                                   context_shape=self.context_shape)
        else:
            self.prior = make_prior(prior, self.latent_dim, self.data_shape)
            if isinstance(self.prior, VampPrior):
                raise ValueError("the VampPrior needs an encoder of x alone; the CVAE's encoder is q(z | x, c); "
                                 "choose another prior, e.g. 'mog' for a learned mixture")
        self.prior.setup(self)

    def context(self, c) -> torch.Tensor:
        """``c`` as the float tensor the networks see: labels one-hot encoded, shape checked."""
        if c is None:
            raise ValueError("the CVAE needs its conditioning tensor c")
        c = c.to(self.device)
        if self.n_classes is not None and not c.is_floating_point():
            if c.dim() != 1 or bool(((c < 0) | (c >= self.n_classes)).any()):
                raise ValueError(f"labels c must be a [B] tensor with values in 0..{self.n_classes - 1}")
            return one_hot(c, self.n_classes)
        if tuple(c.shape[1:]) != self.context_shape:
            raise ValueError(f"context c of shape {list(c.shape)} does not match the model: expected "
                             f"[B, {', '.join(map(str, self.context_shape))}]")
        return c

    # ----------------------------------------------------------------- Pyro programs
    def model(self, x=None, c=None, idx=None, num_data=None, n=None):
        """``z ~ p(z | c)``, ``x ~ p(x | decoder(z, c))``."""
        self.register_params("model")
        c = self.context(c)
        with self.data_plate(x, idx, num_data, c.shape[0] if x is None else n):
            z = pyro.sample("z", self.prior(context=c))
            return pyro.sample("x", self.likelihood(self.decoder(z, c)), obs=x)

    def guide(self, x=None, c=None, idx=None, num_data=None, n=None):
        """``z ~ q(z | x, c)``."""
        self.register_params("guide")
        if x is None:
            raise ValueError("the guide needs data x")
        c = self.context(c)
        with self.data_plate(x, idx, num_data, n):
            return pyro.sample("z", self.posterior(*self.encoder(x, c)))

    # ----------------------------------------------------------------- from a config
    @classmethod
    def from_config(cls, data_shape, latent_dim=10, prior="conditional", likelihood="bernoulli", net="mlp",
                    context_shape=None, n_classes=None, **options):
        if context_shape is None and n_classes is None:
            n_classes = 10
        return cls(data_shape, context_shape, latent_dim, n_classes, prior=prior, likelihood=likelihood, net=net,
                   **options)

    @classmethod
    def complete_options(cls, options, labels):
        if "context_shape" in options:
            return dict(options)
        return super().complete_options(options, labels)

    @classmethod
    def check_component(cls, key, spec):
        if key == "prior" and spec_name(spec) == "conditional":
            _CONDITIONAL_PRIORS.check(spec)
            return
        super().check_component(key, spec)

    # ----------------------------------------------------------------- fitted-model API
    @torch.no_grad()
    def encode(self, x, c):
        """The parameters of ``q(z | x, c)``: ``(loc, scale)``, each ``[B, latent_dim]``, for ``"normal"``
        (``self.posterior.heads`` lists them for any family)."""
        self.check_data(x, support=False)
        return self.encoder(x.to(self.device), self.context(c))

    def posterior_mean(self, x, labels=None):
        """``E_q[z | x, c]`` with ``c`` the points' labels (or context tensor)."""
        if labels is None:
            raise Unsupported("the CVAE's posterior q(z | x, c) needs each point's context c: give data with "
                              "labels (a .npz or .pt file with a 'y' array), or call encode(x, c) from Python")
        return self.posterior.mean(*self.encode(x, labels))

    def decoder_context(self, *context):
        if len(context) != 1:
            raise Unsupported("the CVAE decodes z with its context: decode(z, c)")
        return (self.context(context[0]),)

    @torch.no_grad()
    def reconstruct(self, x, labels=None):
        """``E[x | z, c]`` at the posterior mean of ``z``."""
        return self.decode(self.posterior_mean(x, labels), labels)

    @torch.no_grad()
    def sample_grid(self, n: int = 64, mean: bool = True) -> SampleGrid:
        """A row per class for a label CVAE, ``min(10, n // n_classes)`` (at least 1) draws each, labelled
        ``"c = k"``."""
        if self.n_classes is None:
            raise Unsupported("a CVAE on a general context tensor has no class grid; call model.sample(c)")
        per = max(1, min(10, n // self.n_classes))
        labels = torch.arange(self.n_classes).repeat_interleave(per)
        return SampleGrid(self.sample(labels, mean=mean), per, tuple(f"c = {k}" for k in range(self.n_classes)))

    @torch.no_grad()
    def sample(self, c, num_samples: int = 1, mean: bool = True):
        """Generate for each context: ``z ~ p(z | c)``, then ``E[x | z, c]`` or ``x`` itself.

        ``c``: ``[B]`` labels or ``[B, *context_shape]``. Returns ``[B, *data_shape]``, or
        ``[num_samples, B, *data_shape]`` when ``num_samples > 1``.
        """
        draws = Predictive(self.model, num_samples=num_samples, return_sites=("z", "x"))(c=c)
        out = self.decode(draws["z"], c) if mean else draws["x"]
        return out[0] if num_samples == 1 else out


# --------------------------------------------------------------------------- quadrant completion

def _hidden_mask(height: int, width: int, n_observed: int) -> torch.Tensor:
    """Hidden pixels as in Pyro's CVAE tutorial: 1 quadrant observed = bottom-left,
    2 = the left half, 3 = all but the bottom-right quadrant."""
    if n_observed not in (1, 2, 3):
        raise ValueError(f"n_observed must be 1, 2 or 3 quadrants, got {n_observed}")
    observed = torch.zeros(height, width, dtype=torch.bool)
    h, w = height // 2, width // 2
    observed[h:, :w] = True
    if n_observed >= 2:
        observed[:, :w] = True
    if n_observed == 3:
        observed[:h, :] = True
    return ~observed


def quadrant_task(images: torch.Tensor, n_observed: int, fill: float = -1.0):
    """Sohn et al.'s MNIST completion task: ``(x_hidden, c_masked, hidden_mask)``.

    ``images: [N, C, H, W]``. ``x_hidden: [N, n_hidden]`` are the pixels to generate
    (the CVAE's data, ``data_shape=(n_hidden,)``), ``c_masked: [N, C, H, W]`` is the
    image with the hidden pixels set to ``fill`` (the context), ``hidden_mask: [H, W]``.
    """
    mask = _hidden_mask(images.shape[-2], images.shape[-1], n_observed)
    hidden = images[..., mask].reshape(images.shape[0], -1)
    context = images.clone()
    context[..., mask] = fill
    return hidden, context, mask


def fill_hidden(context: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put generated pixels ``hidden: [*b, N, n_hidden]`` back into ``context: [N, C, H, W]``."""
    out = context.expand(*hidden.shape[:-2], *context.shape).clone()
    out[..., mask] = hidden.reshape(*hidden.shape[:-1], context.shape[-3], -1)
    return out
