"""Stacked latent layers: a list of conditional-prior stages over one likelihood.

::

    model:  z_L ~ p(z_L),  z_l ~ N(z_l; stage_l(z_{l+1})) for l = L-1..1,  x ~ p(x | decoder(z_1))

    guide, "bottom-up" (Burda et al. 2016):
            z_1 ~ q(z_1 | x),  z_{l+1} ~ q(z_{l+1} | z_l)      each q of the posterior family, per layer

    guide, "ladder" (Sonderby et al. 2016):
            deterministic upward pass  (m_1, s_1) = enc_1(x),  (m_{l+1}, s_{l+1}) = enc_{l+1}(m_l)
            z_L ~ N(m_L, s_L),  then top-down
            z_l ~ N(precision_merge(m_l, s_l, *stage_l(z_{l+1})))

In the ladder guide the generative stages are shared with the model, so the
posterior of each layer is the prior the layer above implies, corrected by
what the data say (the precision-weighted product of the two Gaussians).

The bottom-up guide takes any posterior family (``posterior``): every layer
gets its own :class:`~pyro_vae.posteriors.Posterior` (``posteriors[l]``), and
its parameters come from ``first_encoder(x)`` for layer 1 and from the
up-stage ``up[l-1](z_{l-1})`` above it. With the default ``"normal"`` the
up-stages are :class:`~pyro_vae.models.parts.ConditionalNormal`, as before
families existed; for another family each is an encoder over ``z_{l-1}`` (an
MLP with ``stage_hidden``, or the linear family when it is empty) sized by
that layer's posterior. The ladder merges Gaussian precisions, so it takes
``"normal"`` only.

References:
    1. Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    2. Sonderby, Raiko, Maaloe, Sonderby & Winther (2016), Ladder Variational Autoencoders.
"""

from __future__ import annotations

import pyro
import torch
from pyro.infer import Predictive
from torch import nn

from .._registry import ComponentError, spec_name
from ..distributions import IndependentNormal
from ..nets import layer_sizes, make_decoder, make_encoder
from ..posteriors import DiagonalNormal, make_posterior
from ..priors import make_prior
from .base import Model
from .parts import ConditionalNormal, precision_merge

__all__ = ["StackedVAE"]

_INFERENCE = ("bottom-up", "ladder")


