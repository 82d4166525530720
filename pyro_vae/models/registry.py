"""``MODELS``: config names -> model types, so a config file selects the model type.

An entry is a :class:`~pyro_vae.models.base.Model` subclass, built by its
``from_config`` from the keys of ``[model]``: ``latent_dim``, ``prior``,
``likelihood`` and ``net`` (those the type takes), then the type's own options,
checked against its keyword arguments::

    MODELS.build({"name": "stacked", "latent_dims": [64, 32]}, data_shape=(1, 28, 28),
                 latent_dim=64, prior="normal", likelihood="bernoulli", net="mlp")

================  ===========================================  ==========================
name              model                                        data for ``fit``
================  ===========================================  ==========================
``vae``           :class:`VAE`                                 ``x``
``stacked``       :class:`StackedVAE` (``latent_dims``;         ``x``
                  default ``[latent_dim, latent_dim // 2]``)
``m2``            :class:`SSVAE` (``n_classes``, ``alpha``)      ``(x, y)``, ``y = -1`` unlabelled;
                                                               objective ``"enum"``
``cvae``          :class:`CVAE` (``n_classes`` default 10,      ``(x, c)``
                  or ``context_shape``)
``grouped``       :class:`GroupedVAE` (``num_groups``)          ``(x, g)``
================  ===========================================  ==========================

:func:`register_model` adds a type of your own.
"""

from __future__ import annotations

import torch

from .._registry import MODELS
from .base import Model
from .conditional import CVAE
from .grouped import GroupedVAE
from .semisupervised import SSVAE, balanced_labels
from .stacked import StackedVAE
from .vae import VAE

__all__ = ["MODELS", "register_model", "make_model", "model_data", "sample_grid", "complete_options",
           "balanced_labels"]


def register_model(name: str, cls, doc: str = "") -> None:
    """Make the :class:`~pyro_vae.models.base.Model` subclass ``cls`` the config name ``[model] type = name``.

    It is built by ``cls.from_config(data_shape, latent_dim, prior, likelihood, net, **options)``,
    which by default passes the keys ``cls.__init__`` takes.
    """
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"register_model({name!r}, ...) takes a subclass of pyro_vae.Model, got {cls!r}; derive "
                        "your model from pyro_vae.Model (see its docstring for the members to define)")
    MODELS.register(name, cls.from_config, doc=doc or (cls.__doc__ or "").strip().split("\n")[0], target=cls)


for _name, _cls, _doc in [
    ("vae", VAE, "one latent layer (Kingma & Welling 2014)"),
    ("stacked", StackedVAE, "stacked latent layers, bottom-up or ladder inference"),
    ("m2", SSVAE, "semi-supervised M2, labels enumerated (Kingma et al. 2014)"),
    ("cvae", CVAE, "conditional VAE p(x | z, c) (Sohn et al. 2015)"),
    ("grouped", GroupedVAE, "per-group latent offsets under a population prior"),
]:
    register_model(_name, _cls, _doc)


def make_model(spec, data_shape, latent_dim: int = 10, prior="normal", likelihood="bernoulli", net="mlp",
               posterior=None):
    """A model from a name (``"m2"``) or a dict (``{"name": "stacked", "latent_dims": [64, 32]}``);
    ``posterior`` (a family name, dict or object) for a type that takes one, else its own default."""
    extra = {} if posterior is None else {"posterior": posterior}
    return MODELS.build(spec, data_shape=data_shape, latent_dim=latent_dim, prior=prior, likelihood=likelihood,
                        net=net, **extra)


def complete_options(model_type: str, options: dict, labels) -> dict:
    """``options`` with the label count the model type takes filled in from ``labels`` (see ``Model.complete_options``)."""
    return MODELS[model_type].target.complete_options(options, labels)


def model_data(model, x: torch.Tensor, labels, *, split: str = "train", labelled: int | None = None,
               seed: int = 0):
    """``model.split_inputs(...)``: ``x`` alone for a model of ``x``, else the tuple of its ``inputs``."""
    inputs = model.split_inputs(x, labels, split=split, labelled=labelled, seed=seed)
    return inputs[0] if len(inputs) == 1 else inputs


@torch.no_grad()
def sample_grid(model, n: int = 64, mean: bool = True) -> torch.Tensor:
    """The images of ``model.sample_grid(n, mean)`` (one row per class for M2 and the label CVAE)."""
    return model.sample_grid(n, mean).images
