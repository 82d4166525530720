"""Objectives by name, KL weights, free bits: checked against estimators that must agree."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import JitTrace_ELBO, JitTraceGraph_ELBO, RenyiELBO, Trace_ELBO

import pyro_vae.distributions
from pyro_vae import VAE, fit
from pyro_vae.objectives import (OBJECTIVES, FreeBitsELBO, KLSchedule, LatentScale, LocalRenyiELBO, SummedTrace_ELBO,
                                 make_objective, model_objective)


@pytest.fixture(scope="module")
def fitted(digits):
    pyro.set_rng_seed(0)
    x = digits[0]
    vae = VAE((1, 8, 8), latent_dim=4, net={"name": "mlp", "hidden": [64]})
    fit(vae, x[:1000], epochs=3, progress=False)
    return vae, x[1000:1200]


def estimates(loss, vae, x, reps=30, **kwargs):
    """Per-point objective estimates under seeds 0..reps-1 (paired across objectives)."""
    vals = []
    for r in range(reps):
        pyro.set_rng_seed(r)
        n = kwargs.get("num_data") or len(x)
        vals.append(-loss.loss(vae.model, vae.guide, x, **kwargs) / n)
    return torch.tensor(vals, dtype=torch.float64)


def test_every_objective_name_builds_a_pyro_elbo():
    for name in OBJECTIVES.names():
        assert isinstance(make_objective(name, num_particles=2, max_plate_nesting=1), pyro.infer.ELBO)
    with pytest.raises(ValueError, match=r"unknown objective 'iwea'.*Did you mean 'iwae'"):
        make_objective("iwea")
    with pytest.raises(ValueError, match=r"JitTraceMeanField_ELBO\) is refused.*memory"):
        make_objective({"name": "meanfield", "jit": True})
    with pytest.raises(ValueError, match="num_particles must be >= 1"):
        make_objective("elbo", num_particles=0)


@pytest.mark.parametrize("subsample", [False, True])
def test_iwae_with_one_particle_is_the_elbo_estimator(fitted, subsample):
    vae, x = fitted
    kwargs = {"idx": torch.arange(20), "num_data": 200} if subsample else {}
    xb = x[:20] if subsample else x
    pyro.set_rng_seed(3)
    elbo = Trace_ELBO().loss(vae.model, vae.guide, xb, **kwargs)
    pyro.set_rng_seed(3)
    iwae = make_objective("iwae", num_particles=1, max_plate_nesting=1).loss(vae.model, vae.guide, xb, **kwargs)
    assert iwae == pytest.approx(elbo, rel=1e-6)


def test_iwae_bound_is_above_the_elbo_and_grows_with_k(fitted):
    vae, x = fitted
    elbo = estimates(Trace_ELBO(), vae, x)
    iwae5 = estimates(LocalRenyiELBO(5, max_plate_nesting=1), vae, x)
    iwae50 = estimates(LocalRenyiELBO(50, max_plate_nesting=1), vae, x)
    for lo, hi in ((elbo, iwae5), (iwae5, iwae50)):
        diff = hi - lo
        assert diff.mean() > 3 * diff.std() / math.sqrt(len(diff)), (lo.mean(), hi.mean())


def test_pyro_renyi_elbo_is_biased_under_subsampling_and_ours_is_not(fitted):
    """Full batch: Pyro's RenyiELBO(alpha=0) equals ours. Minibatch with N/B = 10: it overshoots the bound."""
    vae, x = fitted
    ours, theirs = LocalRenyiELBO(5, max_plate_nesting=1), RenyiELBO(alpha=0, num_particles=5,
                                                                       vectorize_particles=True, max_plate_nesting=1)
    full_ours, full_theirs = estimates(ours, vae, x, reps=3), estimates(theirs, vae, x, reps=3)
    torch.testing.assert_close(full_ours, full_theirs, rtol=1e-5, atol=1e-5)
    sub = {"idx": torch.arange(20), "num_data": 200}
    xb = x[:20]
    exact_iwae = estimates(ours, vae, xb, reps=40)  # per point of the 20, as the full-batch IWAE
    minibatch_ours = estimates(ours, vae, xb, reps=40, **sub)
    minibatch_theirs = estimates(theirs, vae, xb, reps=40, **sub)
    se = (minibatch_theirs - exact_iwae).std() / math.sqrt(40)
    assert (minibatch_theirs - exact_iwae).mean() > 3 * se
    torch.testing.assert_close(minibatch_ours, exact_iwae, rtol=1e-5, atol=1e-4)


