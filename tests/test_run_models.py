"""Model types chosen by the config file (`[model] type = ...`), trained and reloaded end to end.

Each run trains a few epochs on the embedded digits through :func:`pyro_vae.run.train_run`,
then checks what can be checked exactly: the label counts filled in from the data
and saved, the balanced label split, the rebuilt model giving the same ELBO and
accuracy as the one in memory, and the clear errors of bad model settings.
"""

import json

import numpy as np
import pytest
import torch

from pyro_vae.checkpoint import load_run
from pyro_vae.cli import main
from pyro_vae.config import Config, ConfigError, apply_overrides, load_config
from pyro_vae.evaluate import elbo
from pyro_vae.models import CVAE, SSVAE, GroupedVAE, StackedVAE
from pyro_vae.models.registry import balanced_labels, model_data
from pyro_vae.run import evaluate_run, train_run

pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: one thread is fastest


def _config(tmp_path, model: dict, **extra) -> Config:
    overrides = {"model": {"latent_dim": 4, "net": {"name": "mlp", "hidden": [32]}, **model},
                 "train.epochs": 2, "train.checkpoint_every": 1, "output.run_dir": str(tmp_path / "run"), **extra}
    return apply_overrides(Config(), overrides)


def _same_elbo(result, data):
    """The reloaded model's ELBO equals the in-memory model's, under the same seed (weights really saved)."""
    rebuilt, config, _ = load_run(result.run_dir)
    assert type(rebuilt) is type(result.vae)
    result.vae.eval()
    values = []
    for model in (result.vae, rebuilt):
        torch.manual_seed(5)
        values.append(elbo(model, data))  # M2: TraceEnum_ELBO by itself
    assert values[0] == pytest.approx(values[1], abs=1e-5)
    return rebuilt, config


def test_stacked_from_config(tmp_path):
    result = train_run(_config(tmp_path, {"type": "stacked", "latent_dims": [6, 3], "inference": "ladder"}),
                       progress=False)
    assert isinstance(result.vae, StackedVAE) and [s.latent_dim for s in result.vae.stages] == [6]
    saved = load_config(result.run_dir / "config.toml")
    assert saved.model.type == "stacked" and saved.model.options == {"latent_dims": [6, 3], "inference": "ladder"}
    _same_elbo(result, result.splits.test)
    assert (result.run_dir / "samples.png").is_file()
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_m2_from_config_labels_accuracy_and_reload(tmp_path):
    result = train_run(_config(tmp_path, {"type": "m2", "alpha": 5.0, "classifier_hidden": [32]},
                               **{"data.labelled": 50}), progress=False)
    m2, splits = result.vae, result.splits
    assert isinstance(m2, SSVAE) and m2.n_classes == 10
    assert load_config(result.run_dir / "config.toml").model.options["n_classes"] == 10  # filled in and saved
    x, y = model_data(m2, splits.train, splits.train_labels, labelled=50, seed=result.config.train.seed)
    assert torch.equal(y[y >= 0].bincount(minlength=10), torch.full((10,), 5))  # 5 labels per class, the rest -1
    assert torch.equal(y[y >= 0], splits.train_labels[y >= 0])  # the kept labels are the true ones
    report = json.loads((result.run_dir / "accuracy.json").read_text())
    rebuilt, _ = _same_elbo(result, model_data(m2, splits.test, splits.test_labels, split="test"))
    assert report["test_accuracy"] == rebuilt.accuracy(splits.test, splits.test_labels)
    assert report["n"] == len(splits.test) and report["labelled"] == 50
    # held-out ELBO: every label hidden, so it bounds log p(x), as `pyro-vae evaluate` reports it
    torch.manual_seed(1)
    expected = elbo(rebuilt, (splits.test, torch.full_like(splits.test_labels, -1)))
    got = evaluate_run(result.run_dir, seed=1)
    assert got["log_jacobian"] == 0.0  # a Bernoulli mass: the report adds no change-of-units term
    assert got["elbo"] == pytest.approx(expected, rel=0.05)  # same bound, independent Monte Carlo draws
    assert got["n"] == len(splits.test)
    # `pyro-vae sample`: a row per class (10 classes x 2), means of p(x | z, y), or draws of x with --draw
    for flags, name in (([], "mean.npy"), (["--draw"], "draw.npy")):
        assert main(["sample", str(result.run_dir), "-n", "20", "--out", str(tmp_path / name), *flags]) == 0
    mean, draw = np.load(tmp_path / "mean.npy"), np.load(tmp_path / "draw.npy")
    assert mean.shape == draw.shape == (20, 1, 8, 8)
    assert np.isin(draw, [0.0, 1.0]).all() and not np.isin(mean, [0.0, 1.0]).all()


def test_cvae_and_grouped_take_their_label_counts_from_the_data(tmp_path, capsys):
    cvae = train_run(_config(tmp_path / "c", {"type": "cvae"}), progress=False)
    assert isinstance(cvae.vae, CVAE) and cvae.vae.n_classes == 10
    _same_elbo(cvae, (cvae.splits.test, cvae.splits.test_labels))
    np.save(tmp_path / "x.npy", cvae.splits.test.numpy())  # data alone, no labels
    assert main(["encode", str(cvae.run_dir), str(tmp_path / "x.npy")]) == 2  # encode(x) alone cannot encode a CVAE
    assert "needs each point's context" in capsys.readouterr().err
    grouped = train_run(_config(tmp_path / "g", {"type": "grouped"}, **{"model.likelihood": "bernoulli"}),
                        progress=False)
    assert isinstance(grouped.vae, GroupedVAE) and grouped.vae.num_groups == 10
    _same_elbo(grouped, (grouped.splits.test, grouped.splits.test_labels))


def test_balanced_labels_keeps_equal_counts_and_the_remainder():
    labels = torch.arange(10).repeat(30)
    kept = balanced_labels(labels, 23, seed=0)
    counts = kept[kept >= 0].bincount(minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() == 1
    assert torch.equal(kept[kept >= 0], labels[kept >= 0])
    assert not torch.equal(kept, balanced_labels(labels, 23, seed=1))  # the seed chooses which points


@pytest.mark.parametrize("model, extra, message", [
    ({"type": "m3"}, {}, r"model\.type: unknown model 'm3'.*Did you mean 'm2'\?"),
    ({"type": "stacked", "latent_dim": 4, "latnt_dims": [4, 2]}, {},
     r"unknown key 'model\.latnt_dims'.*Did you mean 'model\.latent_dims'\?"),
    ({"type": "vae", "alpha": 1.0}, {}, r"unknown key 'model\.alpha'; \[model\] takes .* options of model type 'vae'"),
])
def test_bad_model_settings_name_the_key(model, extra, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), {"model": model, **extra})


def test_m2_needs_labelled_count_and_an_enumerating_objective(tmp_path):
    with pytest.raises(ValueError, match="data.labelled"):
        train_run(_config(tmp_path / "a", {"type": "m2"}), progress=False)
    with pytest.raises(ConfigError, match="objective.name: model SSVAE sums its discrete site out exactly and needs objective 'enum'"):
        train_run(_config(tmp_path / "b", {"type": "m2"}, **{"data.labelled": 20, "objective.name": "iwae"}),
                  progress=False)
    assert not (tmp_path / "b" / "run").exists()  # refused before the run directory was made
    with pytest.raises(ConfigError, match="data.labelled: must be >= 1"):
        apply_overrides(Config(), {"data.labelled": 0})
