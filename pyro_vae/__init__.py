"""pyro_vae: variational autoencoders as Pyro programs, with swappable priors, posteriors, likelihoods and model types.

The public names below are imported on first use (PEP 562), so ``import pyro_vae``,
``pyro_vae.__version__`` and the ``pyro-vae`` command's ``--help`` and ``--version``
import neither torch nor Pyro; ``from pyro_vae import VAE, fit`` imports what those need.
Submodules are reachable as attributes too (``pyro_vae.priors``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module defining it
_LAZY = {
    "tune_allocator": "allocator",
    **dict.fromkeys(("ELBODecomposition", "IWAEResult", "elbo", "elbo_decomposition", "iwae_log_likelihood"),
                    "evaluate"),
    **dict.fromkeys(("LIKELIHOODS", "Likelihood", "make_likelihood", "register_likelihood"), "likelihoods"),
    **dict.fromkeys(("MODELS", "VAE", "Model", "SampleGrid", "Unsupported", "register_model"), "models"),
    **dict.fromkeys(("NETS", "make_decoder", "make_encoder"), "nets"),
    **dict.fromkeys(("OBJECTIVES", "KLSchedule", "make_objective"), "objectives"),
    "make_optimizer": "optim",
    **dict.fromkeys(("PRIORS", "Prior", "make_prior", "register_prior"), "priors"),
    **dict.fromkeys(("POSTERIORS", "Posterior", "Head", "make_posterior", "register_posterior"), "posteriors"),
    **dict.fromkeys(("Callback", "EarlyStopping", "FitResult", "TrainState", "fit"), "train"),
}

if TYPE_CHECKING:  # what the names are, for type checkers and editors; nothing runs here
    from .allocator import tune_allocator
    from .evaluate import ELBODecomposition, IWAEResult, elbo, elbo_decomposition, iwae_log_likelihood
    from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood, register_likelihood
    from .models import MODELS, VAE, Model, SampleGrid, Unsupported, register_model
    from .nets import NETS, make_decoder, make_encoder
    from .objectives import OBJECTIVES, KLSchedule, make_objective
    from .optim import make_optimizer
    from .priors import PRIORS, Prior, make_prior, register_prior
    from .posteriors import POSTERIORS, Head, Posterior, make_posterior, register_posterior
    from .train import Callback, EarlyStopping, FitResult, TrainState, fit


def __getattr__(name: str):
    """A public name, imported from its module on first use; else a submodule (``pyro_vae.priors``)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # once: later look-ups do not come here
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})


__all__ = [
    "Model",
    "VAE",
    "Unsupported",
    "SampleGrid",
    "fit",
    "FitResult",
    "TrainState",
    "Callback",
    "EarlyStopping",
    "elbo",
    "iwae_log_likelihood",
    "IWAEResult",
    "elbo_decomposition",
    "ELBODecomposition",
    "Prior",
    "Posterior",
    "Head",
    "Likelihood",
    "PRIORS",
    "POSTERIORS",
    "LIKELIHOODS",
    "NETS",
    "MODELS",
    "OBJECTIVES",
    "KLSchedule",
    "make_prior",
    "make_posterior",
    "make_likelihood",
    "make_encoder",
    "make_decoder",
    "make_optimizer",
    "make_objective",
    "register_prior",
    "register_posterior",
    "register_likelihood",
    "register_model",
    "tune_allocator",
    "__version__",
]