def test_meanfield_and_elbo_agree_in_expectation(fitted):
    vae, x = fitted
    elbo = estimates(make_objective("elbo"), vae, x)
    meanfield = estimates(make_objective("meanfield"), vae, x)
    se = math.sqrt(elbo.var() / len(elbo) + meanfield.var() / len(meanfield))
    assert abs(elbo.mean() - meanfield.mean()) < 4 * se


def test_latent_scale_weights_latent_sites_only():
    vae = VAE((6,), latent_dim=2, likelihood="normal")
    x = torch.randn(8, 6)
    scaler = LatentScale(vae.latent_sites, weight=0.3)
    for program in (vae.model, vae.guide):
        tr = poutine.trace(scaler(program)).get_trace(x, torch.arange(8), 80)
        assert tr.nodes["z"]["scale"] == pytest.approx(0.3 * 10)
        if "x" in tr.nodes:
            assert tr.nodes["x"]["scale"] == pytest.approx(10)


def test_kl_schedules():
    assert KLSchedule("constant", 0.5)(7.3) == 0.5
    lin = KLSchedule("linear", 2.0, warmup=4)
    assert [lin(t) for t in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    cyc = KLSchedule("cyclical", 1.0, cycles=2, ratio=0.5, epochs=8)  # period 4, ramp over 2
    assert [cyc(t) for t in (0, 1, 2, 3, 4, 5, 8, 10)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="beta must be >= 0"):
        KLSchedule("constant", -1.0)
    with pytest.raises(ValueError, match="constant, linear or cyclical"):
        KLSchedule("warmup")


def test_training_applies_the_scheduled_weight_at_every_step(digits):
    """The trace SVI differentiates has z scaled by exactly schedule(step) * N/B; x only by N/B."""
    seen = []

    class Spy(Trace_ELBO):
        def loss_and_grads(self, model, guide, *args, **kwargs):
            tr = poutine.trace(guide).get_trace(*args, **kwargs)
            mtr = poutine.trace(poutine.replay(model, trace=tr)).get_trace(*args, **kwargs)
            seen.append((tr.nodes["z"]["scale"], mtr.nodes["z"]["scale"], mtr.nodes["x"]["scale"],
                         len(args[0]), kwargs["num_data"]))
            return super().loss_and_grads(model, guide, *args, **kwargs)

    x = digits[0][:300]
    schedule = KLSchedule("linear", 0.8, warmup=2)
    result = fit(VAE((1, 8, 8), latent_dim=2), x, epochs=3, batch_size=100, objective=Spy(), kl_schedule=schedule,
                 progress=False)
    assert len(seen) == 9
    for step, (gz, mz, mx, b, n) in enumerate(seen):
        beta = schedule(step / 3)
        assert gz == pytest.approx(beta * n / b) and mz == pytest.approx(beta * n / b)
        assert mx == pytest.approx(n / b)
    assert [r["kl_weight"] for r in result.history] == pytest.approx([schedule(2 / 3), schedule(5 / 3), 0.8])


def test_free_bits_with_zero_floor_is_the_elbo_and_a_floor_caps_the_kl(fitted):
    vae, x = fitted
    pyro.set_rng_seed(1)
    plain = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    assert FreeBitsELBO(0.0).loss(vae.model, vae.guide, x) == pytest.approx(plain, rel=1e-5)
    # With a floor above the KL, the KL term is the constant N * lambda * d: no gradient reaches the encoder.
    loss = FreeBitsELBO(50.0).differentiable_loss(vae.model, vae.guide, x)
    vae.zero_grad()
    pyro.set_rng_seed(1)
    tr = poutine.trace(vae.guide).get_trace(x)
    mtr = poutine.trace(poutine.replay(vae.model, trace=tr)).get_trace(x)
    recon = mtr.nodes["x"]["fn"].log_prob(x).sum()
    pyro.set_rng_seed(1)
    loss = FreeBitsELBO(50.0).differentiable_loss(vae.model, vae.guide, x)
    assert loss.item() == pytest.approx(-recon.item() + len(x) * 50.0 * 4, rel=1e-5)
    with pytest.raises(ValueError, match="free_bits must be >= 0"):
        FreeBitsELBO(-1.0)


@pytest.mark.parametrize("name", ["meanfield", "iwae", "renyi", "tracegraph", {"name": "elbo", "free_bits": 0.1}],
                         ids=["meanfield", "iwae", "renyi", "tracegraph", "free-bits"])
def test_every_objective_trains(digits, name):
    x = digits[0]
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=4, net={"name": "mlp", "hidden": [64]})
    from pyro_vae import elbo
    before = elbo(vae, x[1500:])
    fit(vae, x[:1500], epochs=4, objective=model_objective(vae, name, 3 if name in ("iwae", "renyi") else 1),
        progress=False)
    assert elbo(vae, x[1500:]) > before + 10


