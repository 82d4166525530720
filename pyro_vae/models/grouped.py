"""Group-level latents: a per-group offset under a population prior, plus amortised per-point latents.

::

    model:  tau ~ point estimate (or fixed)                      population scale
            u_g ~ N(0, tau^2 I)              for g in plate("groups", G)
            z_n ~ p(z - u_{g_n})             for n in plate("data", N, subsample=idx)
            x_n ~ p(x | decoder(z_n))
    guide:  u_g ~ N(m_g, s_g^2)              (mean field, one pair of parameters per group)
            z_n ~ q(z | x_n)                 (amortised; the posterior family, N(loc, scale) by default)

The two plates are independent: the group terms are not scaled by the data
plate's ``num_data / batch``, each observation term is. A group's offset moves
all its points in latent space together, so batch effects (subjects, batches,
plates in count data) sit in ``u`` and ``z_n - u_{g_n}`` is the representation
with them removed (:meth:`GroupedVAE.corrected`).

References:
    1. Gelman & Hill (2007), Data Analysis Using Regression and Multilevel/Hierarchical Models, ch. 11-12.
    2. Lopez, Regier, Cole, Jordan & Yosef (2018), Deep generative modeling for single-cell
       transcriptomics (batch effects in count data with a negative binomial VAE).
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import Predictive
from torch import nn

from ..distributions import IndependentNormal
from ..nets import inv_softplus, make_decoder, make_encoder
from ..posteriors import make_posterior
from ..priors import make_prior
from .base import Model
from .parts import OffsetPrior

__all__ = ["GroupedVAE"]


class GroupedVAE(Model):
    """A VAE whose points belong to ``num_groups`` groups, each with a latent offset ``u_g``.

    Args:
        data_shape: shape of one data point.
        num_groups: ``G``; group labels are integers ``0..G-1``.
        latent_dim: size of ``z`` and of each ``u_g``.
        prior: base prior of ``z - u_g`` (object, name or dict; shifted by
            :class:`~pyro_vae.hierarchical.parts.OffsetPrior`).
        likelihood: ``p(x | z)``; ``"negative-binomial"`` (default) for counts.
        net: encoder/decoder family; ``encoder``, ``decoder`` override one side.
        group_scale: ``"learned"`` (``tau`` fitted by SVI, empirical Bayes) or a fixed ``tau > 0``.
        init_group_scale: starting ``tau`` when learned.
        name: prefix in Pyro's param store.
        posterior: the family of ``q(z | x)`` (a :class:`~pyro_vae.posteriors.Posterior` or its name/dict);
            it sizes the encoder. The offsets' ``q(u_g)`` stay mean-field Normal.

    Call ``model(x, g, idx, num_data)`` with ``x: [B, *data_shape]`` and ``g: [B]`` group labels.
    """

    inputs = ("x", "g")
    guide_parts = ("encoder", "posterior", "group_loc", "group_raw_scale")  # the guide's; the model the rest
    latent_sites = ("u", "z")
    label_option = "num_groups"

    def __init__(self, data_shape, num_groups: int | None = None, latent_dim: int = 10, prior="normal",
                 likelihood="negative-binomial", net="mlp", encoder=None, decoder=None,
                 group_scale="learned", init_group_scale: float = 1.0, name: str = "grouped", posterior="normal"):
        super().__init__(data_shape, likelihood, name)
        if num_groups is None:
            raise ValueError("the grouped model needs num_groups (the number of groups G): train on data with group "
                             "labels (a .npz or .pt file with a 'y' array sets it), or set model.num_groups")
        if int(num_groups) < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups, self.latent_dim = int(num_groups), int(latent_dim)
        self.posterior = make_posterior(posterior, self.latent_dim)
        self.encoder = make_encoder(net if encoder is None else encoder, self.data_shape, self.latent_dim,
                                    self.posterior.heads)
        self.decoder = make_decoder(net if decoder is None else decoder, self.latent_dim, self.data_shape,
                                    self.likelihood.n_params)
        self.prior = OffsetPrior(make_prior(prior, self.latent_dim, self.data_shape))
        self.prior.setup(self)
        if group_scale == "learned":
            self.raw_group_scale = nn.Parameter(torch.tensor(inv_softplus(float(init_group_scale))))
        elif isinstance(group_scale, (int, float)) and group_scale > 0:
            self.register_buffer("raw_group_scale", torch.tensor(inv_softplus(float(group_scale))))
        else:
            raise ValueError(f"group_scale must be 'learned' or a positive number, got {group_scale!r}")
        self.group_loc = nn.Parameter(torch.zeros(self.num_groups, self.latent_dim))
        self.group_raw_scale = nn.Parameter(torch.full((self.num_groups, self.latent_dim), inv_softplus(0.1)))

    @property
    def group_scale(self) -> torch.Tensor:
        """The population scale ``tau`` of the offsets."""
        return F.softplus(self.raw_group_scale)

    def _groups(self, g, batch):
        if g is None:
            raise ValueError("the grouped model needs group labels g: [B] integers in 0..num_groups-1")
        g = g.to(self.device)
        if g.shape != (batch,) or g.is_floating_point() or bool(((g < 0) | (g >= self.num_groups)).any()):
            raise ValueError(f"group labels must be a [{batch}] integer tensor with values in "
                             f"0..{self.num_groups - 1}")
        return g

    # ----------------------------------------------------------------- Pyro programs
    def model(self, x=None, g=None, idx=None, num_data=None, n=None):
        """``u_g ~ N(0, tau^2)`` per group, ``z_n ~ p(z - u_{g_n})``, ``x_n ~ p(x | decoder(z_n))``."""
        self.register_params("model")
        g = self._groups(g, x.shape[0] if x is not None else n)
        with pyro.plate("groups", self.num_groups):
            tau = self.group_scale.expand(self.latent_dim)
            u = pyro.sample("u", IndependentNormal(torch.zeros_like(tau), tau))
        with self.data_plate(x, idx, num_data, n):
            z = pyro.sample("z", self.prior(context=u[..., g, :]))
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x=None, g=None, idx=None, num_data=None, n=None):
        """``u_g ~ N(m_g, s_g^2)``, ``z_n ~ q(z | x_n)``."""
        self.register_params("guide")
        if x is None:
            raise ValueError("the guide needs data x")
        self._groups(g, x.shape[0])
        with pyro.plate("groups", self.num_groups):
            pyro.sample("u", IndependentNormal(self.group_loc, F.softplus(self.group_raw_scale)))
        with self.data_plate(x, idx, num_data, n):
            return pyro.sample("z", self.posterior(*self.encoder(x)))

    # ----------------------------------------------------------------- fitted-model API
    def offsets(self) -> torch.Tensor:
        """Posterior means of the group offsets, ``[num_groups, latent_dim]``."""
        return self.group_loc.detach()

    @torch.no_grad()
    def encode(self, x):
        """The parameters of ``q(z | x)``: ``(loc, scale)``, each ``[B, latent_dim]``, for ``"normal"``
        (``self.posterior.heads`` lists them for any family)."""
        self.check_data(x, support=False)
        return self.encoder(x.to(self.device))

    @torch.no_grad()
    def corrected(self, x, g):
        """``E[z | x] - E[u_g]``: the latent representation with the group offset removed."""
        return self.posterior_mean(x) - self.offsets()[self._groups(g, x.shape[0])]

    def posterior_mean(self, x, labels=None):
        """``E_q[z | x]`` (the group offset included; :meth:`corrected` removes it)."""
        return self.posterior.mean(*self.encode(x))

    @torch.no_grad()
    def sample(self, n: int, g=None, mean: bool = True):
        """``n`` draws ``z ~ p(z - u_g)`` with ``u`` at its posterior mean, for groups ``g: [n]`` (default 0)."""
        g = torch.zeros(n, dtype=torch.long) if g is None else g
        u = self.offsets()
        model = pyro.poutine.condition(self.model, data={"u": u})
        draws = Predictive(model, num_samples=1, return_sites=("z", "x"))(g=g, n=n)
        return self.decode(draws["z"][0]) if mean else draws["x"][0]
