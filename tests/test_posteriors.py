"""Ground truth for the variational families q(z | x) and the flow prior.

* A linear-Gaussian model with a fixed decoder has a closed-form posterior and marginal, so each family's
  optimal ELBO is known: the full-covariance families reach ``log p(x)``, the diagonal Normal falls short by
  exactly ``0.5 (sum_i log L_ii - log det L)``, ``L`` the posterior precision.
* Every registered family's draws and densities are checked against an independent change of variables
  (scipy densities, and autograd Jacobians with ``slogdet`` in place of Pyro's log-det formulas).
* The flow prior's density is checked the same way, and it must beat the standard Normal prior on data whose
  latent distribution is bimodal.
* The CLI refuses unknown families and bad options in one line, leaving no run directory behind.
"""

import copy
import math
import warnings

import numpy as np
import pytest
import scipy.stats as st
import torch

from pyro_vae import VAE, elbo, fit, iwae_log_likelihood, make_objective, make_optimizer
from pyro_vae.evaluate import log_importance_weights
from pyro_vae.nets import make_encoder
from pyro_vae.posteriors import POSTERIORS, make_posterior
from pyro_vae.priors import FlowPrior

# ============================================================================ 1. the linear-Gaussian model
# x = W z + mu + s * noise, z ~ N(0, I): posterior N(m(x), S), S = (I + W^T W / s^2)^-1, marginal
# N(mu, W W^T + s^2 I). W's first two columns are nearly parallel, so the posterior correlation of z_1
# and z_2 is -0.86 and the diagonal Normal's optimal gap is 0.69 nats per point.
W = np.array([[1.0, 0.8, 0.2], [0.5, 0.6, -0.3], [-0.4, -0.2, 0.9],
              [0.3, 0.5, 0.7], [0.9, 0.7, 0.0], [0.2, 0.1, 0.6]])
MU = np.array([0.3, -0.5, 0.2, 0.0, 0.4, -0.1])
S_NOISE = 0.5
D, d = W.shape
N = 300
PRECISION = np.eye(d) + W.T @ W / S_NOISE ** 2
COV = np.linalg.inv(PRECISION)
MEAN_FIELD_GAP = 0.5 * (np.log(np.diag(PRECISION)).sum() - np.linalg.slogdet(PRECISION)[1])


@pytest.fixture(scope="module")
def linear_gaussian():
    """N points from the model and their exact mean log-likelihood (float64)."""
    g = np.random.default_rng(0)
    x = g.normal(size=(N, d)) @ W.T + MU + S_NOISE * g.normal(size=(N, D))
    exact = st.multivariate_normal(MU, W @ W.T + S_NOISE ** 2 * np.eye(D)).logpdf(x).mean()
    return x, exact


def test_the_reference_itself():
    """The design is what the tests need: a posterior far from diagonal, and a sizeable mean-field gap."""
    corr = COV / np.sqrt(np.outer(np.diag(COV), np.diag(COV)))
    assert corr[0, 1] < -0.8
    assert 0.6 < MEAN_FIELD_GAP < 0.8
    # the gap is KL(N(0, diag(1/L_ii)) || N(0, L^-1)) by scipy's entropies and a Monte Carlo cross-entropy
    q = st.multivariate_normal(np.zeros(d), np.diag(1 / np.diag(PRECISION)))
    z = q.rvs(200000, random_state=1)
    kl = -q.entropy() - st.multivariate_normal(np.zeros(d), COV).logpdf(z).mean()
    assert abs(kl - MEAN_FIELD_GAP) < 0.01


def linear_vae(posterior):
    """A linear VAE whose decoder is W, MU (frozen) with a Normal likelihood of fixed scale S_NOISE."""
    vae = VAE((D,), latent_dim=d, prior="normal", likelihood={"name": "normal", "scale": S_NOISE}, net="linear",
              posterior=posterior)
    with torch.no_grad():
        vae.decoder.linear.weight.copy_(torch.tensor(W))
        vae.decoder.linear.bias.copy_(torch.tensor(MU))
    vae.decoder.requires_grad_(False)
    return vae


