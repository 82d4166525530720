"""Stacked latents against a ground truth: a two-layer linear-Gaussian model has a closed-form marginal.

::

    z2 ~ N(0, I),  z1 | z2 ~ N(A z2 + a, S1),  x | z1 ~ N(W z1 + b, s^2 I)
    =>  x ~ N(W a + b, W (A A^T + S1) W^T + s^2 I)

A ``StackedVAE`` with linear parts is exactly this family, so the exact
log-likelihood of the fitted model follows from its weights.
"""

import math

import pyro
import pyro.optim
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_vae import fit
from pyro_vae.evaluate import iwae_log_likelihood
from pyro_vae.models import ConditionalNormal, StackedVAE, precision_merge


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest

D, D1, D2 = 8, 3, 2
S1, S = 0.5, 0.3


def marginal(w, b, a_mat, a, s1_var, s_var):
    cov = w @ (a_mat @ a_mat.T + torch.diag(s1_var)) @ w.T + s_var * torch.eye(w.shape[0], dtype=w.dtype)
    return torch.distributions.MultivariateNormal(w @ a + b, cov)


@pytest.fixture(scope="module")
def two_layer():
    g = torch.Generator().manual_seed(1)
    a_mat, a = torch.randn(D1, D2, generator=g), torch.randn(D1, generator=g)
    w, b = torch.randn(D, D1, generator=g), torch.randn(D, generator=g)

    def draw(n):
        z2 = torch.randn(n, D2, generator=g)
        z1 = z2 @ a_mat.T + a + S1 * torch.randn(n, D1, generator=g)
        return z1 @ w.T + b + S * torch.randn(n, D, generator=g)

    truth = marginal(*(t.double() for t in (w, b, a_mat, a)), torch.full((D1,), S1 ** 2, dtype=torch.float64),
                     S ** 2)
    return draw(4000), draw(2000), truth


def learned_marginal(vae):
    """The fitted model's exact marginal, from its weights."""
    stage = vae.stages[0]
    s1 = F.softplus(stage.raw_scale.detach().double()) + 1e-4
    lik = vae.likelihood
    s = F.softplus(lik.raw_scale.detach().double()) + lik.min_scale
    return marginal(vae.decoder.linear.weight.detach().double(), vae.decoder.linear.bias.detach().double(),
                    stage.linear.weight.detach().double(), stage.linear.bias.detach().double(), s1 ** 2, s ** 2)


def fit_linear(x, inference, epochs, lrd):
    vae = StackedVAE(D, [D1, D2], likelihood={"name": "normal", "scale": "shared"}, net="linear",
                     inference=inference)
    # Full batch with a decaying learning rate (ClippedAdam's per-step lrd) converges tightly.
    fit(vae, x, epochs=epochs, batch_size=None, optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": lrd}),
        progress=False)
    return vae


@pytest.fixture(scope="module")
def fitted(two_layer):
    pyro.set_rng_seed(0)
    return fit_linear(two_layer[0], "bottom-up", epochs=300, lrd=0.99)


def test_reference_marginal_matches_sampling(two_layer):
    """The closed form itself: the sample covariance of data drawn from the two-layer model matches it."""
    x_train, _, truth = two_layer
    emp = torch.cov(x_train.double().T)
    assert torch.allclose(emp, truth.covariance_matrix, atol=0.15 * truth.covariance_matrix.abs().max().item())
    assert torch.allclose(x_train.double().mean(0), truth.mean, atol=0.2)


def test_stacked_linear_recovers_marginal_likelihood(two_layer, fitted):
    _, x_test, truth = two_layer
    true_ll = truth.log_prob(x_test.double()).mean().item()
    learned = learned_marginal(fitted).log_prob(x_test.double()).mean().item()
    assert abs(learned - true_ll) <= 0.01 * abs(true_ll)
    # a model with the stage switched off (z1 ~ N(a, S1), no z2) is clearly worse: the check can fail
    broken = learned_marginal(fitted)
    cov = broken.covariance_matrix.clone()
    st = fitted.stages[0]
    w = fitted.decoder.linear.weight.detach().double()
    a_mat = st.linear.weight.detach().double()
    cov -= w @ a_mat @ a_mat.T @ w.T
    worse = torch.distributions.MultivariateNormal(broken.mean, cov).log_prob(x_test.double()).mean().item()
    assert abs(worse - true_ll) > 0.01 * abs(true_ll)


def test_ladder_inference_recovers_marginal_likelihood(two_layer):
    x_train, x_test, truth = two_layer
    pyro.set_rng_seed(0)
    vae = fit_linear(x_train, "ladder", epochs=300, lrd=0.99)
    true_ll = truth.log_prob(x_test.double()).mean().item()
    learned = learned_marginal(vae).log_prob(x_test.double()).mean().item()
    assert abs(learned - true_ll) <= 0.01 * abs(true_ll)


