"""The bad-input matrix: every case exits non-zero with one line naming the problem and the fix.

Each row runs `pyro-vae` in-process on files made here and checks the exit code,
the words of the message, that no traceback was printed and that nothing was
left behind. Config typos, unknown component names and wrong value types are
the matrix of ``tests/test_cli.py::test_errors_are_one_clear_message``.
"""

import os

import numpy as np
import pytest
import torch

from pyro_vae.checkpoint import load_checkpoint, load_run, save_checkpoint
from pyro_vae.cli import main
from pyro_vae._io import RunInUse, RunLock
from pyro_vae.config import ConfigError
from pyro_vae.models import Unsupported


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    np.save(d / "nan.npy", np.where(np.eye(40, 6) > 0, np.nan, 0.5).astype(np.float32))
    np.save(d / "inf.npy", np.where(np.eye(40, 6) > 0, np.inf, 0.5).astype(np.float32))
    np.save(d / "big.npy", np.full((40, 6), 3.0, dtype=np.float32))
    np.save(d / "counts.npy", rng.random((40, 6)).astype(np.float32) * 5)  # not integers
    np.save(d / "empty.npy", np.zeros((0, 6), dtype=np.float32))
    np.save(d / "ok.npy", rng.random((40, 6)).astype(np.float32))
    np.save(d / "wide.npy", rng.random((40, 7)).astype(np.float32))
    (d / "a_file").write_text("not a folder")
    lock = RunLock(d / "locked").acquire("a training in another process")  # held for the module's tests
    assert main(["train", "--data", str(d / "ok.npy"), "--out", str(d / "run"), "--epochs", "1", "--hidden", "8",
                 "--latent-dim", "2", "--quiet"]) == 0
    yield d
    lock.release()


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


TRAIN = ["train", "--epochs", "1", "--hidden", "8", "--quiet", "--preprocess", "none"]

MATRIX = [
    # (id, exception type, argv with {d} for the files folder, exit code, words of the message: problem and fix)
    ("nan", ValueError, [*TRAIN, "--data", "{d}/nan.npy"], 1, ["NaN or Inf", "remove or impute them"]),
    ("inf", ValueError, [*TRAIN, "--data", "{d}/inf.npy"], 1, ["NaN or Inf", "remove or impute them"]),
    ("outside-bernoulli", ValueError, [*TRAIN, "--data", "{d}/big.npy"], 1,
     ["outside the support of the 'bernoulli' likelihood", "preprocess 'scale'"]),
    ("non-integer-counts", ValueError, [*TRAIN, "--data", "{d}/counts.npy", "--likelihood", "poisson"], 1,
     ["poisson", "integer"]),
    ("empty", ValueError, [*TRAIN, "--data", "{d}/empty.npy"], 1, ["data is empty", "at least one sample"]),
    ("batch-larger-than-data", ConfigError, [*TRAIN, "--data", "{d}/ok.npy", "--batch-size", "512"], 2,
     ["data.batch_size: 512 is larger than the 32 training points", "--batch-size 32 or less"]),
    ("latent-dim-zero", ConfigError, [*TRAIN, "--latent-dim", "0"], 2, ["model.latent_dim: must be >= 1, got 0"]),
    ("unknown-objective", ConfigError, [*TRAIN, "--objective", "iwea"], 2, ["unknown objective 'iwea'", "Did you mean 'iwae'?"]),
    ("unknown-model-type", ConfigError, [*TRAIN, "--model", "stacket"], 2, ["unknown model 'stacket'", "Did you mean 'stacked'?"]),
    ("run-dir-not-writable", OSError, [*TRAIN, "--data", "{d}/ok.npy", "--out", "{d}/a_file/run"], 1,
     ["cannot write the run directory", "choose a writable place with --out"]),
    ("jit-with-kl-schedule", ConfigError, [*TRAIN, "--jit", "--kl-schedule", "linear"], 2,
     ["objective.jit: a compiled objective freezes the KL weight", "drop jit or use kl_schedule = \"constant\""]),
    ("nproc-zero", ConfigError, [*TRAIN, "--nproc", "0"], 2, ["--nproc must be >= 1"]),
    ("missing-data-file", FileNotFoundError, [*TRAIN, "--data", "{d}/nowhere.npy"], 1,
     ["nowhere.npy: no such data file", "check the path"]),
    ("shape-vs-checkpoint", ValueError, ["evaluate", "{d}/run", "--data", "{d}/wide.npy"], 1,
     ["rows of shape (7,) do not fit the model, which was trained on data points of shape (6,)",
      "pass data with the training data's features"]),
    ("encode-shape-vs-checkpoint", ValueError, ["encode", "{d}/run", "{d}/wide.npy", "--out", "{d}/z.npy"], 1,
     ["rows of shape (7,) do not fit the model", "pass data with the training data's features"]),
    # a finite loss exploding (issue #18); this run starts, writing its config.toml, hence an --out of its own
    ("diverging-loss", FloatingPointError, [*TRAIN, "--data", "{d}/ok.npy", "--batch-size", "8", "--lr", "1e6",
                                            "--out", "{d}/diverged"], 1,
     ["training diverged at step 2 (epoch 1, minibatch 2 of 4)", "out of the plausible range for this data",
      "lower the learning rate by 10x or more", "optim.clip_norm"]),
    # a newcomer's run (issue #18): each refused before anything is written
    ("zero-epochs", ConfigError, [*TRAIN, "--epochs", "0"], 2, ["train.epochs: must be >= 1"]),
    ("m2-without-labelled", Unsupported, [*TRAIN, "--model", "m2"], 2,
     ["model type 'm2'", "needs data.labelled", "--labelled 100"]),
    ("model-too-large", ConfigError, [*TRAIN, "--set", "model.latent_dim=1000000000"], 2,
     ["parameters need about", "GiB", "lower model.latent_dim (1000000000)"]),
    ("sample-unknown-format", ConfigError, ["sample", "{d}/run", "--out", "{d}/s.gif"], 2, ["--out {d}/s.gif", ".npy"]),
    ("run-dir-in-use", RunInUse, [*TRAIN, "--data", "{d}/ok.npy", "--out", "{d}/locked"], 1,
     ["{d}/locked is in use by process", "choose another run directory with --out"]),
    ("mnist-not-here", FileNotFoundError, [*TRAIN, "--dataset", "mnist", "--data-dir", "{d}/no_mnist"], 1,
     ["missing train-images-idx3-ubyte.gz", "--download"]),
]


