"""Log-likelihoods in the user's units: an affine preprocessing adds its log-Jacobian to every reported density.

Ground truth: the analytic Jacobians of 'scale' (-D log span) and 'standardize' (-sum log std), computed
here from the raw training split; and the closed-form maximum likelihood of probabilistic PCA on data in
raw units, which a linear-Gaussian VAE's held-out IWAE must reach whether it was trained on the data as
given or on the data scaled into [0, 1] (one affine map of all features keeps the model linear-Gaussian).
"""

import json

import numpy as np
import pyro
import pytest
import torch
from scipy.stats import multivariate_normal

from pyro_vae.checkpoint import load_run
from pyro_vae.cli import main
from pyro_vae.config import Config, apply_overrides, load_config
from pyro_vae.data import load_dataset
from pyro_vae.evaluate import elbo
from pyro_vae.run import evaluate_run, train_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _raw_data(n=1500, seed=0):
    """A linear-Gaussian data set in raw units: 5 features around 8 with spreads of a few units."""
    rng = np.random.default_rng(seed)
    w, mu = rng.normal(0, 3.0, (5, 2)), rng.normal(8, 3, 5)
    return (rng.normal(size=(n, 2)) @ w.T + mu + rng.normal(0, 1.5, (n, 5))).astype(np.float32)


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "x.npy"
    np.save(path, _raw_data())
    return path


def _ppca_log_likelihood(train: np.ndarray, test: np.ndarray, k: int) -> float:
    """Held-out log p(x) per point under the maximum-likelihood pPCA of ``train`` (Tipping & Bishop 1999)."""
    mean, cov = train.mean(0), np.cov(train.T, bias=True)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    noise = values[k:].mean()
    w = vectors[:, :k] * np.sqrt(values[:k] - noise)
    return multivariate_normal(mean, w @ w.T + noise * np.eye(len(mean))).logpdf(test).mean()


def _config(source, run_dir, preprocess, **extra):
    return apply_overrides(Config(), {
        "data.source": str(source), "data.preprocess": preprocess,
        "model": {"latent_dim": 2, "likelihood": "normal", "net": "linear"}, "output.run_dir": str(run_dir),
        **extra})


@pytest.mark.parametrize("preprocess", ["scale", "standardize"])
def test_the_reported_elbo_is_the_models_plus_the_analytic_log_jacobian(raw_file, tmp_path, preprocess):
    result = train_run(_config(raw_file, tmp_path / "run", preprocess, **{"train.epochs": 2}), progress=False)
    train = load_dataset(str(raw_file), preprocess="none", seed=0).train.double()  # the raw training split
    if preprocess == "scale":  # one global map: (x - min) / (max - min), D features
        lo, span = train.min(), train.max() - train.min()
        log_j, mapped = -5 * float(torch.log(span)), lambda x: (x - lo) / span
    else:  # per feature: (x - mean_d) / std_d
        std, mean = torch.std_mean(train, dim=0, correction=0)
        log_j, mapped = -float(torch.log(std).sum()), lambda x: (x - mean) / std
    file = torch.from_numpy(np.load(raw_file)).double()
    inside = file[(file >= train.min()).all(1) & (file <= train.max()).all(1)]  # no value clamped by 'scale'
    np.save(tmp_path / "inside.npy", inside.float().numpy())

    report = evaluate_run(result.run_dir, data_file=tmp_path / "inside.npy", seed=5)
    model, _, _ = load_run(result.run_dir)
    pyro.set_rng_seed(5)
    expected = elbo(model, mapped(inside).float()) + log_j
    assert report["log_jacobian"] == pytest.approx(log_j, rel=1e-6)
    assert report["elbo"] == pytest.approx(expected, rel=1e-6)
    assert report["preprocess"] == preprocess and "of the data as given" in report["units"]
    assert report.get("clamped_values", 0) == 0
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    for line, record in zip(lines, result.history):  # metrics are in the same units
        assert line["log_jacobian"] == pytest.approx(log_j, rel=1e-6)
        assert line["train_elbo"] == record["train_elbo"]
    raw_elbo = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)["history"][-1]["val_elbo"]
    assert lines[-1]["val_elbo"] == pytest.approx(raw_elbo + lines[-1]["log_jacobian"], rel=1e-12)  # model units