def test_iwae_converges_to_exact_marginal(two_layer, fitted):
    _, x_test, _ = two_layer
    exact = learned_marginal(fitted).log_prob(x_test.double()).mean().item()
    ks = [1, 10, 100, 1000]
    trained = [iwae_log_likelihood(fitted, x_test, num_samples=k, seed=0).mean for k in ks]
    assert all(v <= exact + 2e-3 for v in trained)  # a lower bound, up to Monte Carlo noise
    assert abs(trained[-1] - exact) < 5e-3

    # A deliberately poor (twice too wide) proposal: the bound starts far below and closes in as K grows.
    wide = StackedVAE(D, [D1, D2], likelihood={"name": "normal", "scale": "shared"}, net="linear", name="wide")
    wide.load_state_dict(fitted.state_dict())
    with torch.no_grad():
        for p in [wide.first_encoder.raw_scale] + [u.raw_scale for u in wide.up]:
            s = 2 * F.softplus(p)
            p.copy_(s + torch.log(-torch.expm1(-s)))
    gaps = [exact - iwae_log_likelihood(wide, x_test, num_samples=k, seed=0).mean for k in ks]
    assert gaps[0] > 1.0
    assert all(g1 > g2 for g1, g2 in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.02


def test_precision_merge_is_the_normalised_gaussian_product():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(5, generator=g), torch.randn(5, generator=g)
    s1, s2 = torch.rand(5, generator=g) + 0.1, torch.rand(5, generator=g) + 0.1
    loc, scale = precision_merge(m1, s1, m2, s2)
    z = torch.linspace(-4, 4, 4001)[:, None]
    log_prod = torch.distributions.Normal(m1, s1).log_prob(z) + torch.distributions.Normal(m2, s2).log_prob(z)
    dens = (log_prod - log_prod.logsumexp(0)).exp()  # normalised on the grid
    assert torch.allclose((dens * z).sum(0), loc, atol=1e-4)
    assert torch.allclose((dens * (z - loc) ** 2).sum(0).sqrt(), scale, atol=1e-3)


def test_conditional_normal_is_a_prior_that_takes_context():
    prior = ConditionalNormal(4, context_shape=(1, 2, 3), hidden=(8,))
    d = prior(context=torch.randn(7, 1, 2, 3))
    assert d.batch_shape == (7,) and d.event_shape == (4,)
    linear = ConditionalNormal(4, 3)
    loc, scale = linear.loc_scale(torch.randn(5, 2, 3))
    assert loc.shape == scale.shape == (5, 2, 4) and torch.allclose(scale, scale[0, 0].expand_as(scale))
    with pytest.raises(ValueError, match="context"):
        prior()


@pytest.mark.parametrize("inference", ["bottom-up", "ladder"])
def test_three_layer_sites_plates_and_api(inference):
    x = torch.rand(20, 1, 8, 8)
    vae = StackedVAE((1, 8, 8), [6, 4, 2], inference=inference, stage_hidden=(16,), net={"name": "mlp", "hidden": [16]})
    assert vae.latent_sites == ("z1", "z2", "z3")
    idx = torch.arange(5)
    guide_tr = poutine.trace(vae.guide).get_trace(x[:5], idx=idx, num_data=20)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x[:5], idx=idx, num_data=20)
    for name, dim in zip(vae.latent_sites, [6, 4, 2]):
        for tr in (guide_tr, model_tr):
            site = tr.nodes[name]
            assert site["value"].shape == (5, dim)
            assert site["scale"] == 4.0  # num_data / batch from the data plate
    assert model_tr.nodes["x"]["scale"] == 4.0
    result = fit(vae, x, epochs=2, batch_size=10, progress=False)
    assert math.isfinite(result.final_elbo)
    assert vae.sample(3).shape == (3, 1, 8, 8)
    assert [loc.shape[-1] for loc, _ in vae.encode(x)] == [6, 4, 2]
    assert vae.reconstruct(x[:2]).shape == (2, 1, 8, 8)


def test_vamp_prior_on_the_top_layer():
    vae = StackedVAE((1, 8, 8), [6, 3], prior={"name": "vamp", "n_components": 4},
                     net={"name": "mlp", "hidden": [16]}, stage_hidden=(8,))
    assert vae.prior().event_shape == (3,)
    before = vae.prior.pseudo_inputs.detach().clone()
    fit(vae, torch.rand(16, 1, 8, 8), epochs=2, progress=False)
    assert not torch.equal(before, vae.prior.pseudo_inputs.detach())  # the pseudo-inputs were trained


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="latent_dims"):
        StackedVAE(5, [])
    with pytest.raises(ValueError, match="inference"):
        StackedVAE(5, [3, 2], inference="top-down")
    with pytest.raises(ValueError, match="does not match"):
        StackedVAE(5, [3, 2]).check_data(torch.zeros(4, 6))
