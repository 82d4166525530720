"""The config schema: TOML round trip, overrides, validation messages, example files."""

from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import build
from pyro_vae.config import Config, ConfigError, ModelConfig, apply_overrides, load_config, tomllib
from pyro_vae.objectives import LocalRenyiELBO
from pyro_vae.priors import MixtureOfGaussians

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"
SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28)}  # else a count vector


def _rich_config() -> Config:
    return Config.from_dict({
        "data": {"source": "data dir/counts \"v2\" é.npz", "data_dir": "~/data", "download": True,
                 "preprocess": "none", "val_fraction": 0.05, "test_fraction": 0, "batch_size": 7},
        "model": {"latent_dim": 3, "prior": {"name": "mog", "n_components": 4, "init_spread": 0.5},
                  "likelihood": {"name": "normal", "scale": 0.25}, "net": "linear"},
        "objective": {"name": "renyi", "num_particles": 3, "alpha": 0.25},
        "optim": {"name": "clipped-adam", "lr": 1e-5, "clip_norm": 2},
        "train": {"epochs": 1, "seed": 11, "device": "cuda:1", "val_every": 2, "checkpoint_every": 0},
        "output": {"run_dir": "runs/x"},
    })


@pytest.mark.parametrize("config", [Config(), _rich_config()], ids=["default", "rich"])
def test_toml_round_trip(config, tmp_path):
    path = config.save(tmp_path / "c.toml")
    assert load_config(path) == config
    assert tomllib.loads(config.to_toml()) == config.to_dict()


def test_ints_are_accepted_as_floats_and_written_back_as_floats():
    config = Config.from_dict({"optim": {"lr": 1}, "data": {"test_fraction": 0}})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert "lr = 1.0" in config.to_toml()


def test_overrides_set_keys_and_component_options():
    config = apply_overrides(Config(), {"model.latent_dim": 4, "model.prior": "mog",
                                        "model.prior.n_components": 3, "model.net.hidden": [400, 400],
                                        "optim.lr": 0.01})
    assert config.model.latent_dim == 4
    assert config.model.prior == {"name": "mog", "n_components": 3}
    assert config.model.net == {"name": "mlp", "hidden": [400, 400]}
    assert config.optim.lr == 0.01
    # setting a component by name drops the options of the previous one
    assert apply_overrides(config, {"model.net": "linear"}).model.net == "linear"


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match=r"unknown key 'model\.laten_dim'.*Did you mean 'model\.latent_dim'"):
        apply_overrides(Config(), {"model.laten_dim": 4})
    with pytest.raises(ConfigError, match=r"model\.latent_dim: must be >= 1"):
        apply_overrides(Config(), {"model.latent_dim": 0})
    with pytest.raises(ConfigError, match="dotted key"):
        apply_overrides(Config(), {"epochs": 3})


