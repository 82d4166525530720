"""Tests for pyro_vae.diagnostics: InferenceData layout and values, ArviZ functions, PSIS k-hat on pPCA."""

import json
import math

import arviz as az
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyro_vae import VAE  # noqa: E402
from pyro_vae.diagnostics import PSISResult, plot_khat, psis_diagnostic, to_inference_data  # noqa: E402
from pyro_vae.evaluate import iwae_log_likelihood, log_importance_weights  # noqa: E402
from test_evaluate import GaussianMixture, TwoLevelGaussian, ppca_problem, ppca_vae  # noqa: E402

N_OBS, DRAWS, LATENT = 40, 6, 3


@pytest.fixture(scope="module")
def small(digits):
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=LATENT, likelihood="bernoulli", net={"name": "mlp", "hidden": [32]})
    history = [{"epoch": 1, "train_elbo": -50.0, "seconds": 0.1}, {"epoch": 2, "train_elbo": -45.5, "val_elbo": -46.0}]
    x = digits[0][:N_OBS]
    idata = to_inference_data(vae, x, num_samples=DRAWS, history=history, batch_size=16, particle_chunk=4, seed=0)
    return vae, x, history, idata


@pytest.fixture(scope="module")
def ppca():
    return ppca_problem()


def test_inference_data_groups_dims_and_sizes(small):
    _, x, history, idata = small
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood", "observed_data",
                                   "sample_stats"}
    chains = 2
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "obs", "latent")
    assert z.shape == (chains, DRAWS // chains, N_OBS, LATENT)
    assert list(z.coords["obs"].values) == list(range(N_OBS))
    assert list(z.coords["latent"].values) == list(range(LATENT))
    pp = idata.posterior_predictive["x"]
    assert pp.dims == ("chain", "draw", "obs", "feature") and pp.shape == (chains, DRAWS // chains, N_OBS, 64)
    assert set(np.unique(pp.values)) <= {0.0, 1.0}  # Bernoulli draws
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "obs")
    obs = idata.observed_data["x"]
    assert obs.dims == ("obs", "feature")
    np.testing.assert_array_equal(obs.values, x.reshape(N_OBS, -1).numpy())
    assert json.loads(idata.sample_stats.attrs["training_history"]) == history


def test_log_likelihood_matches_the_decoder_at_the_posterior_draws(small):
    vae, x, _, idata = small
    z = torch.from_numpy(idata.posterior["z"].values)  # [chain, draw, obs, latent]
    with torch.no_grad():
        expected = vae.likelihood(vae.decoder(z)).log_prob(x)
    np.testing.assert_allclose(idata.log_likelihood["x"].values, expected.numpy(), rtol=1e-5, atol=1e-4)


def test_posterior_draws_are_the_iwae_draws(small):
    """Same seed, same streams: the log weights stored equal those the IWAE estimate averages."""
    vae, x, _, idata = small
    log_w = log_importance_weights(vae, x, num_samples=DRAWS, seed=0)  # [N, S]
    stored = torch.from_numpy(idata.sample_stats["log_weight"].values).reshape(DRAWS, N_OBS)
    assert torch.equal(stored.T, log_w)


def test_posterior_draws_follow_the_guide(ppca):
    """The noise streams give independent draws with the guide's law: continuous and discrete sites."""
    w, mu, x, _ = ppca
    vae = ppca_vae(w, mu, guide_shrink=2.0)
    s = 2000
    z = torch.from_numpy(to_inference_data(vae, x[:40], num_samples=s, num_chains=1, seed=3).posterior["z"].values[0])
    loc, sd = vae.encode(x[:40])
    assert ((z.mean(0) - loc).abs() / (sd / math.sqrt(s))).max() < 4.5
    assert ((z.std(0) / sd - 1).abs() / math.sqrt(1 / (2 * s))).max() < 4.5
    flat = z.reshape(s, -1)
    assert flat.unique(dim=0).shape[0] == s  # no particle repeats another
    corr = torch.corrcoef(flat[:, :4].T)  # both units of two points in one noise tile: independent
    assert (corr - torch.eye(corr.shape[0], dtype=corr.dtype)).abs().max() < 4.5 / math.sqrt(s)

    mixture = GaussianMixture()
    xm = torch.randn(3, mixture.dx, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    y = torch.from_numpy(to_inference_data(mixture, xm, num_samples=s, num_chains=1, seed=0).posterior["y"].values[0])
    expected = mixture.joint(xm).softmax(-1)  # [3, k]
    observed = torch.nn.functional.one_hot(y, expected.shape[1]).double().mean(0)
    se = (expected * (1 - expected) / s).sqrt()
    assert ((observed - expected).abs() <= 4.5 * se + 1e-12).all()


def test_several_latent_sites_get_their_own_dims():
    model = TwoLevelGaussian()
    x, exact = model.data(20)
    idata = to_inference_data(model, x, num_samples=4, num_chains=1, seed=0)
    assert idata.posterior["z1"].dims == ("chain", "draw", "obs", "z1_latent")
    assert idata.posterior["z2"].shape == (1, 4, 20, 2)
    # exact guide: every draw's log weight is log p(x)
    np.testing.assert_allclose(idata.sample_stats["log_weight"].values[0], exact.expand(4, 20).numpy(), atol=1e-8)


@pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")  # raised inside arviz
def test_arviz_summary_and_plots_run(small):
    _, _, _, idata = small
    summary = az.summary(idata, var_names=["z"], coords={"obs": [0, 1]})
    assert len(summary) == 2 * LATENT and np.isfinite(summary["mean"]).all()
    az.plot_posterior(idata, var_names=["z"], coords={"obs": [0], "latent": [0, 1]})
    az.plot_ppc(idata, num_pp_samples=4, random_seed=0)
    plt.close("all")


def test_psis_khat_is_small_for_the_exact_posterior(ppca):
    w, mu, x, exact = ppca
    result = psis_diagnostic(ppca_vae(w, mu), x[:60], num_samples=200, seed=0)
    assert isinstance(result, PSISResult) and result.khat.shape == (60,)
    assert (result.khat < 0.5).all() and result.fraction_above_07 == 0.0
    assert torch.allclose(result.psis_log_likelihood, exact[:60], atol=1e-8, rtol=0)


def test_psis_khat_is_large_for_a_too_narrow_guide(ppca, tmp_path):
    """Guide scale / 10: the weights have a Pareto tail with shape 1 - 1/100 (Yao et al. 2018)."""
    w, mu, x, exact = ppca
    vae = ppca_vae(w, mu, guide_shrink=10.0)
    result = psis_diagnostic(vae, x[:100], num_samples=1000, plot_path=tmp_path / "khat", seed=0)
    assert (result.khat > 0.7).float().mean() > 0.75 and result.fraction_above_07 > 0.75
    iwae = iwae_log_likelihood(vae, x[:100], num_samples=1000, seed=0).per_point.double()
    assert torch.isfinite(result.psis_log_likelihood).all()
    # smoothing moves the estimate by much less than the gap that remains to log p(x)
    assert (result.psis_log_likelihood - iwae).abs().mean() < 0.25 * (exact[:100] - iwae).mean()
    with Image.open(tmp_path / "khat.png") as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_psis_log_likelihood_is_the_iwae_estimate_when_nothing_is_smoothed(ppca):
    """With K = 10 the tail has too few draws to fit (k-hat = inf): no smoothing, PSIS = IWAE."""
    w, mu, x, _ = ppca
    vae = ppca_vae(w, mu, guide_shrink=2.0)
    result = psis_diagnostic(vae, x[:30], num_samples=10, seed=4)
    assert torch.isinf(result.khat).all()
    iwae = iwae_log_likelihood(vae, x[:30], num_samples=10, seed=4).per_point
    assert torch.allclose(result.psis_log_likelihood, iwae, atol=1e-12, rtol=0)


def test_plot_khat_marks_both_thresholds(tmp_path):
    path = plot_khat(torch.tensor([0.1, 0.6, 0.9, -math.inf]), tmp_path / "k.png", num_samples=50)
    assert path.exists()
    with Image.open(path) as img:
        assert img.format == "PNG"
