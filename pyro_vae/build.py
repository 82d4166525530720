"""A validated config -> the objects a run trains with, in one place.

::

    config.model      -> the model (label counts such as n_classes filled in from the data)
    config.objective  -> the Pyro ELBO (the model's own where it needs one: M2's "enum") and the KL schedule
    config.optim      -> the pyro.optim optimiser with its lr scheduler
    config.train      -> early stopping, the divergence rule
    config.data       -> the preprocessing a likelihood implies when none is set

Every name resolves here once; :func:`~pyro_vae.train.fit` and the models
receive objects. An option a component refuses while being built comes out as a
:class:`~pyro_vae.config.ConfigError` naming its key (``model.prior: ...``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ._registry import LIKELIHOODS, MODELS, ComponentError, spec_name
from .config import Config, ConfigError, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig, config_key
from .objectives import KLSchedule, model_objective
from .optim import make_optimizer
from .train import Divergence, EarlyStopping

__all__ = ["Training", "training", "model", "objective", "optimizer", "kl_schedule", "early_stopping",
           "divergence", "default_preprocess"]

# the registry kind of a component error -> the config key it came from
_KEYS = {"prior": "model.prior", "posterior": "model.posterior", "likelihood": "model.likelihood",
         "net": "model.net"}


def default_preprocess(model_config: ModelConfig) -> str:
    """What a run does to the data when ``data.preprocess`` is unset: the likelihood's ``default_preprocess``
    (``scale`` for the Bernoulli family, ``standardize`` for normal and Laplace, ``none`` for counts)."""
    entry = MODELS[model_config.type]
    if not entry.target.takes("likelihood"):
        return "none"
    name = spec_name(model_config.likelihood)
    return getattr(LIKELIHOODS[name].target, "default_preprocess", "none")


def model(model_config: ModelConfig, data_shape, labels: torch.Tensor | None = None):
    """``(model, model_config)``: the model for data points of ``data_shape``, and the config with the
    label counts its type takes (``n_classes``, ``num_groups``) filled in from ``labels``."""
    entry = MODELS[model_config.type]
    with config_key("model"):
        options = entry.target.complete_options(model_config.options, labels)
    model_config = dataclasses.replace(model_config, options=options)
    spec = {"name": model_config.type, **options}
    # a type that takes no posterior (a model of one's own) is not handed one; config.check refused any other
    posterior = {"posterior": model_config.posterior} if entry.target.takes("posterior") else {}
    try:
        built = MODELS.build(spec, data_shape=tuple(data_shape), latent_dim=model_config.latent_dim,
                             prior=model_config.prior, likelihood=model_config.likelihood, net=model_config.net,
                             **posterior)
    except ComponentError as err:
        raise ConfigError(f"{_KEYS.get(err.kind, 'model')}: {err}") from err
    return built, model_config


def objective(objective_config: ObjectiveConfig, built_model):
    """The Pyro ELBO ``built_model`` is fitted with (``"elbo"`` means ``"enum"`` for a model that needs it)."""
    with config_key("objective.name"):
        return model_objective(built_model, objective_config.spec(), objective_config.num_particles)


def optimizer(optim_config: OptimConfig, epochs: int):
    """The ``pyro.optim`` optimiser (with its lr scheduler) for a run of ``epochs`` epochs."""
    with config_key("optim.lr_schedule" if optim_config.lr_schedule is not None else "optim"):
        return make_optimizer(optim_config.name, optim_config.lr, clip_norm=optim_config.clip_norm,
                              schedule=optim_config.lr_schedule, epochs=epochs)


def kl_schedule(objective_config: ObjectiveConfig, epochs: int) -> KLSchedule:
    """The KL weight over a run of ``epochs`` epochs."""
    spec = objective_config.kl_spec(epochs)
    with config_key("objective.kl_schedule"):
        return KLSchedule(spec.pop("name"), **spec)


def early_stopping(train_config: TrainConfig) -> EarlyStopping | None:
    patience = train_config.early_stopping
    return EarlyStopping(patience, train_config.min_delta) if patience else None


def divergence(train_config: TrainConfig) -> Divergence | None:
    """The rule refusing a step whose finite loss diverged; ``None`` when ``train.divergence`` is 0 or false."""
    factor = train_config.divergence
    if factor is False or factor == 0:
        return None
    with config_key("train.divergence"):
        return Divergence(factor)


@dataclass
class Training:
    """The objects a run's ``fit`` takes besides the model, each built once from the config."""

    objective: object
    optim: object
    kl_schedule: KLSchedule
    early_stopping: EarlyStopping | None
    divergence: Divergence | None = None


def training(config: Config, built_model) -> Training:
    """Everything ``built_model`` is trained with under ``config``."""
    epochs = config.train.epochs
    return Training(objective(config.objective, built_model), optimizer(config.optim, epochs),
                    kl_schedule(config.objective, epochs), early_stopping(config.train), divergence(config.train))
