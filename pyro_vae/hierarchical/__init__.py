"""Former home of the hierarchical model types, now :mod:`pyro_vae.models`; these names stay importable,
and so do the old module paths (``pyro_vae.hierarchical.stacked`` is :mod:`pyro_vae.models.stacked`)."""

import sys

from ..models import conditional, grouped, parts, semisupervised, stacked
from ..models import (MODELS, CVAE, SSVAE, ConditionalNormal, ContextDecoder, ContextEncoder, GroupedVAE,
                      OffsetPrior, StackedVAE, fill_hidden, labels_only_classifier, make_model, one_hot,
                      precision_merge, quadrant_task)

__all__ = ["StackedVAE", "SSVAE", "labels_only_classifier", "CVAE", "GroupedVAE", "ConditionalNormal",
           "OffsetPrior", "ContextEncoder", "ContextDecoder", "MODELS", "make_model", "one_hot", "precision_merge",
           "quadrant_task", "fill_hidden"]

for _module in (conditional, grouped, parts, semisupervised, stacked):
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module
