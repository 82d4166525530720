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

import torch

from .._registry import Registry
from ..model import VAE
from .conditional import CVAE
from .grouped import GroupedVAE
from .semisupervised import SSVAE
from .stacked import StackedVAE

__all__ = ["MODELS", "make_model", "complete_options", "model_data", "sample_grid", "encodes_alone",
           "balanced_labels"]


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


# ----------------------------------------------------------------------------- what a run needs per model type
_LABEL_OPTION = {"m2": "n_classes", "cvae": "n_classes", "grouped": "num_groups"}


def complete_options(model_type: str, options: dict, labels) -> dict:
    """``options`` with the label count a labelled model needs filled in from the data's labels.

    ``m2`` and ``cvae`` take ``n_classes``, ``grouped`` takes ``num_groups``: by default
    ``labels.max() + 1``, so a config names the model type alone.
    """
    key = _LABEL_OPTION.get(model_type)
    if key is None or key in options or (model_type == "cvae" and "context_shape" in options):
        return dict(options)
    if labels is None:
        raise ValueError(f"model type {model_type!r} needs labels, and this data set has none: use a labelled "
                         "data set (digits, mnist, ...) or a .npz/.pt file with a 'y' array")
    return {**options, key: int(labels.max()) + 1}


def balanced_labels(labels: torch.Tensor, n_labelled: int, seed: int = 0) -> torch.Tensor:
    """``labels`` with all but ``n_labelled`` points, as equal a number per class as possible, set to ``-1``.

    The kept points are a seeded random choice within each class.
    """
    classes = labels.unique()
    if n_labelled > len(labels):
        raise ValueError(f"data.labelled = {n_labelled} but the training split has only {len(labels)} points")
    g = torch.Generator().manual_seed(seed)
    out = torch.full_like(labels, -1)
    per_class, extra = divmod(int(n_labelled), len(classes))
    for i, k in enumerate(classes):
        idx = (labels == k).nonzero()[:, 0]
        keep = idx[torch.randperm(len(idx), generator=g)[:per_class + (i < extra)]]
        out[keep] = k
    return out


def model_data(model, x: torch.Tensor, labels, *, split: str = "train", labelled: int | None = None,
               seed: int = 0):
    """The data ``fit`` and ``elbo`` hand to ``model``: ``x``, or ``(x, labels)`` as its ``inputs`` name them.

    For M2 the training labels keep ``labelled`` points (balanced over classes,
    see :func:`balanced_labels`) and mark the rest ``-1``; on held-out splits
    every label is hidden, so their ELBO is the bound on ``log p(x)``.
    """
    inputs = getattr(model, "inputs", ("x",))
    if tuple(inputs) == ("x",):
        return x
    kind = type(model).__name__
    if labels is None:
        raise ValueError(f"{kind} takes {inputs}: the data set has no labels; use a labelled data set")
    if isinstance(model, SSVAE):
        if split != "train":
            return x, torch.full_like(labels, -1)
        if labelled is None:
            raise ValueError("model type 'm2' needs data.labelled: how many training points keep their label "
                             "(e.g. `labelled = 100`, balanced over classes); the rest are unlabelled")
        return x, balanced_labels(labels, labelled, seed)
    return x, labels


def encodes_alone(model) -> bool:
    """Whether ``model.encode(x)`` needs nothing but the data (CVAE and grouped models also take a context)."""
    return not isinstance(model, (CVAE, GroupedVAE))


@torch.no_grad()
def sample_grid(model, n: int = 64, mean: bool = True) -> torch.Tensor:
    """Images to show what ``model`` generates: one row per class for M2 and the label CVAE, else ``n`` draws.

    ``mean``: each image is ``E[x | z, ...]`` rather than a draw of ``x``.
    """
    if isinstance(model, SSVAE) or (isinstance(model, CVAE) and model.n_classes is not None):
        k = model.n_classes
        per = max(1, min(10, n // k))
        labels = torch.arange(k).repeat_interleave(per)
        if isinstance(model, SSVAE):
            return model.sample(len(labels), y=labels, mean=mean)
        return model.sample(labels, mean=mean)
    if isinstance(model, CVAE):
        raise ValueError("a CVAE on a general context tensor has no class grid; call model.sample(c)")
    return model.sample(n, mean=mean)
