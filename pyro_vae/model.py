"""The VAE as a pair of Pyro programs.

::

    model:  z_n ~ p(z),  x_n ~ p(x | decoder(z_n))      for n in plate("data", N)
    guide:  z_n ~ N(encoder(x_n))

Prior, likelihood and networks are objects (or config names resolved once in
``__init__``), so every combination is one argument away (Kingma & Welling 2014).
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.params.param_store import param_with_module_name
from torch import nn

from .distributions import IndependentNormal
from .likelihoods import make_likelihood
from .nets import make_decoder, make_encoder
from .priors import make_prior

__all__ = ["VAE"]

# Counts parameter and submodule registrations on every nn.Module in the process, so that the
# VAE's per-program parameter lists (VAE._register) are rebuilt only when a module changed.
_STRUCTURE_VERSION = [0]


def _structure_changed(module, name, value) -> None:
    _STRUCTURE_VERSION[0] += 1


nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
nn.modules.module.register_module_module_registration_hook(_structure_changed)


class VAE(nn.Module):
    """A variational autoencoder whose ``model`` and ``guide`` are Pyro programs.

    Args:
        data_shape: shape of one data point, e.g. ``(1, 28, 28)`` or ``(2000,)``.
        latent_dim: size of ``z``.
        prior: a :class:`~pyro_vae.priors.Prior`, a config name (``"normal"``,
            ``"laplace"``, ``"student-t"``, ``"mog"``, ``"vamp"``) or a dict
            ``{"name": ..., **options}``.
        likelihood: a :class:`~pyro_vae.likelihoods.Likelihood` or its name/dict
            (``"bernoulli"``, ``"normal"``, ``"negative-binomial"``, ...).
        net: encoder and decoder family by name/dict (``"mlp"``, ``"conv"``,
            ``"linear"``), e.g. ``{"name": "mlp", "hidden": [400]}``.
        encoder, decoder: modules (or specs) overriding ``net`` for one side;
            ``encoder(x) -> (loc, scale)``, ``decoder(z) -> [*b, n_params, *data_shape]``.
        name: prefix of the parameters in Pyro's param store.

    Call ``model(x, idx, num_data)`` / ``guide(x, idx, num_data)`` with a
    minibatch ``x: [B, *data_shape]``, its indices ``idx: [B]`` in the full data
    set and the full size ``num_data``: the data plate scales the ELBO by
    ``num_data / B`` (Pyro's ``plate(..., subsample=idx)``).
    """

    latent_sites = ("z",)
    max_plate_nesting = 1  # the data plate; objectives use it instead of guessing
    guide_parts = ("encoder",)  # the guide registers these parameters, the model every other one

    def __init__(self, data_shape, latent_dim: int = 10, prior="normal", likelihood="bernoulli", net="mlp",
                 encoder=None, decoder=None, name: str = "vae"):
        super().__init__()
        self.data_shape = (int(data_shape),) if isinstance(data_shape, int) else tuple(int(s) for s in data_shape)
        if not self.data_shape or min(self.data_shape) < 1:
            raise ValueError(f"data_shape must be a non-empty shape of positive sizes, got {data_shape!r}")
        self.latent_dim = int(latent_dim)
        self.name = name
        self.likelihood = make_likelihood(likelihood)
        self.likelihood.setup(self.data_shape)
        self.encoder = make_encoder(net if encoder is None else encoder, self.data_shape, self.latent_dim)
        self.decoder = make_decoder(net if decoder is None else decoder, self.latent_dim, self.data_shape,
                                    self.likelihood.n_params)
        self.prior = make_prior(prior, self.latent_dim, self.data_shape)
        self.prior.setup(self)

    # ----------------------------------------------------------------- Pyro programs
    def _plate(self, x, idx, num_data, n):
        if x is not None:
            if x.shape[1:] != self.data_shape:
                raise ValueError(self._shape_message(x))
            batch = x.shape[0]
        elif n is not None:
            batch = int(n)
        else:
            raise ValueError("model needs data x, or n (the number of points to sample) when x is None")
        size = batch if num_data is None else int(num_data)
        if idx is None:
            idx = torch.arange(batch, device=self._device())
        return pyro.plate("data", size, subsample=idx, device=idx.device)  # a device spares Pyro a probe tensor

    def _register(self, program: str) -> None:
        """``pyro.param`` for the parameters this program owns, under the names ``pyro.module(self.name, self)`` gives.

        The guide registers ``guide_parts`` (top-level submodule or parameter
        names), the model every other trainable parameter, as Pyro's own VAE
        example registers the decoder in the model and the encoder in the guide.
        Each parameter is then one param site per step instead of two; with
        ``pyro.module(name, self)`` in both programs that doubling was 7% of a
        tiny network's step. Frozen parameters (``requires_grad=False``) are left out.

        Which parameter belongs to which program is worked out once and kept
        until any ``nn.Module`` registers a parameter or submodule (torch's
        global registration hooks count those) or ``name`` changes: walking
        the module tree twice a step was ~4% of a tiny network's step.
        """
        key = (_STRUCTURE_VERSION[0], self.name)
        owners = self.__dict__.get("_param_owners")
        if owners is None or owners[0] != key:
            sites: dict = {"model": [], "guide": []}
            for name, p in self.named_parameters():
                part = "guide" if name.partition(".")[0] in self.guide_parts else "model"
                sites[part].append((param_with_module_name(self.name, name), p))
            owners = self.__dict__["_param_owners"] = (key, sites)  # not an nn.Module attribute
        for name, p in owners[1][program]:
            if p.requires_grad:
                pyro.param(name, p)

    def model(self, x=None, idx=None, num_data=None, n=None):
        """``z ~ p(z)``, ``x ~ p(x | decoder(z))`` for each point of the minibatch."""
        self._register("model")
        with self._plate(x, idx, num_data, n):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x=None, idx=None, num_data=None, n=None):
        """``z ~ q(z | x) = N(encoder(x))``."""
        self._register("guide")
        if x is None:
            raise ValueError("the guide needs data x")
        with self._plate(x, idx, num_data, n):
            loc, scale = self.encoder(x)
            return pyro.sample("z", IndependentNormal(loc, scale))

    # ----------------------------------------------------------------- fitted-model API
    @torch.no_grad()
    def encode(self, x):
        """Posterior parameters ``(loc, scale)`` of ``q(z|x)``, each ``[B, latent_dim]``."""
        self.check_data(x, support=False)
        return self.encoder(x.to(self._device()))

    @torch.no_grad()
    def decode(self, z, mean: bool = True):
        """``E[x | z]`` (``mean=True``) or a draw ``x ~ p(x | z)``; ``z: [*b, latent_dim] -> [*b, *data_shape]``."""
        params = self.decoder(z.to(self._device()))
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def reconstruct(self, x, sample: bool = False):
        """Decode the posterior mean (default), or draw ``z ~ q(z|x)``, ``x' ~ p(x|z)`` with Pyro's ``Predictive``."""
        if not sample:
            return self.decode(self.encode(x)[0])
        self.check_data(x, support=False)
        pred = Predictive(poutine.uncondition(self.model), guide=self.guide, num_samples=1, return_sites=("x",))
        return pred(x.to(self._device()))["x"][0]

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True):
        """``n`` draws from the generative model: ``E[x|z]`` per draw (``mean=True``) or ``x`` itself."""
        samples = Predictive(self.model, num_samples=1, return_sites=("z", "x"))(n=n)
        return self.decode(samples["z"][0]) if mean else samples["x"][0]

    # ----------------------------------------------------------------- input checks
    def check_data(self, x, support: bool = True) -> None:
        """Raise ``ValueError`` naming the problem if ``x`` cannot be modelled by this VAE."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor of shape [N, {', '.join(map(str, self.data_shape))}], "
                            f"got {type(x).__name__}; convert with torch.as_tensor(x, dtype=torch.float32)")
        if x.dim() < 1 or x.shape[1:] != self.data_shape:
            raise ValueError(self._shape_message(x))
        if x.shape[0] == 0:
            raise ValueError("data is empty (0 rows)")
        # min and max propagate NaN and show +-Inf: one pass over clean data, the full scan only to report
        if x.is_floating_point() and not all(map(math.isfinite, map(float, torch.aminmax(x)))):
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                bad = (~finite).reshape(x.shape[0], -1).any(1).nonzero()[:, 0]
                n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
                raise ValueError(f"data contains {n_nan} NaN and {n_inf} infinite values in {len(bad)} rows "
                                 f"(first at row {int(bad[0])}); remove or impute them before fitting")
        if support:
            self.likelihood.check_support(x)

    def _shape_message(self, x) -> str:
        want = list(self.data_shape)
        msg = (f"data of shape {list(x.shape)} does not match the model: expected [N, "
               f"{', '.join(map(str, want))}] (data_shape={tuple(want)}).")
        if x.dim() >= 1 and math.prod(x.shape[1:]) == math.prod(want):
            msg += f" Reshape it with x.reshape(-1, {', '.join(map(str, want))})."
        else:
            msg += f" Build the VAE with data_shape={tuple(x.shape[1:])} for this data."
        return msg

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")
