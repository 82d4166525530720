"""Every likelihood against scipy or an explicit formula: shapes, support, gradients, log_prob, errors."""

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st
import torch
import torch.nn.functional as F

from pyro_vae import LIKELIHOODS, VAE
from pyro_vae.likelihoods import make_likelihood

DATA_SHAPE = (2, 3)  # two event dims, so event handling is exercised
B = 5

# Every name with each of its structurally different options.
VARIANTS = [
    ("bernoulli", {}),
    ("continuous-bernoulli", {}),
    ("normal", {"scale": "shared"}),
    ("normal", {"scale": "feature"}),
    ("normal", {"scale": "decoder"}),
    ("normal", {"scale": 0.5}),
    ("laplace", {"scale": "feature"}),
    ("laplace", {"scale": "decoder"}),
    ("poisson", {}),
    ("negative-binomial", {"dispersion": "feature"}),
    ("negative-binomial", {"dispersion": "shared"}),
    ("negative-binomial", {"dispersion": "decoder"}),
    ("zinb", {"dispersion": "feature"}),
    ("zinb", {"dispersion": "decoder"}),
    ("categorical", {"levels": 5}),
]
IDS = [name + "".join(f"-{v}" for v in opts.values()) for name, opts in VARIANTS]


def test_every_registered_likelihood_is_tested():
    assert {name for name, _ in VARIANTS} == set(LIKELIHOODS.names())


def reference_log_prob(lik, name, params, x):
    """Per-point log p(x | params) summed over features, in float64 numpy."""
    p = params.detach().double()
    xn = x.double().numpy()
    heads = [h.numpy() for h in p.unbind(1)]
    softplus = lambda a: np.logaddexp(0.0, a)  # noqa: E731
    if name == "bernoulli":
        lp = -F.binary_cross_entropy_with_logits(p[:, 0], x.double(), reduction="none").numpy()
    elif name == "continuous-bernoulli":
        lam = sp.expit(heads[0])
        # log C(lam) with C = 2 artanh(1 - 2 lam) / (1 - 2 lam)  (Loaiza-Ganem & Cunningham 2019)
        log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
        lp = log_c + xn * np.log(lam) + (1 - xn) * np.log1p(-lam)
    elif name in ("normal", "laplace"):
        loc = heads[0]
        if lik.scale == "decoder":
            scale = softplus(heads[1]) + lik.min_scale
        elif isinstance(lik.scale, str):
            scale = softplus(lik.raw_scale.detach().double().numpy()) + lik.min_scale
        else:
            scale = lik.scale
        lp = (st.norm if name == "normal" else st.laplace).logpdf(xn, loc, scale)
    elif name == "poisson":
        lp = st.poisson.logpmf(xn, softplus(heads[0]) + 1e-8)
    elif name in ("negative-binomial", "zinb"):
        mu = softplus(heads[0]) + 1e-8
        raw_r = heads[-1] if lik.dispersion == "decoder" else lik.raw_dispersion.detach().double().numpy()
        r = softplus(raw_r) + 1e-8
        nb = st.nbinom.logpmf(xn, r, r / (r + mu))
        if name == "negative-binomial":
            lp = nb
        else:
            pi = sp.expit(heads[1])
            lp = np.where(xn == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + nb), np.log1p(-pi) + nb)
    elif name == "categorical":
        logp = torch.log_softmax(p.movedim(1, -1), -1)
        lp = logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1).numpy()
    else:
        raise AssertionError(f"no reference for likelihood {name!r}: add one")
    return lp.reshape(lp.shape[0], -1).sum(-1)


def in_support(name, lik, x):
    if name in ("bernoulli",):
        return bool(((x == 0) | (x == 1)).all())
    if name == "continuous-bernoulli":
        return bool(((x >= 0) & (x <= 1)).all())
    if name in ("poisson", "negative-binomial", "zinb"):
        return bool(((x >= 0) & (x == x.round())).all())
    if name == "categorical":
        return bool(((x >= 0) & (x < lik.levels) & (x == x.round())).all())
    return bool(torch.isfinite(x).all())


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_likelihood_properties(name, options):
    vae = VAE(DATA_SHAPE, latent_dim=2, likelihood={"name": name, **options}, net={"name": "mlp", "hidden": [8]})
    lik = vae.likelihood
    # The likelihood sizes the decoder.
    params = vae.decoder(torch.randn(B, 2))
    assert params.shape == (B, lik.n_params, *DATA_SHAPE)
    params = params.detach() + 0.5 * torch.randn_like(params)
    params.requires_grad_(True)
    d = lik(params)
    assert d.batch_shape == (B,) and d.event_shape == DATA_SHAPE
    x = d.sample()
    assert x.shape == (B, *DATA_SHAPE)
    assert in_support(name, lik, x)
    lik.check_support(x)  # a draw is always accepted
    lp = d.log_prob(x)
    assert lp.shape == (B,)
    np.testing.assert_allclose(lp.detach().double().numpy(), reference_log_prob(lik, name, params, x),
                               rtol=1e-4, atol=1e-4)
    lp.sum().backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()
    for pname, p in lik.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    mean = lik.mean(params.detach())
    assert mean.shape == (B, *DATA_SHAPE) and torch.isfinite(mean).all()


