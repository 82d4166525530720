"""Every registered model type through the command line: train, evaluate (IWAE and PSIS where defined),
sample and encode, each exiting as documented with one line and no traceback where it is refused."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from pyro_vae.checkpoint import load_run
from pyro_vae.cli import main
from pyro_vae.models import MODELS

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = {"m2": ["--labelled", "50", "--set", "model.classifier_hidden=[16]"],
           "stacked": ["--set", "model.stage_hidden=[8]"]}
# model types whose latent sites are not all per data point: no per-point importance weights
NOT_PER_POINT = {"grouped": "outside the 'data' plate"}
# model types whose posterior needs each point's label
NEEDS_LABELS = {"cvae"}


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    bunch = load_digits()
    np.save(d / "x.npy", bunch.data[:50])  # raw 0..16 rows, as a user keeps them
    np.savez(d / "xy.npz", x=bunch.data[:50], y=bunch.target[:50])
    return d


# every model type pyro_vae registers (a plugin imported by another test may have added its own)
TYPES = [e.name for e in MODELS if e.target.__module__.startswith("pyro_vae.")]


def test_the_registered_types_are_the_documented_ones():
    assert TYPES == ["vae", "stacked", "m2", "cvae", "grouped"]


@pytest.mark.parametrize("model_type", TYPES)
def test_every_model_type_trains_evaluates_samples_and_encodes(model_type, digits_files, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = _run(["train", "--model", model_type, "--epochs", "1", "--hidden", "16", "--latent-dim", "4",
                           "--quiet", "--out", run, *OPTIONS.get(model_type, [])], capsys)
    assert code == 0, err
    assert {"checkpoint.pt", "config.toml", "metrics.jsonl", "elbo.png", "samples.png"} <= {
        p.name for p in run.iterdir()}

    code, out, err = _run(["evaluate", run, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["n"] == 180 and np.isfinite(report["elbo"]) and report["log_jacobian"] == 0.0

    code, out, err = _run(["evaluate", run, "--json", "--iwae-samples", "50", "--psis"], capsys)
    if model_type in NOT_PER_POINT:
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"model type {model_type!r}" in err and NOT_PER_POINT[model_type] in err
        assert not (run / "evaluation-test.json").exists()
    else:
        assert code == 0, err
        iw = json.loads(out)
        assert iw["iwae_samples"] == 50 and iw["psis_samples"] == 50 and (run / "khat-test.png").is_file()
        assert iw["iwae_log_likelihood"] > iw["elbo"] - 1.0  # a tighter bound, up to Monte Carlo noise
        assert 0.0 <= iw["khat_fraction_above_0_7"] <= 1.0
        assert json.loads((run / "evaluation-test.json").read_text())["iwae_log_likelihood"] == \
            iw["iwae_log_likelihood"]

    png, npy = tmp_path / "s.png", tmp_path / "s.npy"
    assert _run(["sample", run, "-n", "20", "--out", npy, "--seed", "1"], capsys)[0] == 0
    samples = np.load(npy)
    assert samples.shape[1:] == (1, 8, 8) and ((samples >= 0) & (samples <= 1)).all()
    assert _run(["sample", run, "-n", "20", "--out", png], capsys)[0] == 0
    with Image.open(png) as im:
        assert im.format == "PNG"

    model, _, _ = load_run(run)
    latents = tmp_path / "z.npy"
    code, out, err = _run(["encode", run, digits_files / "x.npy", "--out", latents], capsys)
    if model_type in NEEDS_LABELS:
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"model type {model_type!r}" in err and "labels" in err
        code, out, err = _run(["encode", run, digits_files / "xy.npz", "--out", latents], capsys)
    assert code == 0, err
    z = np.load(latents)
    x = torch.tensor(load_digits().data[:50], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    labels = torch.tensor(load_digits().target[:50])
    np.testing.assert_allclose(z, model.posterior_mean(x, labels).numpy(), atol=1e-5)
    assert z.shape == (50, 4) and "posterior means [50, 4]" in out
