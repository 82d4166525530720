"""pyro_vae: variational autoencoders as Pyro programs, with swappable priors, likelihoods and model types."""

from .allocator import tune_allocator
from .evaluate import ELBODecomposition, IWAEResult, elbo, elbo_decomposition, iwae_log_likelihood
from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood, register_likelihood
from .models import MODELS, VAE, Model, SampleGrid, Unsupported, register_model
from .nets import NETS, make_decoder, make_encoder
from .objectives import OBJECTIVES, KLSchedule, make_objective
from .optim import make_optimizer
from .priors import PRIORS, Prior, make_prior, register_prior
from .train import Callback, EarlyStopping, FitResult, TrainState, fit

__version__ = "0.1.0"

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
    "Likelihood",
    "PRIORS",
    "LIKELIHOODS",
    "NETS",
    "MODELS",
    "OBJECTIVES",
    "KLSchedule",
    "make_prior",
    "make_likelihood",
    "make_encoder",
    "make_decoder",
    "make_optimizer",
    "make_objective",
    "register_prior",
    "register_likelihood",
    "register_model",
    "tune_allocator",
    "__version__",
]
