"""Former home of :class:`~pyro_vae.models.VAE`, now :mod:`pyro_vae.models.vae`; the name stays importable."""

from .models.vae import VAE

__all__ = ["VAE"]
