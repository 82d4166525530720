"""Property-based tests (hypothesis): the config parser, and the shape contracts of every prior and likelihood.

The config side draws whole valid configs, which must survive TOML and back
unchanged, and single wrong keys or values, which must fail naming the key. The
shape side draws batch shapes and data shapes: a prior's draws and densities,
and a likelihood's distribution from decoder output, must have the shapes the
model's plates expect, with finite densities on their own samples.
"""

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import LIKELIHOODS, PRIORS, VAE
from pyro_vae.config import Config, ConfigError, load_config
from pyro_vae.likelihoods import make_likelihood

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

names = st.sampled_from
positive = st.floats(min_value=1e-4, max_value=10.0, allow_nan=False)

components = {
    "prior": st.one_of(names(["normal", "laplace", "student-t", "mog", "vamp"]),
                       st.fixed_dictionaries({"name": st.just("mog")},
                                             optional={"n_components": st.integers(1, 30), "init_spread": positive}),
                       st.fixed_dictionaries({"name": st.just("student-t")}, optional={"df": positive})),
    "likelihood": st.one_of(names(["bernoulli", "continuous-bernoulli", "poisson", "negative-binomial", "zinb"]),
                            st.fixed_dictionaries({"name": st.just("normal")},
                                                  optional={"scale": st.one_of(names(["shared", "feature", "decoder"]),
                                                                               positive)})),
    "net": st.fixed_dictionaries({"name": st.just("mlp")},
                                 optional={"hidden": st.lists(st.integers(1, 512), min_size=1, max_size=3),
                                           "activation": names(["relu", "softplus", "tanh"])}),
}

sections = st.fixed_dictionaries({}, optional={
    "data": st.fixed_dictionaries({}, optional={
        "source": names(["digits", "mnist", "counts.npy"]), "preprocess": names(["none", "scale", "binarize"]),
        "val_fraction": st.floats(0.0, 0.4), "batch_size": st.integers(1, 4096), "download": st.booleans()}),
    "model": st.fixed_dictionaries({}, optional={"latent_dim": st.integers(1, 256), **components}),
    "objective": st.fixed_dictionaries({}, optional={
        "num_particles": st.integers(1, 50), "kl_weight": st.floats(0.0, 5.0),
        "kl_schedule": names(["constant", "linear", "cyclical"])}),
    "optim": st.fixed_dictionaries({}, optional={"lr": st.floats(1e-6, 1.0), "name": names(["adam", "adamw"])}),
    "train": st.fixed_dictionaries({}, optional={"epochs": st.integers(1, 1000), "seed": st.integers(0, 2 ** 31),
                                                 "device": names(["cpu", "cuda", "cuda:1"])}),
})


@SETTINGS
@given(raw=sections)
def test_valid_configs_survive_toml_and_back(raw, tmp_path):
    config = Config.from_dict(raw)
    path = config.save(tmp_path / "c.toml")
    assert load_config(path) == config
    assert Config.from_dict(config.to_dict()) == config


FIELDS = {name: {f.name for f in dataclasses.fields(getattr(Config(), name))} for name in ("data", "train", "optim")}


@SETTINGS
@given(section=names(sorted(FIELDS)), data=st.data())
def test_an_unknown_key_is_named_with_its_section(section, data):
    key = data.draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
        lambda k: k not in FIELDS[section]))
    with pytest.raises(ConfigError, match=f"unknown key '{section}\\.{key}'"):
        Config.from_dict({section: {key: 1}})


@SETTINGS
@given(key=names(["train.epochs", "train.seed", "data.batch_size", "model.latent_dim", "objective.num_particles"]),
       value=st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2),
                       st.floats(allow_nan=False).filter(lambda f: not f.is_integer())))
def test_a_value_of_the_wrong_type_is_named_with_its_key(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"{section}\\.{name}: expected an integer"):
        Config.from_dict({section: {name: value}})


# ----------------------------------------------------------------------------- shape contracts

batch_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
data_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


FLOW_TRANSFORMS = ("spline", "affine-autoregressive", "spline-autoregressive", "spline-coupling")
@pytest.mark.parametrize("name", PRIORS.names())
@SETTINGS
@given(batch=batch_shapes, latent_dim=st.integers(1, 5))
def test_prior_shape_contract(name, batch, latent_dim):
    options = {"n_components": 3} if name in ("mog", "vamp") else {}
    if name == "flow":  # every transform over latent_dim 1..5; only the element-wise spline takes latent_dim 1
        options = {"transform": FLOW_TRANSFORMS[(latent_dim - 1) % len(FLOW_TRANSFORMS)]}
    prior = VAE((1, 3, 3), latent_dim=latent_dim, prior={"name": name, **options}, likelihood="normal",
                net={"name": "mlp", "hidden": [4]}).prior
    p = prior()
    assert p.event_shape == (latent_dim,) and p.batch_shape == ()
    z = p.expand(batch).sample()
    assert z.shape == (*batch, latent_dim)
    log_p = p.log_prob(z)
    assert log_p.shape == batch and bool(torch.isfinite(log_p).all())


LIKELIHOOD_VARIANTS = [("bernoulli", {}), ("continuous-bernoulli", {}), ("normal", {"scale": "decoder"}),
                       ("normal", {"scale": "feature"}), ("laplace", {"scale": "shared"}), ("poisson", {}),
                       ("negative-binomial", {"dispersion": "decoder"}), ("zinb", {"dispersion": "feature"}),
                       ("categorical", {"levels": 4})]


def test_every_likelihood_has_a_shape_contract_case():
    assert {n for n, _ in LIKELIHOOD_VARIANTS} == set(LIKELIHOODS.names())


@pytest.mark.parametrize("name, options", LIKELIHOOD_VARIANTS, ids=[n for n, _ in LIKELIHOOD_VARIANTS])
@SETTINGS
@given(batch=batch_shapes, data_shape=data_shapes, seed=st.integers(0, 2 ** 16))
def test_likelihood_shape_contract(name, options, batch, data_shape, seed):
    """Decoder output [*batch, n_params, *data_shape] -> batch shape `batch`, event shape `data_shape`;
    its samples lie in its own support and have finite log-densities of shape `batch`; its mean has the data's shape."""
    lik = make_likelihood({"name": name, **options})
    lik.setup(data_shape)
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(*batch, lik.n_params, *data_shape, generator=g)
    d = lik(params)
    assert d.batch_shape == batch and d.event_shape == data_shape
    x = d.sample()
    assert x.shape == (*batch, *data_shape)
    lik.check_support(x.reshape(-1, *data_shape) if batch else x[None])
    log_p = d.log_prob(x)
    assert log_p.shape == batch and bool(torch.isfinite(log_p).all())
    assert lik.mean(params).shape == (*batch, *data_shape)
    assert math.isfinite(float(lik.mean(params).sum()))
