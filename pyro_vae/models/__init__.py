"""Model types: every one a :class:`Model`, the declared interface the rest of the package asks.

==========================  =============================================================
:class:`Model`              the interface (Pyro programs, data plate, checks, posterior
                            mean, sample grid, split inputs, artefacts); subclass it for
                            a model of your own and :func:`register_model` it
:class:`VAE`                one latent layer (Kingma & Welling 2014)
:class:`StackedVAE`         ``z_L -> ... -> z_1 -> x``, conditional Gaussian stages,
                            bottom-up or ladder (top-down) inference
:class:`SSVAE`              semi-supervised M2, the label enumerated by ``TraceEnum_ELBO``
:class:`CVAE`               conditional VAE; class-conditional generation, quadrant completion
:class:`GroupedVAE`         per-group latent offsets under a population prior
:class:`ConditionalNormal`  a prior that takes context, the stage these share
``MODELS``                  config names -> model types (``"vae"``, ``"stacked"``, ``"m2"``, ...)
==========================  =============================================================

No model type subclasses another; they share parts (:mod:`.parts`) and the base class.
"""

from .base import DATA_SITE, Model, SampleGrid, Unsupported
from .conditional import CVAE, fill_hidden, quadrant_task
from .grouped import GroupedVAE
from .parts import ConditionalNormal, ContextDecoder, ContextEncoder, OffsetPrior, one_hot, precision_merge
from .registry import MODELS, balanced_labels, make_model, model_data, register_model
from .semisupervised import SSVAE, labels_only_classifier
from .stacked import StackedVAE
from .vae import VAE

__all__ = [
    "Model",
    "Unsupported",
    "SampleGrid",
    "DATA_SITE",
    "VAE",
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
    "register_model",
    "model_data",
    "balanced_labels",
    "one_hot",
    "precision_merge",
    "quadrant_task",
    "fill_hidden",
]
