"""`pyro-vae train --tensorboard`: event files read back with TensorBoard's own reader equal the run's metrics."""

import json
import math
import shutil
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from pyro_vae import VAE, fit
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.config import load_config
from pyro_vae.tensorboard import SCALAR_TAGS, TensorBoardLogger, TensorBoardMissing

EVERY, BATCH = 5, 128
TRAIN = 1797 - 2 * 180  # the digits less the validation and test splits
STEPS = math.ceil(TRAIN / BATCH)  # steps per epoch
GRID = 8 * (32 + 2) + 2  # 8 tiles of 8x8 enlarged to 32 px a side, 2 px padding: reconstructions and samples
# continuous-bernoulli on scaled digits: a non-zero log-Jacobian, so the units are checked too
ARGS = ["--hidden", "16", "--quiet", "--likelihood", "continuous-bernoulli", "--set", "train.val_every=2",
        "--set", f"output.tensorboard_every={EVERY}"]


def _events(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def _dashboard_tensors(log_dir, tag) -> list:
    """``(step, text)`` of a text summary as the dashboards read it (this reader also purges tensors)."""
    events = plugin_event_accumulator.EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]


def _metrics(run_dir) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _f32(value) -> float:
    return float(np.float32(value))  # TensorBoard stores scalars as float32


def _check_against_the_run(run_dir, epochs):
    """Every logged value equals the run's own: metrics.jsonl per epoch, the checkpoint's step losses."""
    events, lines = _events(run_dir / "tensorboard"), _metrics(run_dir)
    assert [line["epoch"] for line in lines] == list(range(1, epochs + 1))
    lj = lines[0]["log_jacobian"]
    assert lj < -100  # 64 pixels scaled by 1/16: the data's units differ from the model's
    for key, tag in SCALAR_TAGS.items():
        if key == "skipped_steps":
            continue
        expected = [(line["epoch"] * STEPS, _f32(line[key])) for line in lines if line.get(key) is not None]
        assert [(e.step, e.value) for e in events.Scalars(tag)] == expected, tag
    assert [e.step for e in events.Scalars("elbo/val")] == [2 * STEPS * k for k in range(1, epochs // 2 + 1)] + (
        [epochs * STEPS] if epochs % 2 else [])  # every 2nd epoch and the last

    losses = load_checkpoint(run_dir / "checkpoint.pt")["step_losses"]
    assert len(losses) == epochs * STEPS
    logged = [(e.step, e.value) for e in events.Scalars("loss/step")]
    assert logged == [(k, _f32(losses[k - 1] - lj)) for k in range(EVERY, epochs * STEPS + 1, EVERY)]

    validated = [line["epoch"] * STEPS for line in lines if line["val_elbo"] is not None]
    for tag in ("images/reconstructions", "images/samples"):
        assert [(e.step, e.width, e.height) for e in events.Images(tag)] == [(s, GRID, GRID) for s in validated]
    return events


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, one_thread):
    """Two epochs, resumed to four, then put back to the epoch-2 checkpoint (as a kill after epoch 4 would
    leave it, its events written but not its checkpoint) and resumed to five."""
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    assert main(["train", "--out", str(run_dir), "--epochs", "2", "--tensorboard", *ARGS]) == 0
    first = _events(run_dir / "tensorboard")
    shutil.copy(run_dir / "checkpoint.pt", run_dir.parent / "epoch2.pt")
    assert main(["train", "--resume", str(run_dir), "--epochs", "4", "--quiet"]) == 0
    shutil.copy(run_dir.parent / "epoch2.pt", run_dir / "checkpoint.pt")
    assert main(["train", "--resume", str(run_dir), "--epochs", "5", "--quiet"]) == 0
    return run_dir, first


def test_a_run_logs_the_numbers_of_its_metrics(resumed):
    run_dir, first = resumed
    assert [(e.step, e.value) for e in first.Scalars("elbo/train")] == [
        (line["epoch"] * STEPS, _f32(line["train_elbo"])) for line in _metrics(run_dir)[:2]]
    assert [e.step for e in first.Images("images/samples")] == [2 * STEPS]


def test_a_resumed_run_continues_the_curves_without_duplicates(resumed):
    """Epochs 3 and 4 were logged twice, by the interrupted process and by the resumed one: each is there once."""
    run_dir, _ = resumed
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 3  # one file per process
    _check_against_the_run(run_dir, epochs=5)
    assert load_config(run_dir / "config.toml").output.tensorboard  # resumes keep logging