# ----------------------------------------------------------------------------- compiled objective
def _fixed_noise(shape, dtype, device):
    """Deterministic "standard normal" draws: eager and traced runs then see the same z (a traced graph
    draws its noise with other ops than eager torch, so a shared seed would not align them)."""
    n = math.prod(shape)
    return torch.linspace(-2.0, 2.0, n, dtype=dtype, device=device).sin().reshape(shape)


def _loss_and_grads(loss, vae, *args, **kwargs):
    value = loss.loss_and_grads(vae.model, vae.guide, *args, **kwargs)
    grads = [p.grad.clone() for p in vae.parameters()]
    for p in vae.parameters():
        p.grad = None
    return value, grads


def test_jit_elbo_equals_trace_elbo_for_each_minibatch_size(fitted, monkeypatch):
    """Same z, same numbers: the compiled graph per minibatch size is Trace_ELBO, including the
    N / B scale of a smaller last minibatch (a graph traced at B = 64 would scale 37 points by N / 64)."""
    monkeypatch.setattr(pyro_vae.distributions, "_standard_normal", _fixed_noise)  # the guide's IndependentNormal
    vae, x = fitted
    plain, jit = make_objective("elbo", max_plate_nesting=1), make_objective({"name": "elbo", "jit": True},
                                                                           max_plate_nesting=1)
    for b in (64, 37):
        idx = torch.arange(10, 10 + b)
        _loss_and_grads(jit, vae, x[idx], idx, num_data=200)  # compiles
        want, want_grads = _loss_and_grads(plain, vae, x[idx], idx, num_data=200)
        got, got_grads = _loss_and_grads(jit, vae, x[idx], idx, num_data=200)
        assert got == pytest.approx(want, rel=1e-5)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-3)
    assert len(jit._compiled) == 2
    with pytest.raises(TypeError, match="tensors as positional arguments.*idx by keyword"):
        jit.loss(vae.model, vae.guide, x[:10], idx=torch.arange(10), num_data=200)


def test_fit_with_jit_compiles_once_per_minibatch_size(digits):
    """Pyro keys compiled graphs by keyword values: fit passes idx positionally, so 3 epochs of 4 steps
    (3 of 64 points, then 8) compile two graphs, not one per step."""
    vae = VAE((1, 8, 8), latent_dim=2, net={"name": "mlp", "hidden": [16]})
    loss = make_objective({"name": "elbo", "jit": True}, max_plate_nesting=1)
    result = fit(vae, digits[0][:200], epochs=3, batch_size=64, objective=loss, progress=False)
    assert sorted(key[0][0] for key in loss._compiled) == [8, 64]
    assert len(result.step_losses) == 12 and all(math.isfinite(v) for v in result.step_losses)
    for compiled in (loss, JitTrace_ELBO(), JitTraceGraph_ELBO()):  # ours and Pyro's own, by class
        with pytest.raises(ValueError, match="freezes the KL weight.*linear KL schedule"):
            fit(vae, digits[0][:200], epochs=1, objective=compiled, kl_schedule=KLSchedule("linear", warmup=2),
                progress=False)


# ----------------------------------------------------------------------------- SummedTrace_ELBO
def _step_with(cls, model, guide, args, kwargs, params, validate, **options):
    """Loss, ``loss()`` and gradients of one step of ``cls`` under a fixed seed."""
    with pyro.validation_enabled(validate):  # off, as in training: Pyro's validation takes Trace_ELBO's path
        pyro.set_rng_seed(5)
        elbo = cls(max_plate_nesting=2, **options)
        value = elbo.loss_and_grads(model, guide, *args, **kwargs)
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        pyro.set_rng_seed(5)
        return value, elbo.loss(model, guide, *args, **kwargs), grads


