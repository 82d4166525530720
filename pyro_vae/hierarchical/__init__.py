"""Hierarchical models composed from the core priors, likelihoods and networks.

No model here subclasses :class:`~pyro_vae.model.VAE`; each has the same
duck-typed interface (``model``/``guide`` with ``idx``/``num_data`` and a
``"data"`` plate, ``check_data``, ``_device``, ``name``, ``latent_sites``), so
:func:`~pyro_vae.train.fit` and :mod:`~pyro_vae.evaluate` work unchanged.

==========================  =============================================================
:class:`StackedVAE`         ``z_L -> ... -> z_1 -> x``, conditional Gaussian stages,
                            bottom-up or ladder (top-down) inference
:class:`SSVAE`              semi-supervised M2, the label enumerated by ``TraceEnum_ELBO``
:class:`CVAE`               conditional VAE; class-conditional generation, quadrant completion
:class:`GroupedVAE`         per-group latent offsets under a population prior
:class:`ConditionalNormal`  a prior that takes context, the stage all of these share
``MODELS``                  config names -> builders (``"vae"``, ``"stacked"``, ``"m2"``, ...)
==========================  =============================================================
"""

from .conditional import CVAE, fill_hidden, quadrant_task
from .grouped import GroupedVAE
from .parts import ConditionalNormal, ContextDecoder, ContextEncoder, OffsetPrior, one_hot, precision_merge
from .registry import MODELS, make_model
from .semisupervised import SSVAE, labels_only_classifier
from .stacked import StackedVAE

__all__ = [
    "StackedVAE",
    "SSVAE",
    "labels_only_classifier",
    "CVAE",
    "GroupedVAE",
    "ConditionalNormal",
    "OffsetPrior",
    "ContextEncoder",
    "ContextDecoder",
    "MODELS",
    "make_model",
    "one_hot",
    "precision_merge",
    "quadrant_task",
    "fill_hidden",
]
