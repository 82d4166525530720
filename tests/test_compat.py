"""Runs written by pyro_vae 0.1.0 (tests/data/legacy_0_1_0, made at commit 0c02680) still load, evaluate,
encode and resume, giving the numbers 0.1.0 gave (plus the log-Jacobian now added for a density)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import REPO
from pyro_vae.checkpoint import load_checkpoint, load_run
from pyro_vae.cli import main

LEGACY = REPO / "tests" / "data" / "legacy_0_1_0"


@pytest.fixture
def legacy(tmp_path):
    for name in ("digits_run", "stacked_run", "wine_run"):
        shutil.copytree(LEGACY / name, tmp_path / name)
    return tmp_path


def _report(argv, capsys):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name, extra", [("digits", ["--iwae-samples", "20"]), ("stacked", [])])
def test_old_runs_evaluate_to_the_same_numbers(legacy, name, extra, capsys):
    old = json.loads((LEGACY / f"{name}_eval.json").read_text())
    new = _report(["evaluate", str(legacy / f"{name}_run"), "--json", "--seed", "3", *extra], capsys)
    assert new["log_jacobian"] == 0.0 and new["preprocess"] == "scale"  # Bernoulli: a mass, no Jacobian
    for key in ("n", "epoch", "seed", "num_particles", "iwae_samples"):
        assert new.get(key) == old.get(key), key
    for key in ("elbo", "iwae_log_likelihood", "iwae_stderr"):
        if key in old:
            assert new[key] == pytest.approx(old[key], rel=1e-9, abs=1e-9), key


def test_an_old_density_run_reports_the_same_model_values_plus_its_log_jacobian(legacy, capsys):
    old = json.loads((LEGACY / "wine_eval.json").read_text())
    new = _report(["evaluate", str(legacy / "wine_run"), "--data", str(LEGACY / "wine.npy"), "--json", "--seed", "3",
                   "--iwae-samples", "20"], capsys)
    std = load_checkpoint(legacy / "wine_run" / "checkpoint.pt")["preprocess"]["scale"].double()
    log_j = -float(torch.log(std).sum())  # standardize: x' = (x - mean) / std per feature
    assert new["log_jacobian"] == pytest.approx(log_j, rel=1e-12) and new["preprocess"] == "standardize"
    assert "of the data as given" in new["units"]
    assert new["elbo"] == pytest.approx(old["elbo"] + log_j, rel=1e-9)
    assert new["iwae_log_likelihood"] == pytest.approx(old["iwae_log_likelihood"] + log_j, rel=1e-9)
    assert math.isclose(log_j, -np.log(np.load(LEGACY / "wine.npy").std(0)).sum(), rel_tol=0.05)  # data's own std


def test_old_runs_encode_alike_and_resume(legacy, tmp_path):
    z = tmp_path / "z.npy"
    assert main(["encode", str(legacy / "wine_run"), str(LEGACY / "wine.npy"), "--out", str(z)]) == 0
    np.testing.assert_array_equal(np.load(z), np.load(LEGACY / "wine_z.npy"))
    run = legacy / "digits_run"
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["epoch"] == 3 and len(payload["history"]) == 3
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    model, config, _ = load_run(legacy / "stacked_run")
    assert type(model).__name__ == "StackedVAE" and config.model.type == "stacked"
