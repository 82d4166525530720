"""A newcomer's run (issue #18): the commands a new user tried that failed, each now refused in one line or
made to work. Each test names the command it replays."""

import shutil
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA
from pyro_vae.cli import main

MNIST_RAW = SHARED_DATA / "MNIST" / "raw"


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_zero_epochs_is_refused_in_one_line_and_leaves_nothing(tmp_path, capsys):
    """`pyro-vae train --epochs 0` ended in a traceback (KeyError: 'snapshot') and left config.toml."""
    code, out, err = _run(["train", "--epochs", "0", "--out", tmp_path / "run"], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "train.epochs: must be >= 1" in err
    assert not (tmp_path / "run").exists()


def test_m2_without_labelled_is_a_configuration_error_that_leaves_nothing(tmp_path, capsys):
    """`--model m2` without data.labelled exited 1 (configuration errors are 2) and left config.toml."""
    code, out, err = _run(["train", "--model", "m2", "--epochs", "1", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "model type 'm2'" in err and "data.labelled" in err and "--labelled 100" in err
    assert not (tmp_path / "run").exists()


def test_a_model_too_large_for_memory_is_refused_with_its_size(tmp_path, capsys):
    """`--latent-dim 1000000000` gave the allocator's raw text (or, with overcommit, an OOM kill later)."""
    code, out, err = _run(["train", "--set", "model.latent_dim=1000000000", "--epochs", "1", "--quiet",
                           "--out", tmp_path / "run"], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "parameters need about" in err and "GiB" in err and "lower model.latent_dim (1000000000)" in err
    assert not (tmp_path / "run").exists()


def test_a_latent_space_larger_than_the_data_is_noted(tmp_path, capsys):
    """`--latent-dim 100000` trained for 77 s on 8x8 digits without a word."""
    code, out, err = _run(["train", "--latent-dim", "80", "--hidden", "8", "--epochs", "1", "--out",
                           tmp_path / "run"], capsys)
    assert code == 0, err
    assert "note: model.latent_dim 80 exceeds the data's 64 values per point" in out
    code, out, err = _run(["train", "--latent-dim", "8", "--hidden", "8", "--epochs", "1", "--out",
                           tmp_path / "small"], capsys)
    assert code == 0 and "exceeds the data's" not in out


def _staged(tmp_path, names=None):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in MNIST_RAW.glob("*.gz"):
        if names is None or archive.name in names:
            shutil.copy(archive, raw / archive.name)
    return tmp_path / "data"


@pytest.mark.skipif(not MNIST_RAW.is_dir(), reason="MNIST archives not in ../shared/data")
def test_offline_mnist_trains_from_the_archives_without_download(tmp_path, capsys):
    """`pyro-vae train --dataset mnist --data-dir D` with D/MNIST/raw/*.gz present said 'not found'."""
    root = _staged(tmp_path)
    code, out, err = _run(["train", "--dataset", "mnist", "--data-dir", root, "--epochs", "1", "--hidden", "16",
                           "--latent-dim", "2", "--batch-size", "1024", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # unpacked by torchvision's own utility


@pytest.mark.skipif(not MNIST_RAW.is_dir(), reason="MNIST archives not in ../shared/data")
def test_offline_mnist_names_exactly_the_missing_and_damaged_files(tmp_path, capsys):
    root = _staged(tmp_path, names={"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                    "t10k-images-idx3-ubyte.gz"})
    (root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(b"not an archive")
    code, out, err = _run(["train", "--dataset", "mnist", "--data-dir", root, "--epochs", "1", "--quiet",
                           "--out", tmp_path / "run"], capsys)
    assert code == 1 and err.strip().count("\n") == 0
    assert "missing t10k-labels-idx1-ubyte.gz" in err and "train-labels-idx1-ubyte.gz is damaged" in err
    assert "missing train-images" not in err and "--download" in err
    assert not (tmp_path / "run").exists()


def test_the_mnist_example_skips_cleanly_without_mnist(tmp_path):
    """`python examples/mnist_vae.py --smoke` gave a traceback when no MNIST was present."""
    done = subprocess.run([sys.executable, str(REPO / "examples" / "mnist_vae.py"), "--smoke", "--data-dir",
                           str(tmp_path / "empty"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "skipped" in done.stdout and "missing train-images-idx3-ubyte.gz" in done.stdout
    full = subprocess.run([sys.executable, str(REPO / "examples" / "mnist_vae.py"), "--data-dir",
                           str(tmp_path / "empty")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert full.returncode == 1 and "Traceback" not in full.stderr and "not found" in full.stderr