@pytest.mark.parametrize("raw, pattern", [
    ({"model": {"laten_dim": 3}}, r"unknown key 'model\.laten_dim'; .* Did you mean 'model\.latent_dim'\?"),
    ({"modle": {"latent_dim": 3}}, r"unknown section 'modle'.* Did you mean 'model'\?"),
    ({"model": {"prior": "gaussian"}}, r"model\.prior: unknown prior 'gaussian'; valid prior names are 'normal', "
                                       r"'laplace', 'student-t', 'mog', 'vamp'"),
    ({"model": {"likelihood": "bernouli"}}, r"model\.likelihood: .* Did you mean 'bernoulli'\?"),
    ({"model": {"prior": {"name": "mog", "n_component": 3}}}, r"model\.prior: unknown option 'n_component'.*"
                                                              r"Did you mean 'n_components'\?"),
    ({"model": {"net": {"hidden": [3]}}}, r"model\.net: a table needs a string 'name' key"),
    ({"model": {"latent_dim": "8"}}, r"model\.latent_dim: expected an integer, got a string '8'"),
    ({"model": {"latent_dim": 8.5}}, r"model\.latent_dim: expected an integer"),
    ({"data": {"download": "yes"}}, r"data\.download: expected a boolean"),
    ({"optim": {"lr": -0.1}}, r"optim\.lr: learning rate must be > 0, got -0\.1"),
    ({"optim": {"name": "sgd"}}, r"optim\.name: unknown optimizer 'sgd'; valid optimizer names are 'adam'"),
    ({"optim": {"clip_norm": 0.0}}, r"optim\.clip_norm: must be > 0"),
    ({"objective": {"name": "elbow"}}, r"objective\.name: unknown objective 'elbow'.*Did you mean 'elbo'\?"),
    ({"objective": {"num_particle": 3}}, r"unknown key 'objective\.num_particle'.*Did you mean "
                                         r"'objective\.num_particles'\?"),
    ({"objective": {"name": "renyi", "alhpa": 0.5}}, r"unknown key 'objective\.alhpa'.*options of objective "
                                                    r"'renyi' \(alpha\)\. Did you mean 'objective\.alpha'\?"),
    ({"objective": {"num_particles": 0}}, r"objective\.num_particles: must be >= 1"),
    ({"data": {"preprocess": "scaled"}}, r"data\.preprocess: unknown preprocess 'scaled'.*Did you mean 'scale'\?"),
    ({"data": {"val_fraction": 1.5}}, r"data\.val_fraction: must be in \[0, 1\)"),
    ({"train": {"device": "gpu0"}}, r"train\.device: not a torch device"),
    ({"train": "fast"}, r"train: must be a table"),
])
def test_bad_configs_name_the_key(raw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        Config.from_dict(raw)


def test_bad_option_values_name_the_component():
    model = ModelConfig(prior={"name": "mog", "n_components": 0})
    with pytest.raises(ConfigError, match=r"model\.prior: mog prior: n_components must be >= 1"):
        build.model(model, (1, 8, 8))
    with pytest.raises(ConfigError, match=r"model\.net: .*activation"):
        build.model(ModelConfig(net={"name": "mlp", "activation": "sigmoidal"}), (4,))


def test_build_gives_objects():
    config = apply_overrides(Config(), {"model.prior": {"name": "mog", "n_components": 3}})
    vae, model_config = build.model(config.model, (1, 8, 8))
    assert isinstance(vae.prior, MixtureOfGaussians) and vae.latent_dim == 8 and model_config == config.model
    assert isinstance(build.objective(Config().objective, vae), Trace_ELBO)
    assert isinstance(build.objective(apply_overrides(Config(), {"objective.name": "meanfield"}).objective, vae),
                      TraceMeanField_ELBO)
    renyi = Config.from_dict({"objective": {"name": "renyi", "alpha": 0.25, "num_particles": 4}}).objective
    assert renyi.options == {"alpha": 0.25} and renyi.spec() == {"name": "renyi", "alpha": 0.25}
    loss = build.objective(renyi, vae)
    assert isinstance(loss, LocalRenyiELBO) and loss.alpha == 0.25 and loss.num_particles == 4
    # the model's plates, sparing Pyro a tracing pass (one more for the vectorised particles)
    assert loss.max_plate_nesting == vae.max_plate_nesting + 1
    assert build.objective(Config().objective, vae).max_plate_nesting == vae.max_plate_nesting
    assert build.optimizer(Config().optim, epochs=10).pt_optim_constructor is torch.optim.Adam
    schedule = build.kl_schedule(apply_overrides(Config(), {"objective.kl_schedule": "linear",
                                                           "objective.kl_warmup": 4}).objective, epochs=10)
    assert schedule.kind == "linear" and schedule(2) == pytest.approx(0.5)


def test_objective_options_are_written_as_keys_of_the_section():
    config = apply_overrides(Config(), {"objective.name": "renyi", "objective.alpha": 0.5})
    assert config.to_dict()["objective"] == {"name": "renyi", "num_particles": 1, "kl_weight": 1.0,
                                             "kl_schedule": "constant", "kl_warmup": 10.0, "kl_cycles": 4,
                                             "kl_ratio": 0.5, "alpha": 0.5}
    assert 'alpha = 0.5' in config.to_toml()


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file .*missing.toml' not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nlatent_dim = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[model]\nlaten_dim = 3\n")
    with pytest.raises(ConfigError, match=r"typo\.toml: unknown key 'model\.laten_dim'"):
        load_config(typo)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_validate_and_build(path, tmp_path):
    config = load_config(path)
    assert load_config(config.save(tmp_path / path.name)) == config
    vae, _ = build.model(config.model, SHAPES.get(config.data.source, (20,)))
    assert vae.latent_dim == config.model.latent_dim
    assert type(vae).__name__ == {"vae": "VAE", "stacked": "StackedVAE", "m2": "SSVAE"}[config.model.type]
    build.training(config, vae)


def test_all_four_examples_exist():
    assert {p.name for p in EXAMPLES.glob("*.toml")} >= {"digits_bernoulli.toml", "mnist_vamp.toml",
                                                         "fashion_cb.toml", "counts_nb.toml"}
