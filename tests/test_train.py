"""Training on the embedded digits improves the held-out ELBO for every likelihood that fits the data."""

import pytest
import torch

from pyro_vae import VAE, elbo, fit, make_optimizer
from pyro_vae.train import Callback

# (likelihood spec, transform of the [0, 1] digits into the likelihood's support, asserted gain in nats/point)
CASES = {
    "bernoulli": ({"name": "bernoulli"}, lambda x: x, 10.0),
    "continuous-bernoulli": ({"name": "continuous-bernoulli"}, lambda x: x, 10.0),
    "normal": ({"name": "normal", "scale": "feature"}, lambda x: x, 20.0),
    "laplace": ({"name": "laplace", "scale": "feature"}, lambda x: x, 20.0),
    "poisson": ({"name": "poisson"}, lambda x: (x * 16).round(), 20.0),
    "negative-binomial": ({"name": "negative-binomial"}, lambda x: (x * 16).round(), 20.0),
    "zinb": ({"name": "zinb"}, lambda x: (x * 16).round(), 20.0),
    "categorical": ({"name": "categorical", "levels": 17}, lambda x: (x * 16).round(), 20.0),
}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_training_improves_heldout_elbo(digits, name):
    spec, transform, margin = CASES[name]
    x = transform(digits[0])
    train, test = x[:1500], x[1500:]
    vae = VAE((1, 8, 8), latent_dim=8, likelihood=spec, net={"name": "mlp", "hidden": [128]})
    before = elbo(vae, test, num_particles=4)
    result = fit(vae, train, epochs=15, batch_size=64, optim=make_optimizer("adam", lr=3e-3), progress=False,
                 val_data=test, val_every=5)
    after = elbo(vae, test, num_particles=4)
    assert after > before + margin, (before, after)
    assert [r["epoch"] for r in result.history] == list(range(1, 16))
    assert [r["epoch"] for r in result.history if "val_elbo" in r] == [5, 10, 15]
    assert len(result.step_losses) == 15 * 24


def test_fit_is_reproducible_under_a_seed(digits):
    """Same initial weights and seed: identical losses; another fit seed: different minibatches and noise."""
    x = digits[0][:300]
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(0)  # the weights are drawn at construction, before fit seeds
        vae = VAE((1, 8, 8), latent_dim=2, net={"name": "mlp", "hidden": [32]})
        runs.append(fit(vae, x, epochs=2, seed=seed, progress=False).step_losses)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_resume_in_a_new_process_is_bitwise_identical(tmp_path):
    """4 epochs straight == 2 epochs, interrupted, then resumed from the checkpoint in a new process.

    Bitwise on CPU: the checkpoint restores weights, Adam state, the lr scheduler,
    every RNG (minibatch order, dynamic binarisation, latent noise), the KL
    schedule position and the early-stopping bookkeeping.
    """
    import subprocess
    import sys

    from conftest import REPO

    script = REPO / "tests" / "resume_script.py"

    def run(mode, ckpt, out):
        done = subprocess.run([sys.executable, str(script), mode, str(ckpt), str(out)], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    run("straight", tmp_path / "a.pt", tmp_path / "straight.pt")
    run("interrupt", tmp_path / "b.pt", tmp_path / "unused.pt")
    assert not (tmp_path / "unused.pt").exists()
    run("resume", tmp_path / "b.pt", tmp_path / "resumed.pt")
    straight, resumed = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "resumed.pt")
    assert resumed["step_losses"] == straight["step_losses"]
    assert resumed["history"] == straight["history"]
    assert all(torch.equal(a, b) for a, b in zip(straight["params"], resumed["params"]))


def test_early_stopping_on_a_scripted_validation_curve(digits, monkeypatch):
    import pyro_vae.train as train_module

    curve = iter([-50.0, -40.0, -30.0, -31.0, -30.5, -32.0, -20.0, -10.0])
    monkeypatch.setattr(train_module, "evaluate_elbo", lambda vae, data: next(curve))
    weights = {}

    class Keep(Callback):
        def on_epoch_end(self, state, record):
            weights[record["epoch"]] = state.model

    x = digits[0][:200]
    vae = VAE((1, 8, 8), latent_dim=2, net={"name": "mlp", "hidden": [16]})
    result = fit(vae, x, epochs=8, val_data=x[:10], early_stopping=3, callbacks=[Keep()],
                 progress=False)
    # best at epoch 3 (-30); epochs 4, 5, 6 fail to improve -> stop after epoch 6
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.stopped_early and result.best_epoch == 3
    assert [r["best"] for r in result.history] == [True, True, True, False, False, False]
    for name, value in vae.state_dict().items():
        assert torch.equal(value, weights[3][name]), name
    assert not torch.equal(weights[6]["decoder.net.layers.0.weight"], weights[3]["decoder.net.layers.0.weight"])


