"""Tests for pyro_vae.evaluate against closed forms: IWAE, exact chunking, ELBO decomposition.

Ground truth is probabilistic PCA (Tipping & Bishop 1999): with decoder weights
W (orthogonal columns), mean mu and noise s, ``p(x) = N(x; mu, W W^T + s^2 I)``
and the exact posterior is the diagonal Gaussian::

    M = W^T W + s^2 I,   q(z | x) = N(M^-1 W^T (x - mu), s^2 M^-1)

which a linear encoder represents exactly; with it every importance weight
equals p(x), so the IWAE estimate is exact for every K.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import VAE, Model, elbo
from pyro_vae.evaluate import (
    ELBODecomposition,
    IWAEResult,
    elbo_decomposition,
    iwae_log_likelihood,
    log_importance_weights,
)

D, d, N, NOISE = 6, 2, 200, 0.5
F64 = torch.float64


def inv_softplus(y):
    y = torch.as_tensor(y, dtype=F64)
    return y + torch.log(-torch.expm1(-y))


def ppca_problem(seed: int = 3):
    """Weights with orthogonal columns, a mean, data drawn from the model, and the exact log p(x) per point."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=F64))
    w = q * torch.tensor([2.0, 1.0], dtype=F64)
    mu = torch.randn(D, generator=g, dtype=F64)
    x = torch.randn(N, d, generator=g, dtype=F64) @ w.T + mu + NOISE * torch.randn(N, D, generator=g, dtype=F64)
    cov = w @ w.T + NOISE ** 2 * torch.eye(D, dtype=F64)
    return w, mu, x, torch.distributions.MultivariateNormal(mu, cov).log_prob(x)


def ppca_vae(w, mu, guide_shrink: float = 1.0) -> VAE:
    """A float64 linear VAE set to (W, mu, s) whose guide is the exact posterior, its scale / ``guide_shrink``."""
    vae = VAE(D, latent_dim=d, prior="normal", likelihood={"name": "normal", "scale": "shared"}, net="linear").double()
    m_inv = 1.0 / ((w * w).sum(0) + NOISE ** 2)  # M is diagonal as W has orthogonal columns
    post_w = m_inv[:, None] * w.T
    post_sd = NOISE * m_inv.sqrt()
    with torch.no_grad():
        vae.decoder.linear.weight.copy_(w)
        vae.decoder.linear.bias.copy_(mu)
        vae.likelihood.raw_scale.copy_(inv_softplus(NOISE - vae.likelihood.min_scale))
        vae.encoder.loc.weight.copy_(post_w)
        vae.encoder.loc.bias.copy_(-post_w @ mu)
        vae.encoder.raw_scale.copy_(inv_softplus(post_sd / guide_shrink - 1e-4))
    return vae


@pytest.fixture(scope="module")
def ppca():
    return ppca_problem()


@pytest.fixture(scope="module")
def digits_vae(digits):
    """An untrained MLP VAE on 300 digits (evaluation does not need a fitted model)."""
    pyro.set_rng_seed(1)
    vae = VAE((1, 8, 8), latent_dim=5, likelihood="bernoulli", net={"name": "mlp", "hidden": [64]})
    return vae, digits[0][:300]


def log_mean_exp(log_w):
    return log_w.logsumexp(-1) - math.log(log_w.shape[-1])


def paired(a, b):
    """Mean and standard error of the per-point differences a - b."""
    diff = (a - b).double()
    return diff.mean().item(), diff.std().item() / math.sqrt(diff.numel())


# --------------------------------------------------------------------------- IWAE against closed forms

@pytest.mark.parametrize("k", [1, 10, 100])
def test_iwae_is_exact_with_the_exact_posterior_as_guide(ppca, k):
    w, mu, x, exact = ppca
    result = iwae_log_likelihood(ppca_vae(w, mu), x, num_samples=k, seed=0)
    assert isinstance(result, IWAEResult) and result.per_point.shape == (N,)
    assert torch.allclose(result.per_point, exact, atol=1e-4, rtol=0)
    assert result.mean == pytest.approx(exact.mean().item(), abs=1e-4)
    assert result.stderr == pytest.approx(exact.std().item() / math.sqrt(N), rel=1e-3)