def test_the_config_is_logged_as_text_and_hyperparameters(resumed):
    run_dir, _ = resumed
    events, config = _events(run_dir / "tensorboard"), load_config(run_dir / "config.toml")
    texts = _dashboard_tensors(run_dir / "tensorboard", "config/text_summary")
    assert [step for step, _ in texts] == [0, 2 * STEPS + 1]  # each start; the purged resume's text is gone
    assert texts[-1][1] == f"```toml\n{config.to_toml()}\n```"  # the config as it is now (epochs = 5)
    assert "epochs = 2" in texts[0][1]

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    got = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert got["model.net.hidden"] == "[16]" and got["model.likelihood"] == "continuous-bernoulli"
    assert got["model.latent_dim"] == 8 and got["data.preprocess"] == "scale"
    assert got["run.id"] == config.run.id and got["run.config_hash"] == config.run.config_hash
    assert "train.epochs" not in got and not any(k.startswith("output.") for k in got)  # a resume changes those
    assert got["train.val_every"] == 2 and got["data.val_fraction"] == pytest.approx(0.1)
    experiment = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.experiment.metric_infos] == ["elbo/val", "elbo/train"]


def test_logging_changes_nothing_the_run_computes(resumed, tmp_path, one_thread):
    """The grids are drawn with the RNG forked: a run without logging trains the same numbers."""
    run_dir, _ = resumed
    plain = tmp_path / "plain"
    assert main(["train", "--out", str(plain), "--epochs", "5", *ARGS]) == 0
    keys = ("train_elbo", "val_elbo", "kl", "recon", "active_units")
    assert [[line.get(k) for k in keys] for line in _metrics(plain)] == [[line.get(k) for k in keys]
                                                                     for line in _metrics(run_dir)]
    assert load_config(plain / "config.toml").run.config_hash == load_config(run_dir / "config.toml").run.config_hash


def test_resume_can_turn_logging_on(tmp_path, one_thread):
    run_dir = tmp_path / "run"
    assert main(["train", "--out", str(run_dir), "--epochs", "1", *ARGS]) == 0
    assert not (run_dir / "tensorboard").exists()
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--tensorboard", "--quiet"]) == 0
    events, second = _events(run_dir / "tensorboard"), _metrics(run_dir)[1]
    assert [(e.step, e.value) for e in events.Scalars("elbo/val")] == [(2 * STEPS, _f32(second["val_elbo"]))]
    first_logged = (STEPS // EVERY + 1) * EVERY  # the losses of epoch 2 only
    assert [e.step for e in events.Scalars("loss/step")] == list(range(first_logged, 2 * STEPS + 1, EVERY))
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # its first log: hyperparameters


def test_fit_with_the_logger_from_python(tmp_path, digits, one_thread):
    x = digits[0][:96]
    vae = VAE((1, 8, 8), latent_dim=2, net={"name": "mlp", "hidden": [8]})
    with TensorBoardLogger(tmp_path / "logs", every=3, images=x[:20], samples=12,
                           config={"lr": 0.001, "net": {"hidden": [8]}}) as logger:
        result = fit(vae, x, epochs=2, batch_size=16, val_data=x[:32], callbacks=[logger], progress=False)
    events = _events(tmp_path / "logs")
    assert [(e.step, e.value) for e in events.Scalars("loss/step")] == [
        (k, _f32(result.step_losses[k - 1])) for k in range(3, 13, 3)]
    assert [(e.step, e.value) for e in events.Scalars("elbo/val")] == [
        (6 * r["epoch"], _f32(r["val_elbo"])) for r in result.history]
    # 20 points make 2 whole rows of 8 and their reconstructions; 12 samples: a row of 8 and one of 4
    assert {(e.width, e.height) for e in events.Images("images/reconstructions")} == {(GRID, 4 * 34 + 2)}
    assert {(e.width, e.height) for e in events.Images("images/samples")} == {(GRID, 2 * 34 + 2)}
    start = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert dict(start.session_start_info.hparams)["net.hidden"].string_value == "[8]"


def _without_tensorboard(monkeypatch):
    """As if tensorboard were not installed: importing it (or torch's writer over it) fails."""
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.",
                                                                               "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def test_without_tensorboard_the_run_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, resumed):
    run_dir, _ = resumed
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    _without_tensorboard(monkeypatch)
    with pytest.raises(ImportError, match=r'pip install "pyro-vae\[tensorboard\]"'):
        TensorBoardLogger(tmp_path / "logs")
    with pytest.raises(TensorBoardMissing):
        TensorBoardLogger(tmp_path / "logs")
    assert not (tmp_path / "logs").exists()

    new = tmp_path / "new"
    assert main(["train", "--out", str(new), "--epochs", "1", "--tensorboard", *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("pyro-vae train: error: TensorBoard logging (--tensorboard, output.tensorboard) needs the "
                   'tensorboard package, which is not installed: pip install "pyro-vae[tensorboard]" (or pip '
                   "install tensorboard)")
    assert not new.exists()
    assert main(["train", "--nproc", "2", "--out", str(new), "--tensorboard", *ARGS]) == 2  # before torchrun
    assert "needs the tensorboard package" in capsys.readouterr().err and not new.exists()

    assert main(["train", "--resume", str(run_dir), "--epochs", "6", "--quiet"]) == 2  # the run logs: refused too
    assert "needs the tensorboard package" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    assert main(["train", "--out", str(tmp_path / "plain"), "--epochs", "1", *ARGS]) == 0  # without the flag: runs
    assert not (tmp_path / "plain" / "tensorboard").exists()