def train_guide(vae, x, epochs=1000, lr=0.05):
    """Full-batch Adam on the encoder and posterior only; the lr decays 100x over the run to settle."""
    before = [p.detach().clone() for p in vae.decoder.parameters()]
    fit(vae, x, epochs=epochs, batch_size=None, progress=False, objective=make_objective("elbo"),
        optim=make_optimizer("adam", lr=lr, schedule={"name": "exponential", "gamma": 0.01 ** (1 / epochs)}))
    assert all(torch.equal(a, b) for a, b in zip(before, vae.decoder.parameters()))  # only the guide trained


def gaussian_q(vae, x):
    """Mean [N, d] and covariance [N, d, d] of a Gaussian q, rebuilt from the encoder's outputs by hand."""
    with torch.no_grad():
        params = [p.double().numpy() for p in vae.encoder(x)]
    loc, name = params[0], vae.posterior.name
    if name == "normal":
        cov = np.einsum("ni,ij->nij", params[1] ** 2, np.eye(d))
    elif name == "fullrank":  # L's diagonal, then its strict lower triangle in row-major order
        tril = np.zeros((len(loc), d, d))
        tril[:, np.arange(d), np.arange(d)] = params[1]
        rows, cols = np.tril_indices(d, -1)
        tril[:, rows, cols] = params[2]
        cov = tril @ tril.transpose(0, 2, 1)
    elif name == "lowrank":  # W W^T + diag(D), the factor [d, rank] row-major
        factor = params[2].reshape(len(loc), d, -1)
        cov = factor @ factor.transpose(0, 2, 1) + np.einsum("ni,ij->nij", params[1], np.eye(d))
    else:
        raise AssertionError(f"{name} is not a Gaussian family")
    return loc, cov


def closed_form_elbo(x, loc, cov):
    """E_q[log N(x; W z + MU, s^2 I)] - KL(q || N(0, I)) for q = N(loc, cov), averaged over the points."""
    resid = x - loc @ W.T - MU
    recon = (-0.5 * D * math.log(2 * math.pi * S_NOISE ** 2)
             - 0.5 / S_NOISE ** 2 * ((resid ** 2).sum(1) + np.einsum("ij,nji->n", W.T @ W, cov)))
    kl = 0.5 * (np.trace(cov, axis1=1, axis2=2) + (loc ** 2).sum(1) - d - np.linalg.slogdet(cov)[1])
    return float((recon - kl).mean())


def monte_carlo_elbo(vae, x, num_samples):
    """The library's ELBO estimate (the mean log importance weight) and its standard error for these points
    (from the spread of each point's weights: the points are fixed, only the draws vary)."""
    log_w = log_importance_weights(vae, x, num_samples=num_samples, seed=0).double()
    return log_w.mean().item(), math.sqrt(log_w.var(1).mean().item() / log_w.numel())


def kl_to_exact_posterior(x, loc, cov):
    """Mean KL(N(loc, cov) || N(m(x), S)) over the points, m(x) = S W^T (x - mu) / s^2: the gap by another road."""
    delta = loc - (x - MU) @ W @ COV / S_NOISE ** 2
    kl = 0.5 * (np.einsum("ij,nji->n", PRECISION, cov) + np.einsum("ni,ij,nj->n", delta, PRECISION, delta) - d
                - np.linalg.slogdet(cov)[1] - np.linalg.slogdet(PRECISION)[1])
    return float(kl.mean())


