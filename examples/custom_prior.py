"""Bring your own prior: a learnable diagonal Gaussian in a few lines.

A prior is a ``Prior`` module whose ``forward`` returns a Pyro distribution
over ``[latent_dim]``; its parameters are fitted with the VAE. Registering it
makes it a config name like the built-in ones.

    python examples/custom_prior.py [--smoke]
"""

import sys

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import VAE, elbo, fit, register_prior
from pyro_vae.data import load_dataset
from pyro_vae.priors import Prior


class LearnedNormal(Prior):
    """``p(z) = N(m, diag(s^2))`` with learned ``m`` and ``s`` (an empirical-Bayes prior)."""

    def __init__(self, latent_dim: int, init_scale: float = 1.0):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.full((latent_dim,), float(init_scale)).log())

    def forward(self, context=None):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


register_prior("learned-normal", LearnedNormal, doc="diagonal Gaussian with learned mean and scale")

if __name__ == "__main__":
    smoke = "--smoke" in sys.argv
    data = load_dataset("digits")
    # By name (as a config file would say it) or as an object: the same thing.
    vae = VAE(data.data_shape, latent_dim=6, prior={"name": "learned-normal", "init_scale": 2.0})
    assert isinstance(vae.prior, LearnedNormal)
    start_scale = vae.prior.log_scale.exp().clone()
    before = elbo(vae, data.test)
    fit(vae, data.train, epochs=2 if smoke else 30, progress=not smoke)
    after = elbo(vae, data.test)
    print(f"test ELBO {before:.1f} -> {after:.1f}; learned prior scales {vae.prior.log_scale.exp().detach().numpy().round(2)}")
    assert after > before, "training did not improve the test ELBO"
    assert not torch.equal(start_scale, vae.prior.log_scale.exp()), "the prior's parameters were not fitted"
