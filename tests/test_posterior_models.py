"""Every registered posterior family in every model type: trains, evaluates, encodes and resumes exactly;
what a type cannot do with a family is refused at construction in one line."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch.distributions import Independent, TransformedDistribution

from pyro_vae import elbo, fit
from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.cli import main
from pyro_vae.evaluate import iwae_log_likelihood
from pyro_vae.models import Unsupported, one_hot
from pyro_vae.models.registry import make_model
from pyro_vae.posteriors import POSTERIORS, make_posterior
from pyro_vae.train import Callback, TrainState

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest

FAMILIES = POSTERIORS.names()
TYPES = ["vae", "stacked", "m2", "cvae", "grouped"]
N, K, LATENT = 24, 3, 3  # points, labels / contexts / groups, latent size (stacked: [3, 2])
TYPE_OPTIONS = {"vae": {}, "stacked": {"latent_dims": [LATENT, 2], "stage_hidden": [8]},
                "m2": {"n_classes": K, "alpha": 1.0, "classifier_hidden": [8]}, "cvae": {"n_classes": K},
                "grouped": {"num_groups": K}}
PRIORS = {"cvae": {"name": "conditional", "hidden": [8]}}  # p(z | c), the CVAE's own
SMALL = {"iaf": {"hidden": [8], "context": 4}, "planar": {"n_flows": 2, "hidden": [8], "context": 4},
         "householder": {"hidden": [8], "context": 4}, "sylvester": {"n_flows": 2},
         "spline": {"hidden": [8], "context": 4}}  # tiny flows; a family not listed gets its defaults


def build(model_type, family, seed=0, **options):
    torch.manual_seed(seed)
    return make_model({"name": model_type, **TYPE_OPTIONS[model_type], **options}, (1, 8, 8), latent_dim=LATENT,
                      prior=PRIORS.get(model_type, "normal"), likelihood="bernoulli",
                      net={"name": "mlp", "hidden": [8]}, posterior={"name": family, **SMALL.get(family, {})})


def inputs_for(model, n=N):
    x = torch.bernoulli(torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    i = torch.arange(n)
    extra = {"y": torch.where(i < 8, i % K, -1), "c": i % K, "g": i % K}  # m2: 8 labelled points, the rest -1
    return (x,) + tuple(extra[name] for name in model.inputs[1:])


def posterior_params(model):
    """The posterior families' own parameters (flows), by their top-level module."""
    return {k: p for k, p in model.named_parameters() if k.partition(".")[0] in ("posterior", "posteriors")}


def make_the_label_matter(m2):
    """M2 with q(z | x, y) far apart per label and q(y | x) far from uniform, so that a posterior mean not
    weighting the labels by q(y | x) misses by many standard errors."""
    with torch.no_grad():
        m2.encoder.net.net.layers[0].weight[:, -K:].mul_(30.0)  # the input is [flatten(x), one_hot(y)]
        m2.classifier.layers[-1].bias.copy_(torch.linspace(-2.0, 2.0, K))


