"""A finite loss that explodes is caught like a NaN: refused before its update, one message, exit 1 (issue #18).

The rule (:class:`pyro_vae.step.Divergence`): a step's loss per data point may
not exceed the best so far by more than ``train.divergence`` (default 1000) x
max(|first loss|, |best loss|, values per point). These tests drive it through
the CLI (the two commands of the issue), through ``fit`` with a scripted
explosion, with ``on_nonfinite="skip"``, on healthy runs whose loss rises (KL
warm-up) or crosses 0 (a normal likelihood on standardised data), and through
the config's checks.
"""

import json
import math

import pytest
import torch

from pyro_vae import VAE, fit, make_optimizer
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.config import Config, ConfigError, load_config
from pyro_vae.objectives import KLSchedule
from pyro_vae.step import DIVERGENCE_FACTOR, Divergence
from pyro_vae.train import TrainingDivergedError

SMALL = ["train", "--epochs", "3", "--hidden", "32", "--quiet"]


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def _closest(losses, data_dim):
    """How near a run came to the rule's limit: the largest (loss - best so far) / scale over its steps."""
    first = best = losses[0]
    worst = -math.inf
    for loss in losses[1:]:
        worst = max(worst, (loss - best) / max(abs(first), abs(best), data_dim))
        best = min(best, loss)
    return worst


def _assert_plausible_metrics(run):
    """Every number in metrics.jsonl (if any) is a sane ELBO-sized value, not 1e29."""
    path = run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for record in records:
        for key, value in record.items():
            if isinstance(value, float) and key != "lr":
                assert math.isfinite(value) and abs(value) < 1e4, (key, value)
    return records


# ----------------------------------------------------------------------------- the issue's commands

@pytest.mark.parametrize("flags, loss", [
    (["--lr", "1e6"], "6.18e+29"),
    (["--lr", "10", "--likelihood", "normal", "--set", 'model.likelihood.scale="decoder"'], "8e+24"),
], ids=["lr-1e6", "lr-10-normal-decoder-scale"])
def test_the_issue_commands_stop_at_the_step_with_one_line(flags, loss, tmp_path, capsys):
    """Both exited 0 with ELBOs of -1e29 before; now: exit 1 at step 2, one line naming the step, the numbers
    and the fix, nothing from the diverged step saved."""
    run = tmp_path / "run"
    code, err = _run([*SMALL, *flags, "--out", str(run)], capsys)
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "training diverged at step 2 (epoch 1, minibatch 2 of 12)" in err
    assert f"the loss rose to {loss} nats per data point, out of the plausible range" in err
    assert "lower the learning rate by 10x" in err and "optim.clip_norm" in err
    assert "no checkpoint had been written yet" in err
    assert not (run / "checkpoint.pt").exists()
    assert _assert_plausible_metrics(run) == []  # epoch 1 never completed