def _assert_same_step(model, guide, args, kwargs, params, validate=False, **options):
    got = _step_with(SummedTrace_ELBO, model, guide, args, kwargs, params, validate, **options)
    want = _step_with(Trace_ELBO, model, guide, args, kwargs, params, validate, **options)
    assert got[0] == pytest.approx(want[0], rel=1e-5) and got[1] == pytest.approx(want[1], rel=1e-5)
    assert any(g.abs().sum() > 0 for g in want[2])
    for g, w in zip(got[2], want[2]):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


CASES = {  # name: (model type, options, wrapper of model and guide, ELBO options)
    "vae": ("vae", {}, None, {}),
    "stacked": ("stacked", {"latent_dims": [4, 2]}, None, {}),
    "cvae": ("cvae", {}, None, {}),
    "grouped (two plates, two scales)": ("grouped", {"num_groups": 3}, None, {}),
    "KL weight 0.3 (two scales)": ("vae", {}, lambda m: LatentScale(m.latent_sites, 0.3), {}),
    "masked points": ("vae", {}, lambda m: poutine.mask(mask=torch.arange(24) % 3 > 0), {}),
    "3 vectorised particles": ("vae", {}, None, {"num_particles": 3, "vectorize_particles": True}),
    "2 particles in a loop": ("vae", {}, None, {"num_particles": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_summed_elbo_is_trace_elbo(case):
    """The default objective against Pyro's Trace_ELBO on the same draws: loss, loss() and every gradient."""
    from pyro_vae.hierarchical import make_model

    kind, options, wrap, elbo_options = CASES[case]
    torch.manual_seed(0)
    model = make_model({"name": kind, **options}, (1, 8, 8), latent_dim=4, net={"name": "mlp", "hidden": [16]})
    x = torch.bernoulli(torch.rand(24, 1, 8, 8))
    extra = {"c": torch.arange(24) % 10, "g": torch.arange(24) % 3}
    args = (x, *(extra[name] for name in getattr(model, "inputs", ("x",))[1:]), torch.arange(24))
    m, g = (wrap(model)(f) if wrap else f for f in (model.model, model.guide))
    _assert_same_step(m, g, args, {"num_data": 100}, list(model.parameters()), **elbo_options)
    guide_trace = poutine.trace(g).get_trace(*args, num_data=100)
    model_trace = poutine.trace(poutine.replay(m, trace=guide_trace)).get_trace(*args, num_data=100)
    assert SummedTrace_ELBO()._summed_elbo(model_trace, guide_trace) is not None  # the summed path was the one tested


def test_summed_elbo_takes_trace_elbos_path_for_score_function_sites_and_under_validation():
    """A discrete guide site needs the score-function term; validation needs Pyro's checks: both give Trace_ELBO."""
    import pyro.distributions as dist
    from torch.distributions import constraints

    x = torch.tensor([0.2, 1.4, -0.3, 0.9])

    def model(x):
        p = pyro.param("p", torch.tensor(0.3), constraint=constraints.unit_interval)
        loc = pyro.param("loc", torch.tensor(0.5))
        with pyro.plate("data", 10, subsample=torch.arange(4)):
            b = pyro.sample("b", dist.Bernoulli(p))
            pyro.sample("x", dist.Normal(loc * b, 1.0), obs=x)

    def guide(x):
        q = pyro.param("q", torch.full((4,), 0.6), constraint=constraints.unit_interval)
        with pyro.plate("data", 10, subsample=torch.arange(4)):
            pyro.sample("b", dist.Bernoulli(q))

    pyro.clear_param_store()
    model(x), guide(x)
    params = [pyro.param(name).unconstrained() for name in ("p", "loc", "q")]
    _assert_same_step(model, guide, (x,), {}, params, num_particles=50, vectorize_particles=True)
    vae = VAE((1, 8, 8), latent_dim=2, net={"name": "mlp", "hidden": [8]})
    xb = torch.bernoulli(torch.rand(6, 1, 8, 8))
    _assert_same_step(vae.model, vae.guide, (xb, torch.arange(6)), {"num_data": 30}, list(vae.parameters()),
                      validate=True)