@pytest.mark.parametrize("posterior, bound", [
    ("fullrank", "exact"),
    ({"name": "lowrank", "rank": d - 1}, "exact"),
    ("normal", "mean-field"),
    ({"name": "lowrank", "rank": 1}, "below-mean-field"),
], ids=["fullrank", "lowrank-rank2", "normal", "lowrank-rank1"])
def test_gaussian_families_reach_their_closed_form_optimum(linear_gaussian, posterior, bound, one_thread):
    """Measured gaps log p(x) - ELBO (nats per point, 1000 epochs; init seed 0, then 1-2 where measured):
    fullrank 0.0006 (0.0012, 0.0014), lowrank rank 2 0.0009 (0.0016, 0.0019), normal 0.6903 against the
    closed-form 0.6897 (0.08%), lowrank rank 1 0.002 (its optimum lies between 0 and the mean-field gap; this
    posterior is close to rank one plus diagonal). The Monte Carlo ELBO differs from the closed form by at
    most 0.0004 (standard errors 0.0001-0.0025)."""
    x, exact = linear_gaussian
    vae = linear_vae(posterior)
    xt = torch.tensor(x, dtype=torch.float32)
    train_guide(vae, xt)
    loc, cov = gaussian_q(vae, xt)
    gap = exact - closed_form_elbo(x, loc, cov)
    assert gap > -1e-6  # the ELBO is a bound
    assert abs(gap - kl_to_exact_posterior(x, loc, cov)) < 1e-6  # log p(x) - ELBO = KL(q || p(z | x))
    if bound == "exact":
        assert gap < 0.01
    elif bound == "mean-field":
        assert abs(gap - MEAN_FIELD_GAP) < 0.03 * MEAN_FIELD_GAP
        np.testing.assert_allclose(cov[0].diagonal(), 1 / np.diag(PRECISION), rtol=0.03)
    else:
        assert gap <= MEAN_FIELD_GAP
    # the library's Monte Carlo ELBO agrees with the closed form (4 standard errors of 300 x 400 draws)
    mc, se = monte_carlo_elbo(vae, xt, 400)
    assert abs(mc - (exact - gap)) < 4 * se + 1e-4, (mc, exact - gap, se)


# Pyro 1.9.2's Sylvester scores y = x + tanh(x S Q^T + b) Q R as if its Jacobian were triangular; trained on
# this model its "ELBO" rose above log p(x), by 1.2 nats per point after 300 epochs and 5.4 after 1000, until
# pyro_vae.posteriors._Sylvester put the map in the paper's arrangement. This case catches that.
FLOW_CASES = [  # (spec, epochs, lr, what the family can reach)
    pytest.param({"name": "iaf", "n_flows": 2}, 500, 0.05, "mixing", id="iaf"),
    pytest.param({"name": "planar", "n_flows": 4}, 500, 0.05, "mixing", id="planar"),
    pytest.param({"name": "householder", "n_flows": 2}, 800, 0.05, "mixing", id="householder"),
    pytest.param({"name": "sylvester", "n_flows": 4}, 300, 0.05, "shared", id="sylvester"),
    pytest.param({"name": "spline"}, 300, 0.05, "element-wise", id="spline"),
]


@pytest.mark.parametrize("posterior, epochs, lr, reach", FLOW_CASES)
def test_flow_families_on_the_linear_gaussian_model(linear_gaussian, posterior, epochs, lr, reach, one_thread):
    """A conditional flow that mixes coordinates closes most of the mean-field gap; Sylvester flows, shared
    over x, contain the diagonal Normal (R = S = 0) so do no worse than it; an element-wise flow (spline) is
    still a factorised q, whose best is the mean-field Normal (for a Gaussian target), so it cannot do better.
    Measured gap / mean-field gap over init seeds 0-2: iaf 2.0/0.5/0.4%, planar 1.4/1.1/2.1%, householder
    0.1/0.2/1.8%, spline 104/111/105%, Sylvester with its log-det corrected 23/2.5/1.5%. The Monte Carlo ELBO
    of 300 x 1000 draws has a standard error of 0.0001-0.002 nats; the assertions allow 10% of the mean-field
    gap (0.069 nats) for a mixing flow, 100% for Sylvester, 100-125% for the spline, and the estimate must stay
    below log p(x) within 5 standard errors (a log-det with a wrong sign or formula lets the optimiser push
    the "bound" above it)."""
    x, exact = linear_gaussian
    vae = linear_vae(posterior)
    xt = torch.tensor(x, dtype=torch.float32)
    train_guide(vae, xt, epochs=epochs, lr=lr)
    mc, se = monte_carlo_elbo(vae, xt, 1000)
    gap = exact - mc
    assert se < 0.005
    # Pyro's own ELBO (its draws and scoring, not the evaluation noise streams) agrees: 200 particles a point
    assert abs(elbo(vae, xt, num_particles=200, batch_size=N) - mc) < 5 * se * math.sqrt(1 + 1000 / 200)
    assert gap > -5 * se, (gap, se)  # a bound
    if reach == "mixing":
        assert gap < 0.1 * MEAN_FIELD_GAP, (gap, MEAN_FIELD_GAP)
    elif reach == "shared":
        assert gap < MEAN_FIELD_GAP, (gap, MEAN_FIELD_GAP)
    else:
        assert MEAN_FIELD_GAP - 5 * se < gap < 1.25 * MEAN_FIELD_GAP, (gap, MEAN_FIELD_GAP)