@pytest.mark.parametrize("name,options", [v for v in VARIANTS if v[0] != "bernoulli"],
                         ids=[i for i, v in zip(IDS, VARIANTS) if v[0] != "bernoulli"])
def test_likelihood_mean_matches_monte_carlo(name, options):
    vae = VAE(DATA_SHAPE, latent_dim=2, likelihood={"name": name, **options}, net={"name": "mlp", "hidden": [8]})
    params = vae.decoder(torch.randn(3, 2)).detach()
    draws = vae.likelihood(params).sample([20000]).double()
    mean = vae.likelihood.mean(params).double()
    se = draws.std(0) / 20000 ** 0.5
    assert ((draws.mean(0) - mean).abs() <= 5 * se + 1e-3).all()


def test_bernoulli_accepts_grey_values_as_cross_entropy():
    lik = make_likelihood("bernoulli")
    lik.setup((4,))
    logits = torch.randn(3, 1, 4)
    x = torch.rand(3, 4)
    expected = -F.binary_cross_entropy_with_logits(logits[:, 0], x, reduction="none").sum(-1)
    torch.testing.assert_close(lik(logits).log_prob(x), expected)


def test_independent_bernoulli_is_pyros_bernoulli_to_event():
    """The fused log-density against ``Bernoulli(logits).to_event``: values, gradients, plates, broadcasting."""
    import pyro
    import pyro.distributions as dist
    from pyro import poutine

    from pyro_vae.distributions import IndependentBernoulli

    logits = torch.randn(4, 2, 3, requires_grad=True)
    x = torch.rand(4, 2, 3)
    x[0] = x[0].round()
    ours, ref = IndependentBernoulli(logits, 2), dist.Bernoulli(logits=logits, validate_args=False).to_event(2)
    assert (ours.batch_shape, ours.event_shape) == (ref.batch_shape, ref.event_shape) == ((4,), (2, 3))
    lp, want = ours.log_prob(x), ref.log_prob(x)
    torch.testing.assert_close(lp, want)
    (grad,) = torch.autograd.grad(lp.sum(), logits)
    (want_grad,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(grad, want_grad)
    many = torch.rand(5, 4, 2, 3)  # a particle dim in front of the value broadcasts as it does for Bernoulli
    torch.testing.assert_close(ours.log_prob(many), ref.log_prob(many))
    torch.testing.assert_close(ours.mean, torch.sigmoid(logits))
    assert ours.sample((7,)).shape == (7, 4, 2, 3)

    def model(d):
        with pyro.plate("particles", 5, dim=-2), pyro.plate("data", 4, dim=-1):
            pyro.sample("x", d, obs=many)

    traces = [poutine.trace(model).get_trace(d.expand([4])) for d in (ours, ref)]
    assert type(traces[0].nodes["x"]["fn"]) is IndependentBernoulli  # a plate's expand keeps the class
    for tr in traces:
        tr.compute_log_prob()
    torch.testing.assert_close(traces[0].nodes["x"]["log_prob"], traces[1].nodes["x"]["log_prob"])
    assert traces[0].nodes["x"]["log_prob"].shape == (5, 4)


SUPPORT_ERRORS = [
    ("bernoulli", {}, torch.tensor([[0.0, 1.5, 0.2]]), r"'bernoulli'.*\[0, 1\].*1\.5.*preprocess 'scale'"),
    ("bernoulli", {"binary": True}, torch.tensor([[0.0, 0.5, 1.0]]), r"'bernoulli'.*\{0, 1\}"),
    ("continuous-bernoulli", {}, torch.tensor([[-0.1, 0.5, 1.0]]), r"'continuous-bernoulli'.*\[0, 1\]"),
    ("poisson", {}, torch.tensor([[0.0, -1.0, 2.0]]), r"'poisson'.*non-negative integer counts"),
    ("poisson", {}, torch.tensor([[0.0, 1.5, 2.0]]), r"'poisson'.*non-negative integer counts"),
    ("negative-binomial", {}, torch.tensor([[0.0, 2.5, 2.0]]), r"'negative-binomial'.*integer counts"),
    ("zinb", {}, torch.tensor([[0.0, -3.0, 2.0]]), r"'zinb'.*integer counts"),
    ("categorical", {"levels": 4}, torch.tensor([[0.0, 4.0, 2.0]]), r"'categorical'.*levels 0\.\.3"),
]


@pytest.mark.parametrize("name,options,x,match", SUPPORT_ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(SUPPORT_ERRORS)])
def test_data_outside_support_is_refused(name, options, x, match):
    vae = VAE((3,), latent_dim=2, likelihood={"name": name, **options})
    with pytest.raises(ValueError, match=match):
        vae.check_data(x)


def test_unknown_likelihood_and_options():
    with pytest.raises(ValueError, match=r"unknown likelihood 'gaussian'; valid likelihood names are 'bernoulli'.*'zinb'"):
        make_likelihood("gaussian")
    with pytest.raises(ValueError, match=r"unknown option 'scal' for likelihood 'normal'.*Did you mean 'scale'"):
        make_likelihood({"name": "normal", "scal": "feature"})
    with pytest.raises(ValueError, match="scale must be a positive number or one of shared, feature, decoder"):
        make_likelihood({"name": "normal", "scale": "per-pixel"})
    with pytest.raises(ValueError, match="dispersion must be one of"):
        make_likelihood({"name": "zinb", "dispersion": "gene"})