@pytest.mark.parametrize("exc, argv, code, words", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_bad_input_matrix(files, exc, argv, code, words, capsys, tmp_path, monkeypatch):
    argv = [a.format(d=files) for a in argv]
    words = [w.format(d=files) for w in words]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    with monkeypatch.context() as debug:  # PYRO_VAE_DEBUG: the CLI re-raises, showing the exception type
        debug.setenv("PYRO_VAE_DEBUG", "1")
        with pytest.raises(exc) as raised:
            main(argv)
        assert all(w in str(raised.value) for w in words), str(raised.value)
    got, err = _run(argv, capsys)
    assert got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, no traceback wall
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "run").exists()  # a refused run leaves nothing behind


def _copy_run(files, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(files / "run", run)
    return run


@pytest.mark.parametrize("damage, words", [
    ("garbage", "not a readable pyro_vae checkpoint"),
    ("truncated", "not a readable pyro_vae checkpoint"),
    ("foreign", "not a pyro_vae run checkpoint (no config, data_shape"),
    ("mismatched", "its weights do not fit the model its config describes"),
])
def test_damaged_checkpoints_are_refused_clearly(files, tmp_path, damage, words, capsys):
    run = _copy_run(files, tmp_path)
    path = run / "checkpoint.pt"
    if damage == "garbage":
        path.write_bytes(os.urandom(2000))
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    else:  # the config says latent_dim 5, the weights are for 2 (config.toml agrees with the checkpoint)
        from pyro_vae.config import Config

        payload = load_checkpoint(path)
        payload["config"]["model"]["latent_dim"] = 5
        save_checkpoint(path, payload)
        Config.from_dict(payload["config"]).save(run / "config.toml")
    for command in (["evaluate", str(run)], ["sample", str(run), "--out", str(tmp_path / "s.png")],
                    ["train", "--resume", str(run), "--epochs", "3", "--quiet"]):
        code, err = _run(command, capsys)
        assert code == 1 and words in err and "Traceback" not in err, (command, err)


class _RunsCode:
    """Unpickling this calls os.system: what a crafted 'checkpoint' could do under plain torch.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_its_code_never_runs(files, tmp_path, capsys):
    run = _copy_run(files, tmp_path)
    marker = tmp_path / "code-ran"
    payload = torch.load(run / "checkpoint.pt", weights_only=True)  # the stored form: tensors and plain data
    payload["evil"] = _RunsCode(marker)
    torch.save(payload, run / "checkpoint.pt")  # plain pickle inside torch's zip format
    with pytest.raises(ValueError, match=r"refused to load: the file holds pickled Python objects \(posix\.system\)"):
        load_run(run)
    code, err = _run(["evaluate", str(run)], capsys)
    assert code == 1 and "refused to load" in err
    assert not marker.exists()
    # the payload is real: plain torch.load (weights_only=False) runs it
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_config_files_are_data_not_code(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    config = tmp_path / "c.toml"
    config.write_text(f"[model]\nlatent_dim = \"__import__('os').system('touch {marker}')\"\n")
    code, err = _run(["train", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "model.latent_dim: expected an integer, got a string" in err
    assert not marker.exists()


def test_divergence_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """lr x 1e12 after epoch 1: the NaN appears in epoch 2; the run stops there, naming the step and the
    likely causes, and checkpoint.pt still holds epoch 1 with finite weights."""
    run = tmp_path / "run"
    flags = ["train", "--epochs", "4", "--hidden", "16", "--quiet", "--lr-schedule", "exponential",
             "--set", "optim.lr_schedule.gamma=1e12", "--set", "train.checkpoint_every=1"]
    code, err = _run([*flags, "--out", str(run)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err and "Encountered NaN" not in err
    assert "became NaN/Inf at step 14 (epoch 2, minibatch 2 of 12)" in err
    assert "a learning rate too high" in err and 'train.on_nonfinite = "skip"' in err
    assert f"{run / 'checkpoint.pt'} still holds epoch 1" in err
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["epoch"] == 1 and all(torch.isfinite(v).all() for v in payload["model"].values())

    code, err = _run([*flags, "--out", str(tmp_path / "skip"), "--set", 'train.on_nonfinite="skip"'], capsys)
    assert code == 1 and "every step of epoch 3 had a NaN/Inf loss or gradient and was skipped" in err
    lines = (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()
    assert '"skipped_steps": 0' in lines[0] and '"skipped_steps": 11' in lines[1]  # one step made it through