# ============================================================================ 2. every family, by hand
DATA = (5,)
B, K = 4, 3


def spec_for(name, latent_dim):
    return {"name": "lowrank", "rank": min(2, latent_dim)} if name == "lowrank" else name


# Pyro 1.9.2's Sylvester computes y = x + tanh(x S Q^T + b) Q R but scores it as if the Jacobian were
# triangular, log|det J| = sum log(1 + h' R_ii S_ii): true only for latent_dim 1. The Jacobian is
# I + S Q^T diag(h') Q R; the paper's flow (row vectors), which pyro_vae's _Sylvester computes, is
# x + tanh(x Q S^T + b) R^T Q^T. The by-hand log-determinant below catches the difference.


def cases():
    for name in POSTERIORS.names():
        for latent_dim in range(1, 5):
            if name == "householder" and latent_dim < 2:
                continue
            yield pytest.param(name, latent_dim, id=f"{name}-{latent_dim}")


def build_family(name, latent_dim, seed=0):
    """(q, encoder, x) in float64, the flow's own parameters jittered so no step is near the identity."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ConditionalAutoRegressiveNN input_dim = 1")  # iaf at latent_dim 1
        q = make_posterior(spec_for(name, latent_dim), latent_dim).double()
    enc = make_encoder({"name": "mlp", "hidden": [16]}, DATA, latent_dim, heads=q.heads).double()
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return q, enc, torch.randn(B, *DATA, dtype=torch.float64)


def per_point_log_det(transform, u):
    """log|det J| of ``transform`` at each point of u [n, dim], by autograd and slogdet (not Pyro's formula);
    the points must not interact, so the off-diagonal blocks of the full Jacobian are zero."""
    n, dim = u.shape
    jac = torch.autograd.functional.jacobian(transform, u).reshape(n, dim, n, dim)
    blocks = jac[torch.arange(n), :, torch.arange(n), :]  # [n, dim, dim]
    off = jac.clone()
    off[torch.arange(n), :, torch.arange(n), :] = 0
    assert off.abs().max() == 0
    return torch.linalg.slogdet(blocks)[1]


def reference_log_prob(q, params, z, noise=None):
    """log q(z) independent of the family's log_prob: scipy for the closed-form families; for a flow the
    base density of the base draw ``noise`` minus each step's log|det J|, pushing the draw through the steps
    one at a time (and checking that they land on z). Shapes: params [B, .], z and noise [*s, B, d]."""
    p = [t.detach().numpy() for t in params]
    zn = z.detach().numpy()
    flat = zn.reshape(-1, B, zn.shape[-1])
    if q.name == "normal":
        return st.norm.logpdf(zn, p[0], p[1]).sum(-1)
    if q.name == "student-t":
        return st.t.logpdf(zn, q.df, p[0], p[1]).sum(-1)
    if q.name in ("lowrank", "fullrank"):
        if q.name == "lowrank":
            factor = p[2].reshape(B, q.latent_dim, -1)
            covs = factor @ factor.transpose(0, 2, 1) + np.einsum("bi,ij->bij", p[1], np.eye(q.latent_dim))
        else:
            tril = np.zeros((B, q.latent_dim, q.latent_dim))
            tril[:, np.arange(q.latent_dim), np.arange(q.latent_dim)] = p[1]
            rows, cols = np.tril_indices(q.latent_dim, -1)
            tril[:, rows, cols] = p[2]
            covs = tril @ tril.transpose(0, 2, 1)
        out = np.stack([[st.multivariate_normal(p[0][b], covs[b]).logpdf(flat[s, b]) for b in range(B)]
                        for s in range(flat.shape[0])])
        return out.reshape(zn.shape[:-1])
    # a flow: base N(loc, scale) at the base draw, then each step's Jacobian
    transforms = q(*params).transforms  # conditioned afresh: caches of the draw under test stay untouched
    u = noise.detach().reshape(-1, q.latent_dim)
    log_q = torch.tensor(st.norm.logpdf(noise.detach().numpy(), p[0], p[1]).sum(-1)).reshape(-1)
    shape = noise.shape
    for t in transforms:
        step = lambda v, t=t: t(v.reshape(shape)).reshape(-1, q.latent_dim)  # noqa: E731
        log_q = log_q - per_point_log_det(step, u)
        with torch.no_grad():
            u = step(u)
    np.testing.assert_allclose(u.reshape(shape).numpy(), zn, atol=1e-8)  # the draw is the composition
    return log_q.reshape(zn.shape[:-1]).numpy()


def draw(q_dist, seed, shape=()):
    """A draw, its log_prob taken at once (planar and Sylvester score only their latest draw), and for a flow
    the base draw behind it (the same seed through the base distribution: the steps draw no random numbers)."""
    torch.manual_seed(seed)
    z = q_dist.rsample(shape)
    log_q = q_dist.log_prob(z)
    noise = None
    if hasattr(q_dist, "transforms"):
        torch.manual_seed(seed)
        noise = q_dist.base_dist.rsample(shape)
    return z, log_q, noise


@pytest.mark.parametrize("name, latent_dim", list(cases()))
def test_family_draws_and_densities_by_hand(name, latent_dim):
    q, enc, x = build_family(name, latent_dim)
    params = enc(x)
    assert [t.shape[-1] for t in params] == [h.size for h in q.heads]
    q_x = q(*params)
    assert q_x.batch_shape == (B,) and q_x.event_shape == (latent_dim,) and q_x.has_rsample
    for shape, dist_ in [((), q_x), ((K,), q_x), ((), q_x.expand((K, B)))]:
        z, log_q, noise = draw(dist_, seed=1, shape=shape)
        batch = (*shape, *dist_.batch_shape)
        assert z.shape == (*batch, latent_dim) and log_q.shape == batch
        assert torch.isfinite(z).all() and torch.isfinite(log_q).all()
        want = reference_log_prob(q, params, z, noise)
        np.testing.assert_allclose(log_q.detach().numpy(), want, atol=1e-4, rtol=1e-6)
        if q.exact_density:  # any point, not only the family's own draw: a fresh tensor goes the inverse way
            np.testing.assert_allclose(dist_.log_prob(z.detach().clone()).detach().numpy(), want, atol=1e-4,
                                       rtol=1e-6)


@pytest.mark.parametrize("name, latent_dim", list(cases()))
def test_gradients_reach_every_encoder_head_through_rsample(name, latent_dim):
    q, enc, x = build_family(name, latent_dim)
    params = enc(x)
    z = q(*params).rsample()
    weights = torch.randn_like(z)
    loss = (z ** 2).sum() + (weights * z).sum()
    grads = torch.autograd.grad(loss, [*params, *enc.parameters()], allow_unused=True)
    for what, g in zip([f"head {i}" for i in range(len(params))] + [n for n, _ in enc.named_parameters()], grads):
        if what.startswith("head") and g is None and params[int(what[5:])].numel() == 0:
            continue  # fullrank at latent_dim 1: an empty strict lower triangle
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, what


@pytest.mark.parametrize("name, latent_dim", list(cases()))
def test_mean_is_the_mean_of_the_draws(name, latent_dim):
    """``mean(*params)`` against 20000 draws, within 5 standard errors (those of its own 100 draws too, for a
    flow's Monte Carlo mean); a flow's mean leaves the global RNG where it was."""
    q, enc, x = build_family(name, latent_dim)
    with torch.no_grad():
        params = enc(x)
        state = torch.get_rng_state()
        mean = q.mean(*params)
        assert torch.equal(torch.get_rng_state(), state)
        torch.manual_seed(2)
        draws = q(*params).sample((20000,))
    assert mean.shape == (B, latent_dim)
    var = draws.var(0)
    own = var / q.mean_draws if hasattr(q, "transforms") and q.name != "householder" else 0.0
    assert ((mean - draws.mean(0)).abs() <= 5 * (var / 20000 + own).sqrt()).all(), (mean, draws.mean(0))


def test_every_family_is_covered():
    covered = {c.values[0] for c in cases()}
    assert covered == set(POSTERIORS.names())


# ============================================================================ 3. the flow prior
FLOW_TRANSFORMS = ["affine-autoregressive", "spline-autoregressive", "spline-coupling", "spline"]


def flow_prior_by_hand(flows, z):
    """log p(z) for ``z = f_K^-1(... f_1^-1(e))``, e ~ N(0, I): e = f_1(... f_K(z)) through the flows' forward
    maps (a float64 copy of the prior's), log N(e) by scipy plus each flow's log|det J| by autograd and slogdet."""
    u = z.detach().double().reshape(-1, z.shape[-1])
    log_p = torch.zeros(u.shape[0], dtype=torch.float64)
    for f in reversed(flows):
        log_p += per_point_log_det(f, u)
        with torch.no_grad():
            u = f(u)
    return (torch.tensor(st.norm.logpdf(u.numpy()).sum(-1)) + log_p).reshape(z.shape[:-1]).numpy()


@pytest.mark.parametrize("transform", FLOW_TRANSFORMS)
@pytest.mark.parametrize("latent_dim", [2, 3])
def test_flow_prior_density_by_hand(transform, latent_dim):
    torch.manual_seed(0)
    prior = FlowPrior(latent_dim, transform=transform, n_flows=2, hidden=[8])
    with torch.no_grad():  # away from the initialisation, so each flow bends
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flows = copy.deepcopy(prior.flows).double()  # before any call caches a tensor in them
    p = prior()
    assert p.batch_shape == () and p.event_shape == (latent_dim,)
    z = p.expand((3, 2)).sample()
    assert z.shape == (3, 2, latent_dim) and torch.isfinite(z).all()
    # its own draws are scored from their cached noise, which the float32 inverse of a spline reproduces to
    # about 1e-4 (measured 1.8e-4 at one point of 6); points it did not draw go the density direction, 1e-4
    np.testing.assert_allclose(p.log_prob(z).detach().numpy(), flow_prior_by_hand(flows, z), atol=1e-3, rtol=1e-5)
    zq = 2 * torch.randn(6, latent_dim)
    log_p = prior().log_prob(zq)
    np.testing.assert_allclose(log_p.detach().numpy(), flow_prior_by_hand(flows, zq), atol=1e-4, rtol=1e-5)
    log_p.sum().backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in prior.parameters())


def test_flow_prior_refuses_a_latent_dim_its_transform_cannot_take():
    with pytest.raises(ValueError, match="needs latent_dim >= 2; use transform 'spline'"):
        FlowPrior(1, transform="affine-autoregressive")


BIMODAL_W = np.array([[1.0, 0.3], [0.5, -0.8], [-0.4, 0.6], [0.8, 0.2], [0.2, 1.0]])
BIMODAL_MU = np.array([0.5, -0.2, 0.1, 0.0, 0.3])


def bimodal(seed, n):
    """x = W z + mu + 0.3 noise with z_1 = +-2 + 0.4 noise (equal odds), z_2 ~ N(0, 1), and the exact mean
    log p(x) (a mixture of two Gaussians in x)."""
    g = np.random.default_rng(seed)
    z = np.stack([g.choice([-2.0, 2.0], n) + 0.4 * g.normal(size=n), g.normal(size=n)], 1)
    x = z @ BIMODAL_W.T + BIMODAL_MU + 0.3 * g.normal(size=(n, 5))
    cov = BIMODAL_W @ np.diag([0.16, 1.0]) @ BIMODAL_W.T + 0.09 * np.eye(5)
    parts = [st.multivariate_normal(BIMODAL_W @ [m, 0.0] + BIMODAL_MU, cov).logpdf(x) for m in (-2.0, 2.0)]
    exact = (np.logaddexp(*parts) - math.log(2)).mean()
    return torch.tensor(x, dtype=torch.float32), exact


def test_flow_prior_beats_the_normal_prior_on_a_bimodal_latent(one_thread):
    """A linear decoder under N(0, I) can only give a Gaussian p(x); under a flow prior p(x) can have the two
    modes. Held-out IWAE (K=200, seed 0), 1000 full-batch epochs, seeds 0-4 (test seed 0):
    normal prior -4.90/-4.94/-5.02/-4.84/-4.88, flow -4.33/-4.41/-4.45/-4.33/-4.41 against the exact
    -4.11/-4.11/-4.21/-4.04/-4.03; margins 0.57/0.53/0.57/0.51/0.47 nats per point (paired standard error
    0.02-0.03), asserted 0.3."""
    xtr, _ = bimodal(100, 1000)
    xte, exact = bimodal(200, 500)
    results = {}
    for prior in ("normal", {"name": "flow", "n_flows": 2, "hidden": [32]}):
        torch.manual_seed(0)
        vae = VAE((5,), latent_dim=2, prior=prior, likelihood={"name": "normal", "scale": "shared"}, net="linear")
        fit(vae, xtr, epochs=1000, batch_size=None, optim=make_optimizer("adam", lr=0.02), progress=False, seed=0)
        results["normal" if prior == "normal" else "flow"] = iwae_log_likelihood(vae, xte, num_samples=200, seed=0)
    diff = results["flow"].per_point - results["normal"].per_point
    margin, se = diff.mean().item(), (diff.std() / math.sqrt(len(diff))).item()
    assert margin > 0.3, (results, margin, se)
    assert results["flow"].mean < exact + 0.1  # a held-out density above the truth would be a normalisation bug


# ============================================================================ 4. bad input through the CLI
@pytest.fixture(scope="module")
def ok_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("posterior-cli") / "ok.npy"
    np.save(path, np.random.default_rng(0).random((40, 6)).astype(np.float32))
    return path


BAD = [
    # (id, extra argv, words of the one-line message); latent_dim 2 unless the argv says otherwise
    ("unknown-family", ["--posterior", "iaff"],
     ["model.posterior: unknown posterior 'iaff'", *(f"'{n}'" for n in POSTERIORS.names()), "Did you mean 'iaf'?"]),
    ("unknown-option", ["--posterior", "iaf", "--set", "model.posterior.nflows=2"],
     ["unknown option 'nflows' for posterior 'iaf'", "Did you mean 'n_flows'?"]),
    ("n-flows-zero", ["--posterior", "iaf", "--set", "model.posterior.n_flows=0"],
     ["model.posterior: iaf posterior: n_flows must be >= 1, got 0"]),
    ("n-flows-a-string", ["--posterior", "iaf", "--set", 'model.posterior.n_flows="two"'],
     ["model.posterior: iaf posterior: n_flows must be an integer, got 'two'"]),
    ("n-flows-a-fraction", ["--posterior", "planar", "--set", "model.posterior.n_flows=1.5"],
     ["planar posterior: n_flows must be an integer, got 1.5"]),
    ("rank-zero", ["--posterior", "lowrank", "--set", "model.posterior.rank=0"],
     ["model.posterior: lowrank posterior: rank must be in [1, 2], got 0"]),
    ("rank-above-latent-dim", ["--posterior", "lowrank", "--set", "model.posterior.rank=3"],
     ["lowrank posterior: rank must be in [1, 2], got 3"]),
    ("householder-in-one-dim", ["--posterior", "householder", "--latent-dim", "1"],
     ["householder posterior: a reflection needs latent_dim >= 2"]),
    ("vamp-with-a-flow", ["--posterior", "iaf", "--prior", "vamp"],
     ["the vamp prior is a mixture of the posterior", "use posterior 'normal'"]),
    ("ladder-with-iaf", ["--model", "stacked", "--latent-dim", "4", "--set", 'model.inference="ladder"',
                         "--posterior", "iaf"],
     ["inference 'ladder' merges Gaussian precisions and takes only posterior 'normal', not 'iaf'",
      "use inference 'bottom-up'"]),
]


@pytest.mark.parametrize("extra, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_posterior_input_is_one_line_and_leaves_nothing(ok_data, extra, words, tmp_path, capsys):
    from pyro_vae.cli import main

    run = tmp_path / "run"
    argv = ["train", "--data", str(ok_data), "--epochs", "1", "--hidden", "8", "--quiet", "--preprocess", "none",
            "--latent-dim", "2", *extra, "--out", str(run)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert not run.exists()  # refused before anything was written
