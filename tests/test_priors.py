"""Every prior against a torch/scipy reference: shapes, support, gradients, log_prob."""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch
from torch.distributions import Independent, Normal

from pyro_vae import PRIORS, VAE
from pyro_vae.priors import Prior, StandardNormal, make_prior, register_prior

D = 3
DATA_SHAPE = (1, 4, 4)


def build(name):
    """The prior as a VAE builds it (so the VampPrior has an encoder)."""
    return VAE(DATA_SHAPE, latent_dim=D, prior={"name": name, **({"n_components": 4} if name in ("mog", "vamp") else {})},
               likelihood="normal", net={"name": "mlp", "hidden": [8]}).prior


def reference_log_prob(prior, name, z):
    """log p(z) from scipy / an explicit formula, independent of Pyro."""
    zn = z.detach().double().numpy()
    if name == "normal":
        return st.norm.logpdf(zn).sum(-1)
    if name == "laplace":
        return st.laplace.logpdf(zn, scale=prior.scale).sum(-1)
    if name == "student-t":
        return st.t.logpdf(zn, df=prior.df, scale=prior.scale).sum(-1)
    if name == "mog":
        w = torch.log_softmax(prior.logits.detach().double(), 0).numpy()
        locs, scales = prior.locs.detach().double().numpy(), prior.log_scales.detach().double().exp().numpy()
        comp = [w[k] + st.norm.logpdf(zn, locs[k], scales[k]).sum(-1) for k in range(len(w))]
        return np.logaddexp.reduce(np.stack(comp), axis=0)
    if name == "vamp":
        loc, scale = prior.encoder(prior.pseudo_inputs)
        comp = [st.norm.logpdf(zn, loc[k].detach().double().numpy(), scale[k].detach().double().numpy()).sum(-1)
                for k in range(loc.shape[0])]
        return np.logaddexp.reduce(np.stack(comp), axis=0) - math.log(loc.shape[0])
    if name == "flow":
        return flow_log_prob_by_hand(prior, z)
    raise AssertionError(f"no reference for prior {name!r}: add one")


def flow_log_prob_by_hand(prior, z):
    """log p(z) of a :class:`FlowPrior` without Pyro's densities or Jacobian formulas.

    The prior is ``z = f_K^-1(... f_1^-1(e))``, ``e ~ N(0, I)``, so ``e = f_1(... f_K(z))`` through the
    flows' forward maps, and ``log p(z) = log N(e) + sum_k log|det df_k/du|``, each Jacobian taken per point
    by autograd and its log-determinant by ``slogdet`` (float64 from there on).
    """
    u = z.detach().reshape(-1, z.shape[-1])
    log_det = torch.zeros(u.shape[0], dtype=torch.float64)
    for f in reversed(prior.flows):
        jac = torch.stack([torch.autograd.functional.jacobian(lambda v: f(v[None])[0], point) for point in u])
        log_det += torch.linalg.slogdet(jac.double())[1]
        with torch.no_grad():
            u = f(u)
    out = st.norm.logpdf(u.double().numpy()).sum(-1) + log_det.numpy()
    return out.reshape(z.shape[:-1])


@pytest.mark.parametrize("name", PRIORS.names(), ids=PRIORS.names())
def test_prior_shapes_log_prob_and_gradients(name):
    prior = build(name)
    d = prior()
    assert d.event_shape == (D,)
    z = d.expand([5, 2]).sample()
    assert z.shape == (5, 2, D) and torch.isfinite(z).all()
    lp = d.log_prob(z)
    assert lp.shape == (5, 2)
    np.testing.assert_allclose(lp.detach().double().numpy(), reference_log_prob(prior, name, z), rtol=1e-5, atol=1e-5)
    # Gradients reach z and every learnable part of the prior, and are finite.
    zq = torch.randn(7, D, requires_grad=True)
    prior().log_prob(zq).sum().backward()
    assert torch.isfinite(zq.grad).all() and zq.grad.abs().sum() > 0
    for pname, p in prior.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["normal", "laplace", "student-t"])
def test_factorised_priors_are_reparameterised(name):
    d = build(name)()
    assert d.has_rsample
    assert d.rsample([4]).shape == (4, D)


def test_vamp_log_prob_is_log_mean_exp_of_encoder_posteriors():
    vae = VAE(DATA_SHAPE, latent_dim=D, prior={"name": "vamp", "n_components": 6}, likelihood="bernoulli")
    prior = vae.prior
    z = torch.randn(11, D)
    loc, scale = vae.encoder(prior.pseudo_inputs)
    per_component = Independent(Normal(loc, scale), 1).log_prob(z.unsqueeze(1))  # [11, 6]
    expected = torch.logsumexp(per_component, 1) - math.log(6)
    torch.testing.assert_close(prior().log_prob(z), expected)
    # The encoder is shared, not copied: its parameters are not the prior's.
    prior_params = {id(p) for p in prior.parameters()}
    assert not any(id(p) in prior_params for p in vae.encoder.parameters())
    assert sum(1 for _ in vae.parameters()) == len({id(p) for p in vae.parameters()})


