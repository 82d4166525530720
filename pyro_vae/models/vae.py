"""The VAE as a pair of Pyro programs.

::

    model:  z_n ~ p(z),  x_n ~ p(x | decoder(z_n))      for n in plate("data", N)
    guide:  z_n ~ q(z | encoder(x_n))                   q: the posterior family, N(loc, scale) by default

Prior, posterior, likelihood and networks are objects (or config names resolved
once in ``__init__``), so every combination is one argument away (Kingma & Welling 2014).
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive

from ..nets import make_decoder, make_encoder
from ..posteriors import make_posterior
from ..priors import make_prior
from .base import Model

__all__ = ["VAE"]


class VAE(Model):
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
        posterior: the variational family q(z | x): a :class:`~pyro_vae.posteriors.Posterior` or its
            name/dict (``"normal"``, ``"fullrank"``, ``{"name": "iaf", "n_flows": 4}``, ...); it sizes the encoder.
        encoder, decoder: modules (or specs) overriding ``net`` for one side;
            ``encoder(x) -> the posterior's parameters`` (``(loc, scale)`` for ``"normal"``),
            ``decoder(z) -> [*b, n_params, *data_shape]``.
        name: prefix of the parameters in Pyro's param store.

    Call ``model(x, idx, num_data)`` / ``guide(x, idx, num_data)`` with a
    minibatch ``x: [B, *data_shape]``, its indices ``idx: [B]`` in the full data
    set and the full size ``num_data``: the data plate scales the ELBO by
    ``num_data / B`` (Pyro's ``plate(..., subsample=idx)``).
    """

    latent_sites = ("z",)
    guide_parts = ("encoder", "posterior")  # the guide registers these parameters, the model every other one

    def __init__(self, data_shape, latent_dim: int = 10, prior="normal", likelihood="bernoulli", net="mlp",
                 encoder=None, decoder=None, name: str = "vae", posterior="normal"):
        super().__init__(data_shape, likelihood, name)
        self.latent_dim = int(latent_dim)
        self.posterior = make_posterior(posterior, self.latent_dim)
        self.encoder = make_encoder(net if encoder is None else encoder, self.data_shape, self.latent_dim,
                                    self.posterior.heads)
        self.decoder = make_decoder(net if decoder is None else decoder, self.latent_dim, self.data_shape,
                                    self.likelihood.n_params)
        self.prior = make_prior(prior, self.latent_dim, self.data_shape)
        self.prior.setup(self)

    @classmethod
    def from_config(cls, data_shape, latent_dim=10, prior="normal", likelihood="bernoulli", net="mlp", **options):
        """As ``Model.from_config``, the prior drawn before the networks: a config's run gives the same
        weights as it did before model types shared one builder (a learnable prior draws random numbers)."""
        prior = make_prior(prior, int(latent_dim), tuple(data_shape))
        return cls(tuple(data_shape), latent_dim, prior=prior, likelihood=likelihood, net=net, **options)

    # ----------------------------------------------------------------- Pyro programs
    def model(self, x=None, idx=None, num_data=None, n=None):
        """``z ~ p(z)``, ``x ~ p(x | decoder(z))`` for each point of the minibatch."""
        self.register_params("model")
        with self.data_plate(x, idx, num_data, n):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x=None, idx=None, num_data=None, n=None):
        """``z ~ q(z | x) = posterior(*encoder(x))``."""
        self.register_params("guide")
        if x is None:
            raise ValueError("the guide needs data x")
        with self.data_plate(x, idx, num_data, n):
            return pyro.sample("z", self.posterior(*self.encoder(x)))

    # ----------------------------------------------------------------- fitted-model API
    @torch.no_grad()
    def encode(self, x):
        """The posterior's parameters for ``x``: ``(loc, scale)`` of ``q(z|x)`` for ``"normal"``, each
        ``[B, latent_dim]`` (``self.posterior.heads`` lists them for any family)."""
        self.check_data(x, support=False)
        return self.encoder(x.to(self.device))

    def posterior_mean(self, x, labels=None):
        """``E_q[z | x]``: the encoder's ``loc`` for the Gaussian families, a seeded Monte Carlo mean for a flow."""
        return self.posterior.mean(*self.encode(x))

    @torch.no_grad()
    def reconstruct(self, x, labels=None, sample: bool = False):
        """Decode the posterior mean (default), or draw ``z ~ q(z|x)``, ``x' ~ p(x|z)`` with Pyro's ``Predictive``."""
        if not sample:
            return self.decode(self.posterior_mean(x))
        self.check_data(x, support=False)
        pred = Predictive(poutine.uncondition(self.model), guide=self.guide, num_samples=1, return_sites=("x",))
        return pred(x.to(self.device))["x"][0]

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True):
        """``n`` draws from the generative model: ``E[x|z]`` per draw (``mean=True``) or ``x`` itself."""
        samples = Predictive(self.model, num_samples=1, return_sites=("z", "x"))(n=n)
        return self.decode(samples["z"][0]) if mean else samples["x"][0]