def test_iwae_bounds_tighten_with_k_under_a_poor_guide(ppca):
    """Guide scale / 10: ELBO < IWAE_10 < IWAE_1000 <= log p(x), each gap beyond 3 standard errors."""
    w, mu, x, exact = ppca
    vae = ppca_vae(w, mu, guide_shrink=10.0)
    log_w = log_importance_weights(vae, x, num_samples=1000, seed=0)
    elbo_pp, iwae10, iwae1000 = log_w.mean(1), log_mean_exp(log_w[:, :10]), log_mean_exp(log_w)
    # the K-sample estimators use the first K particles of the same streams
    assert torch.equal(iwae_log_likelihood(vae, x, num_samples=10, seed=0).per_point, iwae10)
    assert torch.equal(iwae_log_likelihood(vae, x, num_samples=1000, seed=0).per_point, iwae1000)
    for tighter, looser in [(iwae10, elbo_pp), (iwae1000, iwae10), (exact, iwae1000)]:
        gap, se = paired(tighter, looser)
        assert gap > 3 * se, (gap, se)


def test_iwae_is_exact_for_a_hierarchical_model_with_exact_guide():
    """Two latent sites (z2 -> z1 -> x), the guide's z2 depending on its z1 draw: traces cover both."""
    model = TwoLevelGaussian()
    x, exact = model.data(150)
    for k in (1, 7, 64):
        result = iwae_log_likelihood(model, x, num_samples=k, batch_size=64, particle_chunk=5, seed=k)
        assert torch.allclose(result.per_point, exact, atol=1e-6, rtol=0)
    dec = elbo_decomposition(model, x, num_samples=4, iwae_samples=4, seed=0)
    assert dec.unit_variance.shape == (4,)  # z1 and z2, two units each
    assert dec.iwae_gap == pytest.approx(0.0, abs=1e-5)  # exact guide: ELBO = log p(x) too
    with pytest.raises(ValueError, match="does not match"):  # the base class's check_data, before any trace
        iwae_log_likelihood(model, x[:, :3], num_samples=2)


