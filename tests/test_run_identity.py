"""A run directory belongs to one run and one process (issue #18, items 4-6): its files carry the run's identity
and are refused when they disagree, the directory is locked while a process trains into it, and a data file
given by a relative path is found again from anywhere."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, wait_for_child
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = ["--hidden", "8", "--latent-dim", "2", "--quiet"]
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _lines(run):
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def two_runs(tmp_path, capsys):
    for name in ("a", "b"):  # the same settings: only their identities tell them apart
        assert _run(["train", *FLAGS, "--epochs", "2", "--out", tmp_path / name], capsys)[0] == 0
    return tmp_path / "a", tmp_path / "b"


def test_each_file_of_a_run_carries_its_identity_and_a_new_run_gets_a_new_one(two_runs, tmp_path, capsys):
    a, b = two_runs
    config = load_config(a / "config.toml")
    assert config.run.id and config.run.config_hash == config.config_hash()
    assert load_checkpoint(a / "checkpoint.pt")["config"]["run"] == {"id": config.run.id,
                                                                      "config_hash": config.run.config_hash}
    assert {line["run_id"] for line in _lines(a)} == {config.run.id}
    other = load_config(b / "config.toml")
    assert other.run.id != config.run.id and other.run.config_hash == config.run.config_hash  # same settings
    assert _run(["train", "--config", a / "config.toml", "--out", tmp_path / "c", "--quiet"], capsys)[0] == 0
    again = load_config(tmp_path / "c" / "config.toml")
    assert again.run.id not in (config.run.id, other.run.id) and again.run.config_hash == config.run.config_hash


@pytest.mark.parametrize("command", ["resume", "evaluate", "sample", "encode"])
def test_a_checkpoint_copied_from_another_run_is_refused_naming_both(two_runs, tmp_path, command, capsys):
    """`cp runs/other/checkpoint.pt runs/mine/ && pyro-vae train --resume runs/mine --epochs 4` exited 0,
    replaced config.toml and mixed both runs' metrics."""
    a, b = two_runs
    shutil.copy(b / "checkpoint.pt", a / "checkpoint.pt")
    before = {name: (a / name).read_bytes() for name in ("config.toml", "metrics.jsonl")}
    np.save(tmp_path / "x.npy", np.zeros((3, 64)))
    argv = {"resume": ["train", "--resume", a, "--epochs", "4", "--quiet"], "evaluate": ["evaluate", a],
            "sample": ["sample", a, "--out", tmp_path / "s.npy"],
            "encode": ["encode", a, tmp_path / "x.npy", "--out", tmp_path / "z.npy"]}[command]
    code, out, err = _run(argv, capsys)
    assert code == 1 and err.strip().count("\n") == 0
    ids = [load_config(run / "config.toml").run.id for run in (a, b)]
    assert "its files belong to different runs" in err and all(run_id in err for run_id in ids)
    assert {name: (a / name).read_bytes() for name in before} == before  # nothing replaced or mixed


def test_metrics_of_another_run_are_refused_on_resume(two_runs, capsys):
    a, b = two_runs
    shutil.copy(b / "metrics.jsonl", a / "metrics.jsonl")
    code, out, err = _run(["train", "--resume", a, "--epochs", "3", "--quiet"], capsys)
    assert code == 1 and "files of two runs were mixed" in err
    assert load_checkpoint(a / "checkpoint.pt")["epoch"] == 2


def test_edited_settings_are_refused_on_resume(two_runs, capsys):
    a, _ = two_runs
    text = (a / "config.toml").read_text()
    (a / "config.toml").write_text(text.replace("lr = 0.001", "lr = 0.01"))
    code, out, err = _run(["train", "--resume", a, "--epochs", "3", "--quiet"], capsys)
    assert code == 1 and "its files belong to different runs" in err


# --------------------------------------------------------------------------- one process at a time

def _start(run_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", "--out", str(run_dir), *FLAGS, *extra],
                            cwd=REPO, env=_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_run_directory_is_locked_while_a_process_trains_into_it(tmp_path, capsys):
    """Two trainings into the same --out at once both exited 0, and one run was lost."""
    run = tmp_path / "run"
    child = _start(run, "--epochs", "400", "--set", "train.checkpoint_every=1")
    try:
        wait_for_child(lambda: (run / "checkpoint.pt").exists(), child, run)
        config = (run / "config.toml").read_bytes()
        code, out, err = _run(["train", "--resume", run, "--epochs", "500"], capsys)
        assert code == 1 and err.strip().count("\n") == 0
        assert f"is in use by process {child.pid}" in err and "choose another run directory" in err
        code, out, err = _run(["train", *FLAGS, "--epochs", "1", "--out", run], capsys)  # and a new run
        assert code == 1 and "already holds a run" in err
        assert (run / "config.toml").read_bytes() == config  # the refused commands wrote nothing
    finally:
        child.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel drops it, the file stays
        child.communicate()
    assert (run / ".lock").exists()
    epoch = load_checkpoint(run / "checkpoint.pt")["epoch"]
    code, out, err = _run(["train", "--resume", run, "--epochs", str(epoch + 1), "--quiet"], capsys)
    assert code == 0, err  # a lock left by a dead process stops no one
    assert not (run / ".lock").exists()  # released, and removed, at the end


def test_two_trainings_started_together_into_one_directory_keep_one_run(tmp_path):
    run = tmp_path / "run"
    children = [_start(run, "--epochs", "3") for _ in range(2)]
    results = [child.communicate(timeout=600) + (child.returncode,) for child in children]
    codes = sorted(code for _, _, code in results)
    assert codes == [0, 1], results
    refused = next(err for _, err, code in results if code == 1)
    winner = next(child.pid for child, (_, _, code) in zip(children, results) if code == 0)
    assert f"is in use by process {winner}" in refused or "already holds a run" in refused
    assert "Traceback" not in refused
    assert [line["epoch"] for line in _lines(run)] == [1, 2, 3]  # one run, whole


# --------------------------------------------------------------------------- paths

def test_a_relative_data_path_is_found_again_from_another_directory(tmp_path, monkeypatch, capsys):
    """Relative data paths broke evaluate and --resume from another directory ("counts.csv: no such data file")."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    counts = np.random.default_rng(0).poisson(2.0, (80, 5))
    np.savetxt(work / "counts.csv", counts, delimiter=",", fmt="%d")
    monkeypatch.chdir(work)
    assert _run(["train", "--data", "counts.csv", "--likelihood", "poisson", *FLAGS, "--epochs", "2",
                 "--out", "../runs/r"], capsys)[0] == 0
    run = tmp_path / "runs" / "r"
    saved = load_config(run / "config.toml").data
    assert saved.source == "counts.csv" and saved.source_path == str(work / "counts.csv")  # both kept

    monkeypatch.chdir(elsewhere)
    code, out, err = _run(["evaluate", run, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n"] == 8 and "notes" not in json.loads(out)  # found where the run stored it

    shutil.move(work / "counts.csv", run / "counts.csv")  # moved beside the run: found relative to it, and said so
    code, out, err = _run(["evaluate", run], capsys)
    assert code == 0 and f"note: data: {run / 'counts.csv'} (relative to the run directory" in out
    code, out, err = _run(["train", "--resume", run, "--epochs", "3"], capsys)
    assert code == 0 and "relative to the run directory" in out

    (run / "counts.csv").unlink()
    code, out, err = _run(["evaluate", run], capsys)
    assert code == 1 and err.strip().count("\n") == 0
    assert f"not at {work / 'counts.csv'}, where the run found it" in err and "--data" in err