def test_values_that_scale_clamps_are_counted(raw_file, tmp_path):
    result = train_run(_config(raw_file, tmp_path / "run", "scale", **{"train.epochs": 1}), progress=False)
    train = load_dataset(str(raw_file), preprocess="none", seed=0).train
    outside = np.load(raw_file)[:10].copy()
    outside[0, :3] = float(train.max()) + 5.0
    outside[1, 4] = float(train.min()) - 1.0
    np.save(tmp_path / "outside.npy", outside)
    report = evaluate_run(result.run_dir, data_file=tmp_path / "outside.npy")
    assert report["clamped_values"] == 4
    held_out = load_dataset(str(raw_file), preprocess="none", seed=0)
    for split in ("val", "test"):  # the run's own splits too: counted when loaded
        x = getattr(held_out, split)
        count = int(((x < train.min()) | (x > train.max())).sum())
        assert evaluate_run(result.run_dir, split=split).get("clamped_values") == count


@pytest.mark.parametrize("preprocess", ["none", "scale"])
def test_a_linear_gaussian_vae_reaches_the_ppca_maximum_likelihood_of_the_raw_data(raw_file, tmp_path, preprocess):
    """Trained on the data as given, or scaled into [0, 1], the held-out IWAE reported in raw units is the
    pPCA maximum likelihood of the raw data (Tipping & Bishop 1999; a linear VAE's optimum, Lucas et al. 2019)."""
    config = _config(raw_file, tmp_path / "run", preprocess, **{
        "data.batch_size": 256, "optim.lr": 0.05, "optim.lr_schedule": {"name": "exponential", "gamma": 0.995},
        "train.epochs": 400, "train.val_every": 400, "train.checkpoint_every": 0})
    result = train_run(config, progress=False)
    report = evaluate_run(result.run_dir, iwae_samples=500)
    raw = load_dataset(str(raw_file), preprocess="none", seed=0)
    exact = _ppca_log_likelihood(raw.train.double().numpy(), raw.test.double().numpy(), 2)
    assert report["iwae_log_likelihood"] == pytest.approx(exact, rel=0.01)
    assert report["elbo"] <= report["iwae_log_likelihood"] + 0.05
    assert (report["log_jacobian"] == 0.0) == (preprocess == "none")


def test_the_default_preprocessing_follows_the_likelihood_and_is_printed(raw_file, tmp_path, capsys):
    counts = tmp_path / "counts.npy"
    np.save(counts, np.random.default_rng(0).poisson(3.0, (60, 4)).astype(np.float32))
    cases = [(["--data", str(raw_file), "--likelihood", "normal"], "standardize"),
             (["--data", str(counts), "--likelihood", "poisson"], "none"),
             ([], "scale")]  # the digits and the Bernoulli likelihood: the main job's behaviour
    for i, (flags, chosen) in enumerate(cases):
        run = tmp_path / f"run{i}"
        assert main(["train", *flags, "--epochs", "1", "--hidden", "8", "--out", str(run)]) == 0
        out = capsys.readouterr().out
        assert f"preprocess {chosen!r}: the default for the" in out
        assert load_config(run / "config.toml").data.preprocess == chosen  # saved resolved: a rerun is the same
    assert main(["train", "--data", str(counts), "--likelihood", "poisson", "--preprocess", "none", "--epochs", "1",
                 "--hidden", "8", "--out", str(tmp_path / "given")]) == 0
    assert "the default for the" not in capsys.readouterr().out  # a choice the user made is not announced


@pytest.mark.parametrize("preprocess, words", [("scale", "a probability mass"), ("binarize", "binarised data"),
                                               ("dynamic-binarize", "binarised data")])
def test_masses_and_binarised_data_are_reported_as_the_model_sees_them(tmp_path, preprocess, words, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preprocess", preprocess, "--epochs", "1", "--hidden", "8", "--quiet",
                 "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["log_jacobian"] == 0.0 and words in report["units"]
    assert main(["evaluate", str(run)]) == 0
    assert "units: nats per data point" in capsys.readouterr().out