def test_learning_rate_schedule_and_bad_training_options(digits):
    x = digits[0][:256]
    result = fit(VAE((1, 8, 8), latent_dim=2), x, epochs=3, progress=False,
                 optim=make_optimizer("adam", lr=0.01, schedule={"name": "step", "step_size": 2, "gamma": 0.1},
                                      epochs=3))
    assert [r["lr"] for r in result.history] == pytest.approx([0.01, 0.01, 0.001])  # lr used in each epoch
    vae = VAE((1, 8, 8), latent_dim=2)
    with pytest.raises(ValueError, match=r"unknown option 'gama' for lr schedule 'step'.*Did you mean 'gamma'"):
        fit(vae, x, epochs=1, optim=make_optimizer("adam", schedule={"name": "step", "step_size": 2, "gama": 0.1},
                                                   epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'.*Did you mean 'adam'"):
        fit(vae, x, epochs=1, optim=make_optimizer("adamm"), progress=False)
    with pytest.raises(ValueError, match="early stopping watches the validation ELBO: pass val_data"):
        fit(vae, x, epochs=1, early_stopping=3, progress=False)
    with pytest.raises(ValueError, match="learning rate must be > 0"):
        fit(vae, x, epochs=1, optim=make_optimizer("adam", lr=-1.0), progress=False)


class _Poison:
    """A forward hook on the decoder that makes step ``at`` produce NaN: in the loss, or only in the gradients."""

    def __init__(self, vae, at: int, where: str):
        self.vae, self.at, self.where, self.calls, self.before = vae, at, where, 0, None
        vae.decoder.register_forward_hook(self)

    def __call__(self, module, inputs, out):
        self.calls += 1
        if self.calls != self.at:
            return out
        self.before = {k: v.clone() for k, v in self.vae.state_dict().items()}
        if self.where == "loss":
            return out * float("nan")
        out.register_hook(lambda g: torch.full_like(g, float("nan")))
        return out


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_step_stops_before_the_update(digits, where):
    """The step whose loss (or only its gradient) is NaN raises, names the step, and leaves the previous weights."""
    from pyro_vae.train import TrainingDivergedError

    vae = VAE((1, 8, 8), latent_dim=4, net={"name": "mlp", "hidden": [32]})
    poison = _Poison(vae, at=7, where=where)  # 6 clean steps of 64 (epoch 1 has 5), the 7th is the 2nd of epoch 2
    with pytest.raises(TrainingDivergedError, match=r"step 7 \(epoch 2.*learning rate") as err:
        fit(vae, digits[0][:300], epochs=3, batch_size=64, progress=False)
    assert (err.value.step, err.value.epoch) == (7, 2)
    after = vae.state_dict()
    assert poison.before is not None and all(torch.equal(after[k], v) for k, v in poison.before.items())


def test_nonfinite_steps_can_be_skipped(digits):
    vae = VAE((1, 8, 8), latent_dim=4, net={"name": "mlp", "hidden": [32]})
    _Poison(vae, at=3, where="grad")
    result = fit(vae, digits[0][:300], epochs=2, batch_size=64, on_nonfinite="skip", progress=False)
    assert [r["skipped_steps"] for r in result.history] == [1, 0]
    assert len(result.step_losses) == 2 * 5 - 1
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    with pytest.raises(ValueError, match="on_nonfinite"):
        fit(vae, digits[0][:300], epochs=1, on_nonfinite="ignore", progress=False)


@pytest.mark.parametrize("bad, finite", [(None, True), (float("nan"), False), (float("inf"), False),
                                         (-float("inf"), False), ("inf-inf", False), (1e30, True)])
def test_gradient_check_flags_any_nonfinite_element(bad, finite):
    """The step's gradient check (one sum per tensor): NaN, either infinity, or both cancelling in one sum."""
    from pyro_vae.step import _finite

    grads = [torch.randn(40, 30), torch.randn(30)]
    if bad == "inf-inf":
        grads[0][3, 4], grads[0][17, 2] = float("inf"), -float("inf")
    elif bad is not None:
        grads[1][7] = bad
    assert _finite(grads) is finite


def test_step_finds_the_parameters_svi_would():
    """The step's parameter capture against ``poutine.trace(param_only=True)`` (what ``SVI.step`` uses):
    the same unconstrained tensors, in the same order, each once, a constrained one included."""
    import pyro
    from pyro import poutine
    from torch.distributions import constraints

    from pyro_vae.step import _ParamCapture

    vae = VAE((1, 8, 8), latent_dim=2, likelihood={"name": "normal", "scale": "shared"},
              net={"name": "mlp", "hidden": [8]})
    x = torch.rand(5, 1, 8, 8)

    def programs():
        vae.guide(x), vae.model(x)
        pyro.param("positive", torch.ones(3), constraint=constraints.positive)
        pyro.param("positive")  # seen twice, captured once

    pyro.clear_param_store()
    with poutine.trace(param_only=True) as trace:
        programs()
    with _ParamCapture() as capture:
        programs()
    want = [site["value"].unconstrained() for site in trace.trace.nodes.values()]
    got = list(capture.params.values())
    assert len(got) == len(want) == sum(p.requires_grad for p in vae.parameters()) + 1
    assert all(a is b for a, b in zip(got, want))
    assert got[-1] is pyro.get_param_store()._params["positive"] and not torch.equal(got[-1], pyro.param("positive"))