def unwrap(fn):
    """The distribution inside a plate's expansion or ``to_event``."""
    while isinstance(fn, (Independent, ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def first_latent(model):
    return "z1" if "z1" in model.latent_sites else "z"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_type", TYPES)
def test_every_family_trains_evaluates_and_encodes(model_type, family):
    model = build(model_type, family)
    data = inputs_for(model)
    before = {k: p.detach().clone() for k, p in posterior_params(model).items()}
    assert bool(before) or not hasattr(model.posterior, "transforms")  # a flow's transforms are trained

    result = fit(model, data, epochs=1, batch_size=12, progress=False)  # two steps
    assert len(result.step_losses) == 2 and all(map(math.isfinite, result.step_losses))
    for k, p in posterior_params(model).items():
        assert not torch.equal(p.detach(), before[k]), f"{k} was not trained"
    assert math.isfinite(elbo(model, data))

    # IWAE: the same draws whatever the chunking (data tiled to 72 rows: more than one 64-row chunk)
    tiled = tuple(t.repeat(3, *[1] * (t.dim() - 1)) for t in data)
    if model_type == "grouped":  # u_g is shared by a group's points: no per-point importance weights
        with pytest.raises(Unsupported, match="outside the 'data' plate") as err:
            iwae_log_likelihood(model, tiled, num_samples=12, seed=3)
        assert "\n" not in str(err.value)
    else:
        one = iwae_log_likelihood(model, tiled, num_samples=12, seed=3, batch_size=256)
        chunked = iwae_log_likelihood(model, tiled, num_samples=12, seed=3, batch_size=64, particle_chunk=5)
        assert math.isfinite(one.mean) and torch.equal(one.per_point, chunked.per_point)

    # posterior_mean is E_q[z | x] (M2: the label summed out by q(y | x)): the mean of the guide's own draws
    if model_type == "m2":
        make_the_label_matter(model)
    draws, flow = 2000, hasattr(model.posterior, "mean_draws")
    for q in model.modules():  # a flow's mean is a Monte Carlo mean: as many draws as the reference's
        if hasattr(q, "mean_draws"):
            q.mean_draws = draws
    labels = data[1] if len(data) > 1 else None
    mean = model.posterior_mean(data[0], labels)
    assert mean.shape == (N, LATENT) and bool(torch.isfinite(mean).all())
    guide_data = data if model_type != "m2" else (data[0], torch.full((N,), -1))  # m2: every label unknown
    with torch.no_grad(), pyro.plate("draws", draws, dim=-2):
        z = poutine.trace(model.guide).get_trace(*guide_data).nodes[first_latent(model)]["value"]
    tol = 5 * z.std(0) * math.sqrt((1 + flow) / draws)
    assert bool(((z.mean(0) - mean).abs() <= tol).all()), (z.mean(0) - mean).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_type", TYPES)
def test_every_family_resumes_bitwise_through_a_checkpoint(model_type, family, tmp_path):
    """2 epochs straight == 1 epoch, saved with pyro_vae.checkpoint, loaded and resumed in a fresh model."""
    data = inputs_for(build(model_type, family))
    straight = build(model_type, family)
    full = fit(straight, data, epochs=2, batch_size=12, seed=5, progress=False)

    class Save(Callback):
        def on_epoch_end(self, state, record):
            save_checkpoint(tmp_path / "ckpt.pt", state)

    fit(build(model_type, family), data, epochs=1, batch_size=12, seed=5, callbacks=[Save()], progress=False)
    state = TrainState.from_payload(load_checkpoint(tmp_path / "ckpt.pt"))
    resumed_model = build(model_type, family, seed=1)  # other initial weights: the checkpoint must set them all
    resumed = fit(resumed_model, data, epochs=2, batch_size=12, seed=5, resume=state, progress=False)
    assert resumed.step_losses == full.step_losses
    want, got = straight.state_dict(), resumed_model.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("family", FAMILIES)
def test_m2_posterior_under_enumeration_is_the_posterior_of_each_label(family):
    """TraceEnum_ELBO calls q(z | x, y) once with all K labels (parameters [K, B, *]): each row's draw and
    density equal those of the posterior built for that label alone, from the same base draw."""
    model = build("m2", family)
    x, _ = inputs_for(model)
    with torch.no_grad():
        trace = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x, None)
        site = trace.nodes["z"]
        z, log_q = site["value"], site["fn"].log_prob(site["value"])
        assert z.shape == (K, N, LATENT) and log_q.shape == (K, N)
        flow = unwrap(site["fn"])
        base = flow.transforms[0]._cached_x_y[0] if isinstance(flow, TransformedDistribution) else None
        for k in range(K):
            q = model.posterior(*model.encoder(x, one_hot(torch.full((N,), k), K)))  # batch [N]: label k alone
            if base is None:
                z_k, log_q_k = z[k], q.log_prob(z[k])
            else:  # push row k's base draw through this label's flow; its caches then score the draw
                z_k = base[k]
                for t in unwrap(q).transforms:
                    z_k = t(z_k)
                log_q_k = q.log_prob(z_k)
            torch.testing.assert_close(z_k, z[k], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(log_q_k, log_q[k], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", ["iaf", "fullrank"])
def test_stacked_linear_stages_take_a_family_and_encode_per_layer(family):
    """stage_hidden = []: each up-stage is the linear family, sized by its layer's posterior."""
    model = build("stacked", family, stage_hidden=[])
    assert all(type(up).__name__ == "LinearEncoder" for up in model.up)
    x, = inputs_for(model)
    assert math.isfinite(fit(model, x, epochs=1, batch_size=12, progress=False).final_elbo)
    layers = model.encode(x)
    for params, q in zip(layers, model.posteriors):
        assert [p.shape for p in params] == [(N, h.size) for h in q.heads]
    # the deterministic upward pass feeds each stage the posterior mean of the layer below
    with torch.no_grad():
        above = model.up[0](model.posteriors[0].mean(*layers[0]))
    assert all(torch.equal(a, b) for a, b in zip(above, layers[1]))


@pytest.mark.parametrize("family", ["student-t", "fullrank"])
def test_a_vamp_prior_on_a_stack_mixes_the_top_layer_s_posterior(family):
    """p(z_L) = 1/M sum_m q_L(z | u_m): the top layer's family at its pseudo-inputs' upward parameters."""
    torch.manual_seed(0)
    model = make_model({"name": "stacked", **TYPE_OPTIONS["stacked"]}, (1, 8, 8), latent_dim=LATENT,
                       prior={"name": "vamp", "n_components": 4}, net={"name": "mlp", "hidden": [8]},
                       posterior=family)
    assert model.posterior is model.posteriors[-1]
    z = torch.randn(5, 2)
    with torch.no_grad():
        top = model.encode(model.prior.pseudo_inputs)[-1]  # [M, *] per head
        components = torch.stack([model.posteriors[-1](*(p[m] for p in top)).log_prob(z) for m in range(4)])
        want = components.logsumexp(0) - math.log(4)
        torch.testing.assert_close(model.prior().log_prob(z), want)


@pytest.mark.parametrize("family", ["normal", "student-t", "lowrank", "fullrank"])
def test_a_vamp_prior_mixes_the_vae_s_posterior_and_generates(family):
    """The one-layer VAE's VampPrior is 1/M sum_m q(z | u_m) in the VAE's family; the model draws from it
    (``sample``, which ``pyro-vae sample`` and the run's figures call)."""
    torch.manual_seed(0)
    model = make_model("vae", (1, 8, 8), latent_dim=LATENT, prior={"name": "vamp", "n_components": 4},
                       net={"name": "mlp", "hidden": [8]}, posterior=family)
    z = torch.randn(5, LATENT)
    with torch.no_grad():
        params = model.encoder(model.prior.pseudo_inputs)
        components = torch.stack([model.posterior(*(p[m] for p in params)).log_prob(z) for m in range(4)])
        torch.testing.assert_close(model.prior().log_prob(z), components.logsumexp(0) - math.log(4))
    draws = model.sample(6)
    assert draws.shape == (6, 1, 8, 8) and bool(torch.isfinite(draws).all())


NOT_NORMAL = [f for f in FAMILIES if f != "normal"]


@pytest.mark.parametrize("family", NOT_NORMAL)
def test_the_ladder_refuses_every_family_but_normal(family):
    with pytest.raises(ValueError) as err:
        build("stacked", family, inference="ladder")
    msg = str(err.value)
    assert "\n" not in msg and "StackedVAE" in msg and repr(family) in msg and "'bottom-up'" in msg, msg
    assert build("stacked", "normal", inference="ladder").inference == "ladder"


def test_refusals_are_one_line_and_the_cli_exits_2(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"^StackedVAE builds one posterior per layer: give the family by name or "
                                         r"dict .*not a Posterior object$"):
        make_model({"name": "stacked", "latent_dims": [3, 2]}, (1, 8, 8), posterior=make_posterior("iaf", 3))
    with pytest.raises(ValueError, match=r"^householder posterior: a reflection needs latent_dim >= 2 \(StackedVAE "
                                         r"layer z2 has size 1; latent_dims \[3, 1\]\)$"):
        make_model({"name": "stacked", "latent_dims": [3, 1]}, (1, 8, 8), posterior="householder")
    single = make_model({"name": "stacked", "latent_dims": [3]}, (1, 8, 8), latent_dim=3,
                        posterior=make_posterior("iaf", 3))
    assert single.posteriors[0] is single.posterior
    with pytest.raises(ValueError, match=r"vamp prior .* flow posterior \('planar'\) does not form; use posterior "
                                         r"'normal'"):
        make_model({"name": "stacked", "latent_dims": [3, 2]}, (1, 8, 8), prior="vamp", posterior="planar")
    for argv in (["--posterior", "iaf", "--set", "model.inference=ladder"], ["--posterior", "iaf", "--prior", "vamp"]):
        code = main(["train", "--model", "stacked", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and "iaf" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluation_noise_streams_draw_from_the_posterior_itself(family):
    """Two estimators of the ELBO must agree: the mean log weight over the evaluation noise streams
    (``log_importance_weights``: a Gaussian as loc + L eps, a flow as its base draw pushed through its
    transforms, a Student-t by its inverse CDF) and the mean over the family's own ``rsample`` in Pyro
    traces. A stream drawing from anything but q (a transposed Cholesky factor, transforms out of order)
    moves the first by many standard errors."""
    from pyro_vae.evaluate import log_importance_weights
    from pyro_vae.importance import densities

    model = build("vae", family, seed=3)
    x = inputs_for(model)[0]
    draws = 400
    with torch.no_grad():
        streams = log_importance_weights(model, x, num_samples=draws, seed=0).double()  # [N, K]
        torch.manual_seed(5)
        with pyro.plate("particles", draws, dim=-2):
            guide = poutine.trace(model.guide).get_trace(x)
            replayed = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x)
        own = densities(guide, replayed, -2).log_weight.double().T  # [N, K]
    se = math.sqrt((streams.var(1) / draws + own.var(1) / draws).sum().item()) / x.shape[0]
    assert abs(streams.mean().item() - own.mean().item()) < 4 * se, (streams.mean(), own.mean(), se)
