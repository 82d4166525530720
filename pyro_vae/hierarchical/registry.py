"""``MODELS``: config names -> model builders, so a config file selects the model type.

Every builder has the signature::

    builder(data_shape, latent_dim=10, prior="normal", likelihood="bernoulli", net="mlp", **options) -> model

``prior``, ``likelihood`` and ``net`` are the specs of ``[model]`` (a name, a
``{"name": ..., **options}`` dict or an object), and ``options`` are the
model-specific keys of ``[model]``, checked against the model class's
keyword arguments by :meth:`~pyro_vae._registry.Registry.build`::

    MODELS.build({"name": "stacked", "latent_dims": [64, 32]}, data_shape=(1, 28, 28),
                 latent_dim=64, prior="normal", likelihood="bernoulli", net="mlp")

================  ===========================================  ==========================
name              model                                        data for ``fit``
================  ===========================================  ==========================
``vae``           :class:`~pyro_vae.model.VAE`                  ``x``
``stacked``       :class:`StackedVAE` (``latent_dims``;         ``x``
                  default ``[latent_dim, latent_dim // 2]``)
``m2``            :class:`SSVAE` (``n_classes``, ``alpha``)      ``(x, y)``, ``y = -1`` unlabelled;
                                                               objective ``"enum"``
``cvae``          :class:`CVAE` (``n_classes`` default 10,      ``(x, c)``
                  or ``context_shape``)
``grouped``       :class:`GroupedVAE` (``num_groups`` required) ``(x, g)``
================  ===========================================  ==========================

Each model class names the tensors it takes in ``inputs`` (``("x", "y")`` for
M2) and the plates it nests in ``max_plate_nesting``.
"""

from __future__ import annotations

from .._registry import Registry
from ..model import VAE
from .conditional import CVAE
from .grouped import GroupedVAE
from .semisupervised import SSVAE
from .stacked import StackedVAE

__all__ = ["MODELS", "make_model"]


def _vae(data_shape, latent_dim=10, prior="normal", likelihood="bernoulli", net="mlp", **options):
    return VAE(data_shape, latent_dim, prior=prior, likelihood=likelihood, net=net, **options)


def _stacked(data_shape, latent_dim=10, prior="normal", likelihood="bernoulli", net="mlp", latent_dims=None,
             **options):
    dims = [latent_dim, max(1, latent_dim // 2)] if latent_dims is None else latent_dims
    return StackedVAE(data_shape, dims, prior=prior, likelihood=likelihood, net=net, **options)


def _m2(data_shape, latent_dim=10, prior="normal", likelihood="bernoulli", net="mlp", **options):
    return SSVAE(data_shape, latent_dim, prior=prior, likelihood=likelihood, net=net, **options)


def _cvae(data_shape, latent_dim=10, prior="normal", likelihood="bernoulli", net="mlp", context_shape=None,
          n_classes=None, **options):
    if context_shape is None and n_classes is None:
        n_classes = 10
    return CVAE(data_shape, context_shape, latent_dim, n_classes, prior=prior, likelihood=likelihood, net=net,
                **options)


def _grouped(data_shape, latent_dim=10, prior="normal", likelihood="bernoulli", net="mlp", num_groups=None,
             **options):
    if num_groups is None:
        raise ValueError("model 'grouped' needs the option num_groups (the number of groups G)")
    return GroupedVAE(data_shape, num_groups, latent_dim, prior=prior, likelihood=likelihood, net=net, **options)


MODELS = Registry("model")
MODELS.register("vae", _vae, doc="one latent layer (Kingma & Welling 2014)", target=VAE)
MODELS.register("stacked", _stacked, doc="stacked latent layers, bottom-up or ladder inference", target=StackedVAE)
MODELS.register("m2", _m2, doc="semi-supervised M2, labels enumerated (Kingma et al. 2014)", target=SSVAE)
MODELS.register("cvae", _cvae, doc="conditional VAE p(x | z, c) (Sohn et al. 2015)", target=CVAE)
MODELS.register("grouped", _grouped, doc="per-group latent offsets under a population prior", target=GroupedVAE)


def make_model(spec, data_shape, latent_dim: int = 10, prior="normal", likelihood="bernoulli", net="mlp"):
    """A model from a name (``"m2"``) or a dict (``{"name": "stacked", "latent_dims": [64, 32]}``)."""
    return MODELS.build(spec, data_shape=data_shape, latent_dim=latent_dim, prior=prior, likelihood=likelihood,
                        net=net)
