"""Ground truth: a linear VAE with a Normal likelihood is probabilistic PCA (Tipping & Bishop 1999).

Its marginal is closed form, ``p(x) = N(x; mu, W W^T + s^2 I)``, and so is the
maximum-likelihood solution: with sample covariance ``S = U diag(l) U^T``,
``s^2 = mean(l_{d+1..D})`` and ``W = U_d (diag(l_{1..d}) - s^2 I)^{1/2}``.
"""

import pyro.optim
import pytest
import torch
import torch.nn.functional as F

from pyro_vae import VAE, elbo, fit

D, d, N = 10, 2, 5000


def gaussian_ll(x, mu, cov):
    return torch.distributions.MultivariateNormal(mu, cov).log_prob(x).mean().item()


@pytest.fixture(scope="module")
def ppca_data():
    g = torch.Generator().manual_seed(1)
    w = 2 * torch.randn(D, d, generator=g)
    mu = torch.randn(D, generator=g)
    x = torch.randn(N, d, generator=g) @ w.T + mu + 0.5 * torch.randn(N, D, generator=g)
    return x


def ppca_max_log_likelihood(x):
    x = x.double()
    m = x.mean(0)
    s = (x - m).T @ (x - m) / x.shape[0]
    evals, evecs = torch.linalg.eigh(s)
    evals, evecs = evals.flip(0), evecs.flip(1)
    s2 = evals[d:].mean()
    w = evecs[:, :d] * (evals[:d] - s2).sqrt()
    return gaussian_ll(x, m, w @ w.T + s2 * torch.eye(D, dtype=x.dtype))


def test_closed_form_mle_beats_perturbations(ppca_data):
    """The reference itself: no nearby pPCA model has a higher likelihood."""
    x = ppca_data.double()
    best = ppca_max_log_likelihood(x)
    m = x.mean(0)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(D, d, generator=g, dtype=x.dtype)
        assert gaussian_ll(x, m, w @ w.T + 0.3 * torch.eye(D, dtype=x.dtype)) < best


def test_linear_vae_recovers_ppca_maximum_likelihood(ppca_data):
    x = ppca_data
    vae = VAE(D, latent_dim=d, prior="normal", likelihood={"name": "normal", "scale": "shared"}, net="linear")
    # Full batch and a decaying learning rate (ClippedAdam's per-step lrd) to converge tightly.
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.997})
    fit(vae, x, epochs=1000, batch_size=None, optim=optim, progress=False)

    w = vae.decoder.linear.weight.detach().double()
    mu = vae.decoder.linear.bias.detach().double()
    lik = vae.likelihood
    s = (F.softplus(lik.raw_scale.detach().double()) + lik.min_scale).item()
    learned = gaussian_ll(x.double(), mu, w @ w.T + s**2 * torch.eye(D, dtype=torch.float64))
    best = ppca_max_log_likelihood(x)
    # (a) the learned model's exact marginal likelihood is within 0.5% of the maximum
    assert abs(learned - best) <= 0.005 * abs(best)
    # (b) and the ELBO (averaged over many particles) is within 1% of it, from below
    final_elbo = elbo(vae, x, num_particles=100)
    assert abs(final_elbo - best) <= 0.01 * abs(best)
    assert final_elbo <= learned + 0.01