class StackedVAE(Model):
    """A VAE with ``L`` stochastic layers ``z_L -> ... -> z_1 -> x`` and conditional Gaussian stages.

    Args:
        data_shape: shape of one data point.
        latent_dims: sizes ``[d_1, ..., d_L]``, the data-side layer first, e.g. ``[64, 32]``.
        prior: prior of the top layer ``z_L`` (a prior object, name or dict; ``"vamp"`` works
            and uses the deterministic upward path as its encoder).
        likelihood: ``p(x | z_1)``, object, name or dict.
        net: encoder ``x -> z_1`` and decoder ``z_1 -> x`` family (``"mlp"``, ``"conv"``, ``"linear"``).
        stage_hidden: hidden sizes of every stage network, generative ``p(z_l | z_{l+1})``
            and inference ``q(z_{l+1} | z_l)``; ``()`` makes them linear-Gaussian.
            Default: ``()`` with the linear net, else ``(256,)``.
        activation: nonlinearity of the stage networks.
        inference: ``"bottom-up"`` or ``"ladder"`` (see the module docstring).
        name: prefix in Pyro's param store.
        posterior: the variational family of every layer's ``q`` by name or dict (``"normal"``,
            ``"fullrank"``, ``{"name": "iaf", "n_flows": 4}``, ...), one module built per layer;
            a :class:`~pyro_vae.posteriors.Posterior` object only for a single layer.
            ``"ladder"`` takes ``"normal"`` only.

    Sites ``"z1" .. "zL"`` and ``"x"``; data plate ``"data"`` as in :class:`~pyro_vae.models.VAE`.
    From a config, ``latent_dims`` defaults to ``[latent_dim, latent_dim // 2]``.
    """

    guide_parts = ("first_encoder", "up", "posteriors")  # the guide registers these, the model the rest

    def __init__(self, data_shape, latent_dims=(32, 16), prior="normal", likelihood="bernoulli", net="mlp",
                 stage_hidden=None, activation: str = "softplus", inference: str = "bottom-up",
                 name: str = "stacked", posterior="normal"):
        super().__init__(data_shape, likelihood, name)
        dims = [int(d) for d in ([latent_dims] if isinstance(latent_dims, int) else latent_dims)]
        if not dims or min(dims) < 1:
            raise ValueError(f"latent_dims must be a non-empty list of positive sizes, got {latent_dims!r}")
        if inference not in _INFERENCE:
            raise ValueError(f"inference must be one of {', '.join(_INFERENCE)}; got {inference!r}")
        if stage_hidden is None:
            stage_hidden = () if spec_name(net) == "linear" else (256,)
        stage_hidden = layer_sizes(stage_hidden, "stage_hidden", "[] makes the stages linear", allow_empty=True)
        self.latent_dims, self.inference = dims, inference
        self.latent_dim = dims[0]

        self.decoder = make_decoder(net, dims[0], self.data_shape, self.likelihood.n_params)
        # stages[l] is p(z_{l+1} | z_{l+2}) in 0-based layer numbering: context is the layer above.
        self.stages = nn.ModuleList(ConditionalNormal(dims[i], dims[i + 1], stage_hidden, activation)
                                    for i in range(len(dims) - 1))
        self.posteriors = self._make_posteriors(posterior, dims, inference)  # they size the encoders
        self.first_encoder = make_encoder(net, self.data_shape, dims[0], self.posteriors[0].heads)
        if isinstance(self.posteriors[0], DiagonalNormal):  # the Gaussian up-stages, as before families existed
            self.up = nn.ModuleList(ConditionalNormal(dims[i + 1], dims[i], stage_hidden, activation)
                                    for i in range(len(dims) - 1))
        else:
            stage_net = {"name": "mlp", "hidden": stage_hidden, "activation": activation} if stage_hidden else "linear"
            self.up = nn.ModuleList(make_encoder(stage_net, (dims[i],), dims[i + 1], self.posteriors[i + 1].heads)
                                    for i in range(len(dims) - 1))
        self.prior = make_prior(prior, dims[-1], self.data_shape)
        self.prior.setup(self)

    @staticmethod
    def _make_posteriors(spec, dims, inference) -> nn.ModuleList:
        """One posterior per layer from one family spec; refused where this type cannot use the family."""
        if isinstance(spec, nn.Module) and len(dims) > 1:
            raise ValueError("StackedVAE builds one posterior per layer: give the family by name or dict (e.g. "
                             "'iaf' or {'name': 'iaf', 'n_flows': 4}), not a Posterior object")
        posteriors = nn.ModuleList()
        for layer, d in enumerate(dims, start=1):
            try:
                posteriors.append(make_posterior(spec, d))
            except ComponentError as err:  # say which layer's size the family refused
                raise ComponentError(err.kind, f"{err} (StackedVAE layer z{layer} has size {d}; latent_dims {dims})"
                                     if len(dims) > 1 else str(err)) from err
        if inference == "ladder" and not isinstance(posteriors[0], DiagonalNormal):
            raise ValueError(f"StackedVAE with inference 'ladder' merges Gaussian precisions and takes only posterior "
                             f"'normal', not {posteriors[0].name!r}; use inference 'bottom-up' for that family")
        return posteriors

    @property
    def posterior(self):
        """The top layer's posterior family: with :attr:`encoder`, what a VampPrior on ``z_L`` mixes."""
        return self.posteriors[-1]

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """``("z1", ..., "zL")``, the data-side layer first."""
        return tuple(f"z{i + 1}" for i in range(len(self.latent_dims)))

    @classmethod
    def from_config(cls, data_shape, latent_dim=10, prior="normal", likelihood="bernoulli", net="mlp",
                    latent_dims=None, **options):
        dims = [latent_dim, max(1, latent_dim // 2)] if latent_dims is None else latent_dims
        return cls(data_shape, dims, prior=prior, likelihood=likelihood, net=net, **options)

    @property
    def encoder(self):
        """``x ->`` the top layer's posterior parameters (``(loc, scale)`` for ``"normal"``) along the
        deterministic upward path (used by a VampPrior, with :attr:`posterior`)."""
        return self._top_posterior

    def _top_posterior(self, x):
        return self._upward(x)[-1]

    # ----------------------------------------------------------------- Pyro programs
    def model(self, x=None, idx=None, num_data=None, n=None):
        """``z_L ~ p(z_L)``, ``z_l ~ p(z_l | z_{l+1})``, ``x ~ p(x | decoder(z_1))``."""
        self.register_params("model")
        with self.data_plate(x, idx, num_data, n):
            z = pyro.sample(self.latent_sites[-1], self.prior())
            for i in reversed(range(len(self.stages))):
                z = pyro.sample(self.latent_sites[i], self.stages[i](z))
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x=None, idx=None, num_data=None, n=None):
        """Bottom-up ``q(z_1|x) q(z_2|z_1)...`` or the ladder's top-down merge, per ``inference``."""
        self.register_params("guide")
        if x is None:
            raise ValueError("the guide needs data x")
        with self.data_plate(x, idx, num_data, n):
            if self.inference == "ladder":
                return self._ladder(x)
            z = pyro.sample(self.latent_sites[0], self.posteriors[0](*self.first_encoder(x)))
            for i in range(1, len(self.latent_dims)):
                z = pyro.sample(self.latent_sites[i], self.posteriors[i](*self._up_params(i - 1, z)))
            return z

    def _up_params(self, i, z):
        """Layer ``i + 1``'s posterior parameters (0-based) from the up-stage ``up[i]`` fed ``z`` of layer ``i``."""
        up = self.up[i]
        return up.loc_scale(z) if isinstance(up, ConditionalNormal) else up(z)

    def _upward(self, x):
        """The deterministic bottom-up pass: each layer's posterior parameters, ``[(m_1, s_1), ..., (m_L, s_L)]``
        for ``"normal"``, each stage fed the posterior mean of the layer below."""
        out = [self.first_encoder(x)]
        for i in range(len(self.up)):
            out.append(self._up_params(i, self.posteriors[i].mean(*out[-1])))
        return out

    def _ladder(self, x):
        ups = self._upward(x)
        z = pyro.sample(self.latent_sites[-1], IndependentNormal(*ups[-1]))
        for i in reversed(range(len(self.stages))):
            loc, scale = precision_merge(*ups[i], *self.stages[i].loc_scale(z))
            z = pyro.sample(self.latent_sites[i], IndependentNormal(loc, scale))
        return z

    # ----------------------------------------------------------------- fitted-model API
    @torch.no_grad()
    def encode(self, x):
        """Posterior parameters per layer, ``[(loc_1, scale_1), ..., (loc_L, scale_L)]`` for ``"normal"``
        (``posteriors[l].heads`` lists them for any family), each ``[B, *]``.

        Layer 1 is exact (``q(z_1|x)`` bottom-up); the other layers are conditioned
        on the means of their neighbours instead of samples of them.
        """
        self.check_data(x, support=False)
        ups = self._upward(x.to(self.device))
        if self.inference == "bottom-up":
            return ups
        out = [ups[-1]]
        for i in reversed(range(len(self.stages))):
            out.insert(0, precision_merge(*ups[i], *self.stages[i].loc_scale(out[0][0])))
        return out

    def posterior_mean(self, x, labels=None):
        """``E_q[z_1 | x]``, ``[N, d_1]``: the layer the decoder reads (see :meth:`encode` for every layer)."""
        return self.posteriors[0].mean(*self.encode(x)[0])

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True):
        """``n`` ancestral draws ``z_L -> ... -> z_1``, then ``E[x | z_1]`` (``mean=True``) or ``x`` itself."""
        draws = Predictive(self.model, num_samples=1, return_sites=(self.latent_sites[0], "x"))(n=n)
        return self.decode(draws[self.latent_sites[0]][0]) if mean else draws["x"][0]