class TwoLevelGaussian(Model):
    """``z2 ~ N(0, I)``, ``z1 ~ N(b z2, t^2 I)``, ``x ~ N(W z1 + mu, s^2 I)`` with its exact posterior as guide.

    Diagonal ``b`` and orthogonal columns of ``W`` keep the posterior factors
    ``p(z1 | x)`` and ``p(z2 | z1)`` diagonal. A model of one's own in plain Pyro: a
    :class:`~pyro_vae.Model` with buffers only, whose ``check_data`` and ``device`` are the base class's.
    """

    latent_sites = ("z1", "z2")

    def __init__(self, dx: int = 4, dz: int = 2, s: float = 0.3, t: float = 0.5):
        super().__init__((dx,), name="two_level")
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(dx, dz, generator=g, dtype=F64))
        self.register_buffer("w", q * torch.tensor([1.5, 0.8], dtype=F64))
        self.register_buffer("mu", torch.randn(dx, generator=g, dtype=F64))
        self.register_buffer("b", torch.tensor([1.2, 0.4], dtype=F64))
        self.s, self.t, self.dx, self.dz = s, t, dx, dz
        prior_var1 = self.b ** 2 + t ** 2
        self.register_buffer("var1", 1 / (1 / prior_var1 + (self.w ** 2).sum(0) / s ** 2))
        self.register_buffer("var2", 1 / (1 + self.b ** 2 / t ** 2))

    def data(self, n):
        g = torch.Generator().manual_seed(1)
        cov = self.w @ torch.diag(self.b ** 2 + self.t ** 2) @ self.w.T + self.s ** 2 * torch.eye(self.dx, dtype=F64)
        marginal = torch.distributions.MultivariateNormal(self.mu, cov)
        x = self.mu + torch.randn(n, self.dx, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
        return x, marginal.log_prob(x)

    def model(self, x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros_like(self.b), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(self.b * z2, self.t).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.w.T + self.mu, self.s).to_event(1), obs=x)

    def posterior_loc(self, x):
        """``E[z1 | x]``, exact: the guide's (the exact posterior's) location of ``z1``."""
        return self.var1 * ((x - self.mu) @ self.w) / self.s ** 2

    def guide(self, x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            loc1 = self.posterior_loc(x)
            z1 = pyro.sample("z1", dist.Normal(loc1, self.var1.sqrt()).to_event(1))
            pyro.sample("z2", dist.Normal(self.var2 * self.b * z1 / self.t ** 2, self.var2.sqrt()).to_event(1))

    def posterior_mean(self, x, labels=None):
        """``E[z1 | x]``, the layer ``x`` is generated from (as ``StackedVAE.posterior_mean``)."""
        return self.posterior_loc(x.to(self.device))


class GaussianMixture(Model):
    """``y ~ Cat(pi)``, ``x ~ N(mu_y, s^2 I)``, with the exact posterior ``p(y | x)`` as guide: a discrete latent."""

    latent_sites = ("y",)

    def __init__(self, k: int = 4, dx: int = 3, s: float = 0.8):
        super().__init__((dx,), name="mixture")
        g = torch.Generator().manual_seed(2)
        self.register_buffer("pi", torch.softmax(torch.randn(k, generator=g, dtype=F64), 0))
        self.register_buffer("mu", 2 * torch.randn(k, dx, generator=g, dtype=F64))
        self.s, self.dx = s, dx

    def joint(self, x):  # log p(x, y) for every y: [N, k]
        return self.pi.log() + dist.Normal(self.mu, self.s).to_event(1).log_prob(x[:, None])

    def model(self, x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi))
            pyro.sample("x", dist.Normal(self.mu[y], self.s).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=self.joint(x)))

    def posterior_mean(self, x, labels=None):
        """``E[onehot(y) | x] = p(y | x)``, ``[N, k]``: exact, as the guide is the posterior."""
        return self.joint(x.to(self.device)).softmax(-1)


