"""Components of your own reach the command line: a plugin module registers a model type and a prior.

The plugin is examples/my_components.py: factor analysis written in plain Pyro on
the declared model interface, and a learned-normal prior. Every command runs in a
fresh process, so what evaluate and resume find comes from the run's own config.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_wine

from conftest import REPO
from pyro_vae.checkpoint import load_run
from pyro_vae.config import Config, ConfigError, load_config

PLUGIN = REPO / "examples" / "my_components.py"


def _cli(*argv, cwd=REPO, env=None, timeout=600):
    done = subprocess.run([sys.executable, "-m", "pyro_vae", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    path = tmp_path_factory.mktemp("wine") / "wine.npy"
    x = load_wine().data.astype(np.float32)
    np.save(path, (x - x.mean(0)) / x.std(0))
    return path


@pytest.fixture(scope="module")
def fa_run(wine, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fa") / "run"
    done = _cli("train", "--plugin", PLUGIN, "--model", "factor-analysis", "--data", wine, "--preprocess", "none",
                "--latent-dim", "2", "--epochs", "300", "--batch-size", "142", "--set", "optim.lr=0.02",
                "--set", "train.val_every=100", "--out", run_dir, "--quiet")
    assert done.returncode == 0, done.stderr
    return run_dir


def test_a_plugin_model_trains_and_evaluates_from_the_cli_against_its_exact_marginal(fa_run):
    saved = load_config(fa_run / "config.toml")
    assert saved.plugins == [str(PLUGIN)] and saved.model.type == "factor-analysis"
    done = _cli("evaluate", fa_run, "--iwae-samples", "2000", "--psis", "--json", "--seed", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    model, config, _ = load_run(fa_run)  # the plugin is imported from the run's config
    from pyro_vae.run import load_splits

    x = load_splits(config.data, config.train.seed).test
    exact = model.log_marginal(x).mean().item()  # x ~ N(mu, W W^T + diag(psi)), from the saved weights
    assert report["n"] == len(x) and report["log_jacobian"] == 0.0
    assert report["elbo"] < exact  # a bound
    assert report["iwae_log_likelihood"] == pytest.approx(exact, abs=0.05)  # the estimate converges on it
    assert report["khat_fraction_above_0_7"] == 0.0  # a near-exact guide

    z = fa_run / "z.npy"
    assert _cli("encode", fa_run, REPO / "tests" / "data" / "legacy_0_1_0" / "wine.npy", "--out", z).returncode == 0
    assert np.load(z).shape == (178, 2)
    samples = fa_run / "samples.npy"
    assert _cli("sample", fa_run, "-n", "5", "--out", samples).returncode == 0
    assert np.load(samples).shape == (5, 13)


def test_a_plugin_prior_is_found_again_by_evaluate_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    done = _cli("train", "--plugin", PLUGIN, "--prior", "learned-normal", "--hidden", "16", "--latent-dim", "2",
                "--epochs", "2", "--out", run_dir, "--quiet")
    assert done.returncode == 0, done.stderr
    done = _cli("evaluate", run_dir, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["n"] == 180, done.stderr
    assert _cli("train", "--resume", run_dir, "--epochs", "3", "--quiet").returncode == 0
    model, _, payload = load_run(run_dir)
    assert type(model.prior).__name__ == "LearnedNormal" and payload["epoch"] == 3
    assert not torch.equal(model.prior.loc, torch.zeros(2))  # the prior's parameters were trained


def test_plugins_from_the_config_file_and_errors(tmp_path, capsys):
    from pyro_vae.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f'plugins = ["{PLUGIN}"]\n\n[model]\ntype = "factor-analysis"\nlatent_dim = 2\n')
    loaded = load_config(config)  # the plugin is imported before [model] is checked, so its type is known
    assert loaded.plugins == [str(PLUGIN)] and loaded.model.type == "factor-analysis"
    assert load_config(loaded.save(tmp_path / "again.toml")) == loaded  # written back at the top of the file
    with pytest.raises(ConfigError, match=r"model\.likelihood: model type 'factor-analysis' takes no likelihood"):
        Config.from_dict({"plugins": [str(PLUGIN)], "model": {"type": "factor-analysis", "likelihood": "normal"}})
    assert main(["train", "--plugin", "no_such_plugin_module", "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "plugin 'no_such_plugin_module' cannot be imported" in err and "PYTHONPATH" in err
    assert not (tmp_path / "r").exists()
    assert main(["train", "--plugin", str(tmp_path / "absent.py"), "--quiet"]) == 2
    assert "absent.py' not found" in capsys.readouterr().err


def test_installed_packages_plug_in_through_the_entry_point_group(tmp_path):
    """A package declaring a ``pyro_vae.plugins`` entry point is loaded on the first registry look-up."""
    site = tmp_path / "site"
    (site / "fake_pyro_vae_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "fake_pyro_vae_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-pyro-vae-plugin\nVersion: 0.1\n")
    (site / "fake_pyro_vae_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[pyro_vae.plugins]\nfake = fake_pyro_vae_plugin\n")
    (site / "fake_pyro_vae_plugin.py").write_text(
        "from pyro_vae.priors import Laplace, register_prior\nregister_prior('fake-laplace', Laplace)\n")
    probe = "from pyro_vae.priors import PRIORS; print('fake-laplace' in PRIORS.names())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.strip() == "True", done.stderr