def test_a_later_divergence_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """lr 1e-3 in epoch 1, 10 from epoch 2 (exponential schedule, gamma 1e4): the loss stays finite but jumps to
    1e9 at step 14; checkpoint.pt keeps epoch 1 and the metrics hold epoch 1 only."""
    run = tmp_path / "run"
    code, err = _run([*SMALL, "--lr-schedule", "exponential", "--set", "optim.lr_schedule.gamma=1e4",
                      "--set", "train.checkpoint_every=1", "--out", str(run)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "training diverged at step 14 (epoch 2, minibatch 2 of 12)" in err and "NaN" not in err
    assert "now 10: try 1)" in err  # the lr in use when it diverged, and a tenth of it
    assert f"{run / 'checkpoint.pt'} still holds epoch 1" in err
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["epoch"] == 1 and all(torch.isfinite(v).all() for v in payload["model"].values())
    assert max(payload["step_losses"]) < 50
    assert [r["epoch"] for r in _assert_plausible_metrics(run)] == [1]


def test_the_check_can_be_turned_off(tmp_path, capsys):
    code, err = _run([*SMALL, "--epochs", "1", "--lr", "1e6", "--set", "train.divergence=0",
                      "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err  # the old behaviour, on request


# ----------------------------------------------------------------------------- fit with a scripted explosion

class _Explode:
    """A forward hook on the decoder: from its ``at``-th call on, the decoder's output is multiplied by
    10 ** (4 + calls - at), a finite loss growing by orders of magnitude (Bernoulli logits of 1e4 and more);
    ``only_once`` explodes call ``at`` alone."""

    def __init__(self, vae, at: int, only_once: bool = False):
        self.vae, self.at, self.only_once, self.calls, self.before = vae, at, only_once, 0, None
        vae.decoder.register_forward_hook(self)

    def __call__(self, module, inputs, out):
        self.calls += 1
        if self.calls < self.at or (self.only_once and self.calls > self.at):
            return out
        if self.calls == self.at:
            self.before = {k: v.clone() for k, v in self.vae.state_dict().items()}
        return out * 10.0 ** (4 + self.calls - self.at)


def _vae():
    return VAE((1, 8, 8), latent_dim=4, net={"name": "mlp", "hidden": [32]})


def test_a_finite_explosion_stops_before_its_update(digits):
    """Step 7 (the 2nd of epoch 2) has a loss of ~1e5 nats per point, finite: fit raises there, naming the step
    and the numbers, and the weights are those from before step 7."""
    vae = _vae()
    explode = _Explode(vae, at=7)
    with pytest.raises(TrainingDivergedError, match=r"training diverged at step 7 \(epoch 2, minibatch 2 of 5\): "
                       r"the loss rose to .* nats per data point, out of the plausible range") as err:
        fit(vae, digits[0][:300], epochs=3, batch_size=64, progress=False)
    assert (err.value.step, err.value.epoch) == (7, 2)
    message = str(err.value)
    assert "lower the learning rate by 10x or more (--lr / optim.lr, now 0.001: try 0.0001)" in message
    assert "1000 x the run's scale 64" in message and "the 64 values per data point" in message
    after = vae.state_dict()
    assert explode.before is not None and all(torch.equal(after[k], v) for k, v in explode.before.items())


def test_the_factor_is_the_rule(digits):
    """A factor of 1e9 lets the 1e5-nat step 7 through (its update is applied) and stops at the next, 10x worse
    and beyond, and the rule's limit is what the message says."""
    vae = _vae()
    _Explode(vae, at=7)
    rule = Divergence(1e9)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 1\d ") as err:
        fit(vae, digits[0][:300], epochs=4, batch_size=64, divergence=rule, progress=False)
    assert err.value.step > 7
    assert f"limit {rule.limit:.3g} = the best loss so far, {rule.best:.4g}, + 1e+09 x" in str(err.value)


def test_a_diverged_step_is_skipped_like_a_nan_one(digits):
    vae = _vae()
    explode = _Explode(vae, at=3, only_once=True)
    result = fit(vae, digits[0][:300], epochs=2, batch_size=64, on_nonfinite="skip", progress=False)
    assert explode.calls == 10
    assert [r["skipped_steps"] for r in result.history] == [1, 0]
    assert len(result.step_losses) == 2 * 5 - 1 and max(result.step_losses) < 60  # the 1e5 loss was dropped
    assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_a_whole_epoch_of_diverged_steps_is_one_error(digits):
    vae = _vae()
    _Explode(vae, at=2)  # every step from the 2nd on
    with pytest.raises(TrainingDivergedError, match=r"every step of epoch 2 had a diverged loss \(far outside the "
                       r"plausible range\) and was skipped \(steps 6-10\)\. Fix: lower the learning rate"):
        fit(vae, digits[0][:300], epochs=3, batch_size=64, on_nonfinite="skip", progress=False)


def test_resume_rebuilds_the_rule_from_the_run_s_losses(digits):
    """The rule's state is the applied losses, which a TrainState keeps: after resuming, the limit is the one
    an uninterrupted run would use."""
    from pyro_vae.train import Callback, TrainState

    states = []

    class Keep(Callback):
        def on_epoch_end(self, state, record):
            states.append(state)

    rule = Divergence()
    fit(_vae(), digits[0][:300], epochs=2, batch_size=64, divergence=rule, callbacks=[Keep()], progress=False)
    resumed = Divergence()
    resumed.start(64, states[-1].step_losses)
    assert (resumed.first, resumed.best, resumed.limit) == (rule.first, rule.best, rule.limit)
    assert isinstance(states[0], TrainState) and rule.first == states[0].step_losses[0]


# ----------------------------------------------------------------------------- healthy runs are left alone

def test_kl_warm_up_from_zero_does_not_fire(digits):
    """A linear warm-up of beta from 0 to 4 adds the KL term as it goes, so the loss rises over stretches of the
    run; the rule (on, at its default) never comes near: the closest step is a small fraction of the limit."""
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=16, net={"name": "mlp", "hidden": [64]})
    result = fit(vae, digits[0][:600], epochs=6, batch_size=60, optim=make_optimizer("adam", lr=1e-2),
                 kl_schedule=KLSchedule("linear", 4.0, warmup=4), divergence=Divergence(), progress=False)
    losses = result.step_losses
    assert len(losses) == 60 and len(result.history) == 6
    low = losses.index(min(losses))
    assert max(losses[low:]) > min(losses) + 1  # the loss did rise after its best
    assert _closest(losses, 64) < DIVERGENCE_FACTOR / 1000


def test_a_loss_near_and_below_zero_does_not_fire():
    """A normal likelihood with a learned scale on standardised data: the loss starts at ~33 nats, crosses 0,
    goes negative and jumps back by tens of nats (where a ratio of losses would be meaningless); the floor of one
    nat per value keeps the limit far away."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g) @ torch.randn(2, 16, generator=g)
    x = x + 0.02 * torch.randn(1000, 16, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    torch.manual_seed(0)
    vae = VAE((16,), latent_dim=2, likelihood={"name": "normal", "scale": "decoder"},
              net={"name": "mlp", "hidden": [32]})
    result = fit(vae, x, epochs=10, batch_size=100, optim=make_optimizer("adam", lr=1e-2),
                 divergence=Divergence(), progress=False)
    losses = result.step_losses
    assert len(losses) == 100
    assert losses[0] > 20 and min(losses) < -5 and sum(v < 0 for v in losses) >= 10
    assert any(b > 0 > a for a, b in zip(losses, losses[1:]))  # back above 0 after being below
    assert _closest(losses, 16) < DIVERGENCE_FACTOR / 100


def test_the_rule_in_numbers():
    rule = Divergence(10)
    rule.start(16)
    assert rule.limit == math.inf and rule.accepts(-3.0)  # the first step only sets the scale
    assert rule.scale == 16 and rule.limit == -3.0 + 10 * 16  # near 0: the floor of one nat per value
    assert rule.accepts(157.0) and not rule.accepts(157.5)
    assert rule.best == -3.0  # a refused loss is not recorded
    rule.start(16, [500.0, -40.0])  # large first loss: it sets the scale
    assert rule.scale == 500 and rule.limit == -40 + 5000
    rule.start(4, [3.0, -900.0])  # strongly negative best: |best| sets it
    assert rule.scale == 900


# ----------------------------------------------------------------------------- the config option

def test_the_option_is_in_the_config_and_round_trips(tmp_path):
    assert Config().train.divergence == DIVERGENCE_FACTOR
    for value in (0, False, 1, 50, 1e6):
        config = Config.from_dict({"train": {"divergence": value}})
        assert load_config(config.save(tmp_path / "c.toml")) == config
    from pyro_vae import build

    assert build.divergence(Config.from_dict({"train": {"divergence": 0}}).train) is None
    assert build.divergence(Config.from_dict({"train": {"divergence": False}}).train) is None
    assert build.divergence(Config.from_dict({"train": {"divergence": 50}}).train).factor == 50


@pytest.mark.parametrize("value, words", [
    (-1, "must be 0 or false (off) or a finite factor >= 1"),
    (0.5, "must be 0 or false (off) or a finite factor >= 1"),
    (float("inf"), "must be 0 or false (off) or a finite factor >= 1"),
    (float("nan"), "must be 0 or false (off) or a finite factor >= 1"),
    (True, "takes a factor (a number >= 1, default 1000) or 0/false to turn the check off, got true"),
    ("big", "expected a number or a boolean (true/false), got a string 'big'"),
])
def test_bad_values_are_one_clear_config_error(value, words, tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"train": {"divergence": value}})
    assert str(err.value).startswith("train.divergence: ") and words in str(err.value), str(err.value)
    if isinstance(value, float) and not math.isfinite(value):
        return  # not writable as a --set value
    text = {True: "true", "big": '"big"'}.get(value, str(value))
    code, out = _run([*SMALL, "--set", f"train.divergence={text}", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and out.count("\n") == 1 and "train.divergence: " in out and words in out, out
    assert not (tmp_path / "run").exists()


def test_fit_refuses_a_bad_factor(digits):
    with pytest.raises(ValueError, match="the divergence factor must be a finite number >= 1, got 0.5"):
        fit(_vae(), digits[0][:64], epochs=1, divergence=0.5, progress=False)
    with pytest.raises(TypeError, match="divergence takes a factor"):
        fit(_vae(), digits[0][:64], epochs=1, divergence="1000", progress=False)
    fit(_vae(), digits[0][:64], epochs=1, divergence=None, progress=False)  # off