def test_vamp_init_from_data():
    vae = VAE(DATA_SHAPE, latent_dim=D, prior={"name": "vamp", "n_components": 5}, likelihood="bernoulli")
    x = torch.rand(3, *DATA_SHAPE)
    vae.prior.init_from(x)
    torch.testing.assert_close(vae.prior.pseudo_inputs[:3], x)
    torch.testing.assert_close(vae.prior.pseudo_inputs[3:], x[:2])


def test_unknown_prior_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown prior 'vampp'.*'normal'.*'vamp'.*Did you mean 'vamp'"):
        make_prior("vampp", latent_dim=2)


def test_unknown_prior_option_names_the_option():
    with pytest.raises(ValueError, match=r"unknown option 'n_component' for prior 'mog'.*Did you mean 'n_components'"):
        make_prior({"name": "mog", "n_component": 3}, latent_dim=2)


def test_bad_prior_values():
    with pytest.raises(ValueError, match="df and scale must be > 0"):
        make_prior({"name": "student-t", "df": -1}, latent_dim=2)
    with pytest.raises(ValueError, match="latent_dim=3 but the VAE has latent_dim=2"):
        make_prior(StandardNormal(3), latent_dim=2)


def test_user_prior_in_a_few_lines():
    class Uniform(Prior):
        def forward(self, context=None):
            lo = self._loc()
            import pyro.distributions as dist
            return dist.Uniform(lo - 2, lo + 2).to_event(1)

    register_prior("uniform-test", Uniform, doc="test")
    try:
        vae = VAE((6,), latent_dim=2, prior="uniform-test", likelihood="normal")
        assert isinstance(vae.prior, Uniform)
        np.testing.assert_allclose(vae.prior().log_prob(torch.zeros(2)).item(), 2 * math.log(1 / 4), rtol=1e-6)
    finally:
        PRIORS.unregister("uniform-test")


# ----------------------------------------------------------------------------- the mixture density
def _mixture_reference(logits, locs, scales, z):
    """torch's broadcasting MixtureSameFamily in float64: the law DiagNormalMixture must match."""
    from torch.distributions import Categorical, MixtureSameFamily
    comp = Independent(Normal(locs.double(), scales.double()), 1)
    return MixtureSameFamily(Categorical(logits=logits.double()), comp).log_prob(z.double())


@pytest.mark.parametrize("spread,scale_range,offset", [(1.0, (0.3, 1.0), 0.0), (3.0, (0.02, 2.0), 0.0),
                                                       (1.0, (0.05, 0.5), 25.0)],
                         ids=["typical", "narrow-and-wide", "far-from-origin"])
def test_diag_normal_mixture_matches_mixture_same_family(spread, scale_range, offset):
    """The two-matmul density equals the broadcast one in float64 on 500 components in 50 dimensions:
    near the components, far from all of them (50 sd), and with every mean shifted 25 from the origin."""
    from pyro_vae.distributions import DiagNormalMixture
    g = torch.Generator().manual_seed(0)
    k, d = 500, 50
    logits = torch.randn(k, generator=g)
    locs = offset + spread * torch.randn(k, d, generator=g)
    lo, hi = scale_range
    scales = lo + (hi - lo) * torch.rand(k, d, generator=g)
    mix = DiagNormalMixture(logits, locs, scales)
    near = mix.sample([200])
    far = locs[:200] + 50 * scales[:200] * torch.randn(200, d, generator=g).sign()
    for z in (near, far):
        want = _mixture_reference(logits, locs, scales, z)
        got = mix.log_prob(z)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-3)


def test_diag_normal_mixture_gradients_sampling_and_plates():
    from pyro_vae.distributions import DiagNormalMixture
    g = torch.Generator().manual_seed(1)
    logits, locs = torch.randn(4, generator=g), torch.randn(4, D, generator=g)
    scales = 0.2 + torch.rand(4, D, generator=g)
    params = [t.clone().requires_grad_() for t in (logits, locs, scales)]
    ref = [t.clone().double().requires_grad_() for t in (logits, locs, scales)]
    z = torch.randn(9, D, generator=g)
    DiagNormalMixture(*params).log_prob(z).sum().backward()
    _mixture_reference(*ref, z).sum().backward()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.grad.double(), r.grad, rtol=1e-4, atol=1e-5)
    # expand as a plate does: batch dims broadcast, parameters shared
    mix = DiagNormalMixture(logits, locs, scales).expand([6])
    assert mix.batch_shape == (6,) and mix.event_shape == (D,)
    assert mix.log_prob(torch.randn(2, 6, D)).shape == (2, 6)
    # samples have the mixture's mean and per-coordinate variance (40000 draws, 5 standard errors)
    torch.manual_seed(2)
    draws = DiagNormalMixture(logits, locs, scales).sample([40000])
    w = logits.softmax(0)
    mean = w @ locs
    var = w @ (scales ** 2 + locs ** 2) - mean ** 2
    assert ((draws.mean(0) - mean).abs() < 5 * (var / 40000).sqrt()).all()
    torch.testing.assert_close(draws.var(0), var, rtol=0.05, atol=0.0)
    torch.testing.assert_close(DiagNormalMixture(logits, locs, scales).mean, mean)
    with pytest.raises(ValueError, match=r"logits \[K\], locs and scales \[K, d\]"):
        DiagNormalMixture(logits, locs[None], scales)
