"""pyro_vae: variational autoencoders as Pyro programs, with swappable priors and likelihoods."""

from .allocator import tune_allocator
from .evaluate import ELBODecomposition, IWAEResult, elbo, elbo_decomposition, iwae_log_likelihood
from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood, register_likelihood
from .model import VAE
from .nets import NETS, make_decoder, make_encoder
from .priors import PRIORS, Prior, make_prior, register_prior
from .train import FitResult, fit, make_optimizer

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "fit",
    "FitResult",
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
    "make_prior",
    "make_likelihood",
    "make_encoder",
    "make_decoder",
    "make_optimizer",
    "register_prior",
    "register_likelihood",
    "tune_allocator",
    "__version__",
]