def test_iwae_is_exact_for_a_discrete_latent_with_exact_guide():
    model = GaussianMixture()
    x = torch.randn(130, model.dx, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    exact = model.joint(x).logsumexp(-1)
    whole = iwae_log_likelihood(model, x, num_samples=9, seed=1)
    assert torch.allclose(whole.per_point, exact, atol=1e-10, rtol=0)
    chunked = iwae_log_likelihood(model, x, num_samples=9, batch_size=64, particle_chunk=2, seed=1)
    assert torch.equal(whole.per_point, chunked.per_point)
    # Monte Carlo KL: every draw's log weight is log p(x), so the ELBO is exact too
    dec = elbo_decomposition(model, x, num_samples=3, analytic_kl=False, seed=0)
    assert dec.elbo == pytest.approx(exact.mean().item(), abs=1e-8)
    assert dec.unit_variance.numel() == 0 and dec.active_units == 0  # no continuous units
    # closed-form KL(q(y | x) || p(y)) between categoricals
    post = model.joint(x).log_softmax(-1)
    kl = (post.exp() * (post - model.pi.log())).sum(-1).mean().item()
    assert elbo_decomposition(model, x, num_samples=3, seed=0).kl == pytest.approx(kl, rel=1e-10)


# --------------------------------------------------------------------------- exact chunking and seeds

@pytest.mark.parametrize("batch_size, particle_chunk", [(64, 1), (100, 7), (1, 13), (256, 5)])
def test_chunked_and_unchunked_evaluation_agree_exactly(digits_vae, batch_size, particle_chunk):
    vae, x = digits_vae
    x = x[:150]  # chunks of 64, 64 and 22 points (padded to 64): several noise tiles and a partial one
    whole = iwae_log_likelihood(vae, x, num_samples=13, batch_size=len(x), particle_chunk=13, seed=5)
    chunked = iwae_log_likelihood(vae, x, num_samples=13, batch_size=batch_size, particle_chunk=particle_chunk, seed=5)
    assert torch.equal(whole.per_point, chunked.per_point)
    assert whole.mean == chunked.mean


def test_the_seed_sets_the_draws(digits_vae):
    vae, x = digits_vae
    x = x[:100]
    a = iwae_log_likelihood(vae, x, num_samples=5, seed=1).per_point
    assert not torch.equal(a, iwae_log_likelihood(vae, x, num_samples=5, seed=2).per_point)
    pyro.set_rng_seed(7)
    b = iwae_log_likelihood(vae, x, num_samples=5).per_point
    pyro.set_rng_seed(7)
    assert torch.equal(b, iwae_log_likelihood(vae, x, num_samples=5, batch_size=64, particle_chunk=2).per_point)


def test_iwae_uses_pyro_plates_not_vae_attributes(ppca):
    """Sites outside the data plate have no per-point weight: refused with the site's name."""

    class GlobalLatent(VAE):
        def model(self, x=None, idx=None, num_data=None, n=None):
            pyro.sample("w", dist.Normal(torch.zeros((), dtype=F64), 1.0))
            return super().model(x, idx, num_data, n)

        def guide(self, x=None, idx=None, num_data=None, n=None):
            pyro.sample("w", dist.Normal(torch.zeros((), dtype=F64), 1.0))
            return super().guide(x, idx, num_data, n)

    w, mu, x, _ = ppca
    vae = GlobalLatent(D, latent_dim=d, likelihood={"name": "normal", "scale": "shared"}, net="linear").double()
    with pytest.raises(ValueError, match="'w' is outside the 'data' plate"):
        iwae_log_likelihood(vae, x, num_samples=2)


def test_evaluation_leaves_training_mode_and_rng_alone(digits_vae):
    vae, x = digits_vae
    vae.train()
    state = torch.get_rng_state()
    iwae_log_likelihood(vae, x[:64], num_samples=3, seed=0)
    assert vae.training and torch.equal(state, torch.get_rng_state())


# --------------------------------------------------------------------------- ELBO decomposition

def test_elbo_agrees_with_recon_minus_kl(digits_vae):
    vae, x = digits_vae
    dec = elbo_decomposition(vae, x, num_samples=50, seed=0)
    assert isinstance(dec, ELBODecomposition) and dec.kl_method == "analytic"
    assert dec.elbo == pytest.approx(dec.recon - dec.kl)
    mc = elbo(vae, x, num_particles=50)
    # Monte Carlo error of each estimate: within-point spread of the log weights over N * 50 draws
    log_w = log_importance_weights(vae, x, num_samples=50, seed=1)
    se = math.sqrt(log_w.var(1).mean().item() / log_w.numel())
    assert abs(mc - dec.elbo) < 4 * math.sqrt(2) * se + 1e-3, (mc, dec.elbo, se)


def test_analytic_and_monte_carlo_kl_agree_for_the_standard_normal_prior(ppca):
    w, mu, x, _ = ppca
    vae = ppca_vae(w, mu, guide_shrink=3.0)
    analytic = elbo_decomposition(vae, x, num_samples=1, seed=0)
    mc = elbo_decomposition(vae, x, num_samples=400, analytic_kl=False, seed=0)
    assert (analytic.kl_method, mc.kl_method) == ("analytic", "monte-carlo")
    # reference: closed-form KL of N(loc, diag(sd^2)) from N(0, I), and the spread of log q - log p under q
    loc, sd = vae.encode(x)
    kl = 0.5 * (loc ** 2 + sd ** 2 - 1 - 2 * sd.log()).sum(-1)
    assert analytic.kl == pytest.approx(kl.mean().item(), rel=1e-10)
    eps = torch.randn(400, *loc.shape, dtype=F64)
    z = loc + sd * eps
    samples = (-0.5 * eps ** 2 - sd.log() + 0.5 * z ** 2).sum(-1)
    se = math.sqrt(samples.var(0).mean().item() / samples.numel())
    assert abs(mc.kl - analytic.kl) < 4 * se, (mc.kl, analytic.kl, se)
    assert mc.recon - mc.kl == pytest.approx(mc.elbo)


def test_mixture_prior_falls_back_to_monte_carlo_kl(digits):
    vae = VAE((1, 8, 8), latent_dim=3, prior="mog", likelihood="bernoulli", net={"name": "mlp", "hidden": [16]})
    dec = elbo_decomposition(vae, digits[0][:64], num_samples=3, seed=0)
    assert dec.kl_method == "monte-carlo" and math.isfinite(dec.kl)


def test_active_units_count_posterior_mean_variance_across_data(ppca):
    w, mu, x, _ = ppca
    vae = ppca_vae(w, mu)
    dec = elbo_decomposition(vae, x, num_samples=2, seed=0)
    post_mean = vae.encode(x)[0]
    assert torch.allclose(dec.unit_variance, post_mean.var(0), rtol=1e-10)
    assert dec.active_units == 2
    with torch.no_grad():
        vae.encoder.loc.weight[1] = 0.0  # unit 1 ignores x: its posterior mean is constant
    assert elbo_decomposition(vae, x, num_samples=2, seed=0).active_units == 1


def test_decomposition_reports_the_iwae_gap(digits_vae):
    vae, x = digits_vae
    dec = elbo_decomposition(vae, x, num_samples=20, iwae_samples=30, seed=3, particle_chunk=8)
    assert dec.iwae == iwae_log_likelihood(vae, x, num_samples=30, seed=3).mean
    assert dec.iwae_gap == pytest.approx(dec.iwae - dec.elbo) and dec.iwae_gap > 0
    assert elbo_decomposition(vae, x[:64], num_samples=2).iwae is None


# --------------------------------------------------------------------------- the reduced log densities

def _log_prob_cases():
    g = torch.Generator().manual_seed(0)
    loc, scale = torch.randn(7, 3, generator=g), torch.rand(7, 3, generator=g) + 0.3
    logits = torch.randn(7, 1, 2, 2, generator=g)
    grey = torch.rand(7, 1, 2, 2, generator=g)
    z = torch.randn(5, 7, 3, generator=g)
    return {
        "normal-expanded": (lambda: dist.Normal(loc, scale).to_event(1).expand([5, 7]), z),
        "normal-value-broadcasts": (lambda: dist.Normal(loc, scale).to_event(1), z),
        "normal-standard": (lambda: dist.Normal(torch.zeros(3), 1.0).to_event(1).expand([5, 7]), z),
        "normal-no-event": (lambda: dist.Normal(loc, scale), z),
        "normal-broadcast-event": (lambda: dist.Normal(torch.zeros(2, 1), torch.ones(1, 4) * 2).to_event(2).expand([6]),
                                   torch.randn(6, 2, 4, generator=g)),
        "normal-scale-larger-than-value": (lambda: dist.Normal(0.0, scale.expand(5, 7, 3)).to_event(1), z[0]),
        "bernoulli-observed": (lambda: dist.Bernoulli(logits=logits).to_event(3).expand([4, 7]), grey),
        "bernoulli-probs": (lambda: dist.Bernoulli(probs=torch.sigmoid(logits)).to_event(2), grey),
        "bernoulli-no-event": (lambda: dist.Bernoulli(logits=logits), grey),
    }


@pytest.mark.parametrize("case", list(_log_prob_cases()))
def test_reduced_log_prob_equals_the_distribution_log_prob(case):
    from pyro_vae.importance import _log_prob

    make, value = _log_prob_cases()[case]
    with pyro.validation_enabled(False):  # grey values for the Bernoulli, as the likelihood allows
        fn = make()
        ours, reference = _log_prob(fn, value), fn.log_prob(value)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, rtol=1e-6, atol=1e-5)
