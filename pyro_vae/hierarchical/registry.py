"""Former home of the model registry, now :mod:`pyro_vae.models.registry`; these names stay importable."""

from ..models.registry import (MODELS, balanced_labels, complete_options, make_model, model_data, register_model,
                               sample_grid)

__all__ = ["MODELS", "make_model", "register_model", "complete_options", "model_data", "sample_grid",
           "balanced_labels"]
