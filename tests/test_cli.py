"""End-to-end `pyro-vae` commands on the embedded digits, checkpoints and error messages."""

import json
import os
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import pyro_vae.run as run_module
from conftest import REPO
from pyro_vae.checkpoint import load_checkpoint, load_run, save_checkpoint
from pyro_vae.cli import build_parser, main, train_config
from pyro_vae.config import load_config
from pyro_vae.evaluate import elbo
from pyro_vae.run import METRIC_KEYS
from pyro_vae.train import rng_state, set_rng_state

EPOCHS = 3
FIGURES = ("elbo.png", "reconstructions.png", "samples.png", "latent.png", "interpolation.png")


def _train_args(out, *extra):
    return ["train", "--out", str(out), "--epochs", str(EPOCHS), "--hidden", "32", "--quiet",
            "--set", "train.checkpoint_every=2", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One in-process `pyro-vae train`, with the in-memory RunResult kept for comparisons."""
    out = tmp_path_factory.mktemp("cli") / "run"
    kept, real = {}, run_module.train_run

    def keep(config, **kwargs):
        kept["result"] = real(config, **kwargs)
        return kept["result"]

    run_module.train_run = keep  # cli imports train_run from pyro_vae.run when the command runs
    try:
        assert main(_train_args(out)) == 0
    finally:
        run_module.train_run = real
    return kept["result"]


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- train artefacts

def test_train_writes_valid_artefacts(run):
    d = run.run_dir
    for name in ("checkpoint.pt", "config.toml", "metrics.jsonl", *FIGURES):
        assert (d / name).is_file(), name
    for name in FIGURES:
        with Image.open(d / name) as im:
            im.load()
            assert im.format == "PNG" and min(im.size) > 10
    lines = _metrics(d)
    assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
    for line in lines:
        assert set(METRIC_KEYS) <= set(line)
        assert line["val_elbo"] == pytest.approx(line["recon"] - line["kl"], abs=1.0)  # two estimates, one ELBO
        assert line["kl"] >= 0
    assert load_config(d / "config.toml") == run.config
    assert run.config.output.run_dir == str(d)
    assert [r["train_elbo"] for r in run.history] == [line["train_elbo"] for line in lines]


def test_checkpoint_rebuilds_the_trained_model(run):
    vae, config, payload = load_run(run.run_dir)
    assert config == run.config
    assert payload["epoch"] == EPOCHS and len(payload["history"]) == EPOCHS
    assert payload["format"] == 1 and payload["data_shape"] == [1, 8, 8]
    assert set(payload["versions"]) >= {"pyro_vae", "torch", "pyro"}
    assert payload["optim"]  # optimiser state of every parameter
    for key, value in run.vae.state_dict().items():
        assert torch.equal(vae.state_dict()[key], value.cpu()), key
    x = run.splits.test
    pyro.set_rng_seed(5)
    expected = elbo(run.vae, x)
    pyro.set_rng_seed(5)
    assert elbo(vae, x) == pytest.approx(expected, abs=1e-6)


def test_checkpoint_rng_state_restores(run):
    payload = load_checkpoint(run.run_dir / "checkpoint.pt")
    set_rng_state(payload["rng"])  # numpy's state comes back in the tuple form numpy takes
    first = (torch.rand(3), np.random.rand(3))
    set_rng_state(payload["rng"])
    assert torch.equal(torch.rand(3), first[0]) and np.array_equal(np.random.rand(3), first[1])


def test_evaluate_json_matches_the_in_memory_model(run, capsys):
    assert main(["evaluate", str(run.run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["n"] == len(run.splits.test) == 180
    pyro.set_rng_seed(run.config.train.seed)
    assert report["elbo"] == pytest.approx(elbo(run.vae, run.splits.test), abs=1e-6)

    assert main(["evaluate", str(run.run_dir), "--split", "val", "--num-particles", "3"]) == 0
    assert "val ELBO: -" in capsys.readouterr().out


def test_sample_and_encode(run, tmp_path, capsys):
    png, npy = tmp_path / "s.png", tmp_path / "s.npy"
    assert main(["sample", str(run.run_dir), "-n", "10", "--out", str(png)]) == 0
    with Image.open(png) as im:
        im.load()
    assert main(["sample", str(run.run_dir), "-n", "10", "--out", str(npy), "--draw"]) == 0
    assert np.load(npy).shape == (10, 1, 8, 8)

    raw = load_digits().data[:40]  # flat raw rows 0..16: reshaped and scaled as in training
    data, latents = tmp_path / "digits.npy", tmp_path / "z.npy"
    np.save(data, raw)
    assert main(["encode", str(run.run_dir), str(data), "--out", str(latents), "--device", "auto"]) == 0
    z = np.load(latents)
    assert z.shape == (40, 8) and z.dtype == np.float32
    x = torch.tensor(raw, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    np.testing.assert_allclose(z, run.vae.encode(x)[0].cpu().numpy(), atol=1e-5)
    assert "posterior means [40, 8]" in capsys.readouterr().out

    assert main(["evaluate", str(run.run_dir), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 40


def test_rerun_from_saved_config_reproduces_metrics(run, tmp_path):
    """A real `python -m pyro_vae` process repeating the run from its config.toml."""
    other = tmp_path / "again"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--config", str(run.run_dir / "config.toml"),
                           "--out", str(other)], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert f"run directory: {other}" in done.stdout
    first, second = _metrics(run.run_dir), _metrics(other)
    for key in ("train_elbo", "val_elbo", "kl", "recon"):
        assert [line[key] for line in second] == [line[key] for line in first], key


def test_train_refuses_to_overwrite_a_run(run, capsys):
    assert main(_train_args(run.run_dir)) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_flags_map_onto_config_keys(tmp_path):
    config_file = tmp_path / "c.toml"
    config_file.write_text("[model]\nlatent_dim = 3\n[train]\nepochs = 7\n")
    args = build_parser().parse_args([
        "train", "--config", str(config_file), "--data", "x.npy", "--net", "mlp", "--hidden", "400,400",
        "--prior", "mog", "--set", "model.prior.n_components=5", "--lr", "0.01", "--download",
        "--set", 'objective={name="renyi", alpha=0.5, num_particles=4}'])
    config = train_config(args)
    assert config.data.source == "x.npy" and config.data.download is True
    assert config.model.latent_dim == 3 and config.train.epochs == 7  # from the file
    assert config.model.net == {"name": "mlp", "hidden": [400, 400]}
    assert config.model.prior == {"name": "mog", "n_components": 5}
    assert config.optim.lr == 0.01
    assert config.objective.spec() == {"name": "renyi", "alpha": 0.5} and config.objective.num_particles == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_auto_is_cuda_where_it_exists():
    from pyro_vae.run import resolve_device

    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_missing_cuda_is_a_runtime_error(tmp_path, capsys):
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r")]) == 1
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- bad input

@pytest.fixture
def bad_config(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[optim]\nlr = "fast"\n')
    return path


@pytest.mark.parametrize("argv, code, message", [
    (["train", "--set", "model.laten_dim=3"], 2,
     "unknown key 'model.laten_dim'; [model] takes type, latent_dim, prior, posterior, likelihood, net and the options "
     "of model type 'vae' (encoder, decoder). "
     "Did you mean 'model.latent_dim'?"),
    (["train", "--prior", "gaussian"], 2, "model.prior: unknown prior 'gaussian'; valid prior names are 'normal', "
                                          "'laplace', 'student-t', 'mog', 'vamp'"),
    (["train", "--likelihood", "bernouli"], 2, "Did you mean 'bernoulli'?"),
    (["train", "--lr", "-0.1"], 2, "optim.lr: learning rate must be > 0, got -0.1"),
    (["train", "--latent-dim", "abc"], 2, "argument --latent-dim: invalid int value: 'abc'"),
    (["train", "--hidden", "4x"], 2, "expected comma-separated layer sizes"),
    (["train", "--config", "BAD"], 2, "optim.lr: expected a number, got a string 'fast'"),
    (["train", "--config", "nowhere.toml"], 2, "config file 'nowhere.toml' not found"),
    (["train", "--objective", "iwea"], 2, "objective.name: unknown objective 'iwea'"),
    (["train", "--resume", "runs/x"], 1, "run directory 'runs/x' not found"),
    (["train", "--resume", "runs/x", "--lr", "0.1"], 2, "it takes only --epochs, not --lr"),
    (["train", "--kl-schedule", "warmup"], 2, "objective.kl_schedule: unknown kl schedule 'warmup'; valid kl schedule "
                                              "names are 'constant', 'linear', 'cyclical'"),
    (["train", "--set", "optim.lr_schedule={name=\"step\", gama=0.1}"], 2,
     "optim.lr_schedule: unknown option 'gama' for lr schedule 'step'"),
    (["train", "--early-stopping", "0"], 2, "train.early_stopping: patience must be >= 1"),
    (["train", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["train", "--data", "missing.npy", "--out", "OUT"], 1, "missing.npy: no such data file"),
    (["evaluate", "no/such/run"], 1, "run directory 'no/such/run' not found"),
    ([], 2, "usage: pyro-vae"),
])
def test_errors_are_one_clear_message(argv, code, message, bad_config, tmp_path, capsys):
    argv = [str(bad_config) if a == "BAD" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # a run that cannot start leaves nothing behind


def test_encode_rejects_data_of_the_wrong_shape(run, tmp_path, capsys):
    data = tmp_path / "wide.npy"
    np.save(data, np.zeros((5, 10)))
    assert main(["encode", str(run.run_dir), str(data)]) == 1
    err = capsys.readouterr().err
    assert "rows of shape (10,) do not fit the model" in err and "(1, 8, 8)" in err


@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "encode"])
def test_help_of_every_command(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: pyro-vae {command}" in out and "example" in out


def test_train_help_shows_config_keys_and_defaults(capsys):
    main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "[model.latent_dim; default 8]" in out and "[optim.lr; default 0.001]" in out


# --------------------------------------------------------------------------- atomic checkpoints

def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.ones(3), "rng": rng_state()})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    payload = load_checkpoint(path)
    assert payload["epoch"] == 1 and torch.equal(payload["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable pyro_vae checkpoint"):
        load_checkpoint(path)


def test_resume_continues_a_run_exactly(tmp_path):
    """4 epochs straight == 2 epochs, then `train --resume RUN --epochs 4`: identical metrics, weights, best.pt."""
    import json

    import torch

    from pyro_vae.checkpoint import load_checkpoint

    flags = ["--epochs", "4", "--quiet", "--early-stopping", "3", "--kl-schedule", "linear", "--lr-schedule",
             "exponential", "--preprocess", "dynamic-binarize", "--set", "train.checkpoint_every=1"]
    assert main(["train", *flags, "--out", str(tmp_path / "straight")]) == 0
    short = [f if f != "4" else "2" for f in flags]
    assert main(["train", *short, "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "4", "--quiet"]) == 0

    def metrics(run):
        lines = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if k not in ("seconds", "run_id")} for line in lines]

    assert metrics("split") == metrics("straight")
    ids = {json.loads(line)["run_id"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()}
    assert ids == {load_config(tmp_path / "split" / "config.toml").run.id}  # the resumed lines keep the run's id
    assert [m["epoch"] for m in metrics("split")] == [1, 2, 3, 4]
    for name in ("checkpoint.pt", "best.pt"):
        a, b = load_checkpoint(tmp_path / "straight" / name), load_checkpoint(tmp_path / "split" / name)
        assert a["epoch"] == b["epoch"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # a finished run says how to go further
    assert main(["train", "--resume", str(tmp_path / "split"), "--quiet"]) == 1


def test_evaluate_iwae_and_psis(run, capsys):
    """`evaluate --iwae-samples K --psis`: IWAE >= ELBO (a bound at least as tight), k-hat report, plot, JSON file."""
    import json

    from PIL import Image

    assert main(["evaluate", str(run.run_dir), "--json", "--iwae-samples", "50", "--psis"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["iwae_log_likelihood"] > report["elbo"] - 3 * report["iwae_stderr"]
    assert 0.0 <= report["khat_fraction_above_0_7"] <= 1.0 and report["iwae_samples"] == 50
    Image.open(report["khat_plot"]).verify()
    saved = json.loads((run.run_dir / "evaluation-test.json").read_text())
    assert saved["iwae_log_likelihood"] == report["iwae_log_likelihood"]
