"""A plugin: a model type and a prior of your own, written in plain Pyro, used from the command line.

Factor analysis as a Pyro model, with an amortised guide::

    model:  z_n ~ N(0, I),   x_n ~ N(W z_n + mu, diag(psi))
    guide:  z_n ~ N(A x_n + b, diag(s^2))

and a learned-normal prior ``p(z) = N(m, diag(exp(2 l)))`` for any model type.
Importing this module registers both; ``--plugin`` imports it before the config
is read, and the run stores it, so ``evaluate`` and ``--resume`` find them again::

    pyro-vae train --plugin examples/my_components.py --model factor-analysis --data x.npy \\
        --preprocess standardize --latent-dim 2 --out runs/fa
    pyro-vae evaluate runs/fa --iwae-samples 1000 --json
    pyro-vae train --plugin examples/my_components.py --prior learned-normal --out runs/ln
    python examples/my_components.py --smoke     # the same from Python, checked against the exact marginal

Factor analysis has a closed-form marginal, ``x ~ N(mu, W W^T + diag(psi))``
(:meth:`FactorAnalysis.log_marginal`), so the importance-weighted estimate of a
fitted model can be checked exactly.
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import Model, Prior, register_model, register_prior


class LearnedNormal(Prior):
    """``p(z) = N(m, diag(exp(2 l)))`` with ``m`` and ``l`` learned by SVI with the rest of the model."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, context=None):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


class FactorAnalysis(Model):
    """Factor analysis ``x = W z + mu + e``, ``e ~ N(0, diag(psi))``, with a linear amortised guide.

    Args:
        data_shape: ``(D,)``.
        latent_dim: number of factors.
        name: prefix of the parameters in Pyro's param store.
    """

    latent_sites = ("z",)

    def __init__(self, data_shape, latent_dim: int = 2, name: str = "fa"):
        super().__init__(data_shape, name=name)
        if len(self.data_shape) != 1:
            raise ValueError(f"factor analysis models vectors: data_shape must be (D,), got {self.data_shape}")
        d = self.data_shape[0]
        self.latent_dim = int(latent_dim)
        self.loading = nn.Linear(self.latent_dim, d)  # W, mu
        self.raw_psi = nn.Parameter(torch.zeros(d))
        self.encoder = nn.Linear(d, 2 * self.latent_dim)  # A, b and the raw scales

    def psi(self) -> torch.Tensor:
        return F.softplus(self.raw_psi) + 1e-4

    def model(self, x=None, idx=None, num_data=None, n=None):
        pyro.module(self.name, self)
        with self.data_plate(x, idx, num_data, n):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent_dim, device=self.device), 1.0).to_event(1))
            return pyro.sample("x", dist.Normal(self.loading(z), self.psi().sqrt()).to_event(1), obs=x)

    def guide(self, x=None, idx=None, num_data=None, n=None):
        pyro.module(self.name, self)
        with self.data_plate(x, idx, num_data, n):
            loc, raw = self.encoder(x).chunk(2, -1)
            return pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))

    @torch.no_grad()
    def posterior_mean(self, x, labels=None):
        return self.encoder(x.to(self.device)).chunk(2, -1)[0]

    @torch.no_grad()
    def log_marginal(self, x) -> torch.Tensor:
        """The exact ``log p(x)`` per point: ``N(x; mu, W W^T + diag(psi))``."""
        w, mu = self.loading.weight.double(), self.loading.bias.double()
        cov = w @ w.T + torch.diag(self.psi().double())
        return dist.MultivariateNormal(mu, cov).log_prob(x.double().to(mu.device))


register_prior("learned-normal", LearnedNormal, doc="N(m, diag(s^2)) with m and s learned")
register_model("factor-analysis", FactorAnalysis, doc="factor analysis in plain Pyro, a linear amortised guide")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: fewer epochs")
    args = parser.parse_args(argv)
    from sklearn.datasets import load_wine

    from pyro_vae import fit, iwae_log_likelihood, make_optimizer

    x = torch.tensor(load_wine().data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    fa = FactorAnalysis((x.shape[1],), latent_dim=2)
    fit(fa, x, epochs=300 if args.smoke else 2000, batch_size=None, optim=make_optimizer("adam", lr=0.03),
        progress=False)
    exact = fa.log_marginal(x).mean().item()
    iwae = iwae_log_likelihood(fa, x, num_samples=2000, seed=0).mean
    print(f"factor analysis on wine (standardised, 2 factors): exact log p(x) {exact:.4f}, "
          f"IWAE-2000 {iwae:.4f} nats per point")
    assert -0.1 < iwae - exact < 0.05, "the IWAE estimate is off the exact marginal"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
