"""Fitting a VAE with stochastic variational inference.

A thin loop over Pyro's ``SVI.step``: the data sit in memory as one tensor,
each epoch draws a permutation and slices minibatches from it, so there is no
per-item Python overhead. Minibatch indices go to the model's data plate,
which scales the ELBO to the full data set.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.params.param_store import param_with_module_name
from tqdm.auto import tqdm

from ._registry import Registry
from .evaluate import elbo as evaluate_elbo

__all__ = ["FitResult", "fit", "make_optimizer", "OPTIMIZERS", "sync_param_store"]


OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("adam", lambda lr, **o: pyro.optim.Adam({"lr": lr, **o}), doc="Adam (Kingma & Ba 2015)")
OPTIMIZERS.register("clipped-adam", lambda lr, **o: pyro.optim.ClippedAdam({"lr": lr, **o}),
                    doc="Pyro's ClippedAdam: per-parameter gradient clipping (clip_norm) and lr decay (lrd)")
OPTIMIZERS.register("adamw", lambda lr, **o: pyro.optim.AdamW({"lr": lr, **o}), doc="Adam with decoupled weight decay")


def make_optimizer(name: str = "adam", lr: float = 1e-3, **options) -> pyro.optim.PyroOptim:
    """A ``pyro.optim`` optimiser by config name (``adam``, ``clipped-adam``, ``adamw``)."""
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr!r}")
    return OPTIMIZERS[name].factory(lr, **options)


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        vae: the fitted model (the same object that was passed in).
        history: one record per epoch: ``epoch``, ``train_elbo`` (mean minibatch
            ELBO per data point over the epoch), ``val_elbo`` (when validation
            data was given, on validation epochs) and ``seconds``.
        step_losses: the loss of every step, ``-ELBO / num_data`` (nats per point).
    """

    vae: torch.nn.Module
    history: list
    step_losses: list

    @property
    def final_elbo(self) -> float:
        return self.history[-1]["train_elbo"]


def as_tensors(data) -> tuple:
    """``x`` or ``(x, y, ...)`` as a tuple of tensors sharing their first dimension."""
    tensors = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("data must be a torch.Tensor [N, ...] (or a tuple of tensors sharing the first dimension N); "
                        "convert with torch.as_tensor(x, dtype=torch.float32)")
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"data tensors must share their first dimension, got sizes {[t.shape[0] for t in tensors]}")
    return tensors


def sync_param_store(vae) -> None:
    """Make the VAE's own tensors the ones Pyro's param store optimises.

    ``pyro.module`` keeps an existing store entry of the same name, so a stale
    entry (from an earlier model called ``vae``) would be stepped instead of the
    live weights; dropping it first makes the module the single source of truth.
    """
    store = pyro.get_param_store()
    stored = dict(store.named_parameters())
    for pname, p in vae.named_parameters():
        key = param_with_module_name(vae.name, pname)
        if key in stored and stored[key] is not p:
            del store[key]


def fit(vae, data, *, epochs: int = 20, batch_size: int | None = 128, lr: float = 1e-3,
        optimizer="adam", loss=None, num_particles: int = 1, seed: int | None = 0, device=None,
        val_data: torch.Tensor | None = None, val_every: int = 1,
        train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_epoch_end: Callable[[dict, pyro.optim.PyroOptim], None] | None = None,
        progress: bool = True) -> FitResult:
    """Fit ``vae`` to ``data: [N, *data_shape]`` by SVI.

    ``data`` may also be a tuple of tensors with a common first dimension
    (e.g. ``(x, y)`` for models with labels): each step calls
    ``model(*minibatch, idx=idx, num_data=N)``, and likewise the guide.

    Args:
        epochs, batch_size: passes over the data and minibatch size (``None``: full batch).
        lr, optimizer: learning rate and a ``pyro.optim`` optimiser, by name or object.
        loss: any Pyro ELBO; default ``Trace_ELBO(num_particles, vectorize_particles=True)``.
        seed: seeds torch, numpy and ``random`` through ``pyro.set_rng_seed`` (``None``: leave as is).
        device: ``"cpu"``, ``"cuda"``, ... (default: where the VAE's parameters are).
        val_data: held-out data for ``val_elbo`` every ``val_every`` epochs.
        train_transform: applied to the whole training tensor at the start of
            each epoch (e.g. ``torch.bernoulli`` for dynamic binarisation).
        on_epoch_end: called as ``on_epoch_end(record, optim)`` after each epoch
            (metrics logging, checkpoints); ``optim.get_state()`` is the optimiser state.
        progress: show a tqdm bar with the running ELBO.
    """
    if seed is not None:
        pyro.set_rng_seed(seed)
    if epochs < 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}")
    tensors = as_tensors(data)
    vae.check_data(tensors[0])
    if val_data is not None:
        vae.check_data(as_tensors(val_data)[0])
    if device is not None:
        vae.to(device)
    device = vae._device()
    tensors = tuple(t.to(device) for t in tensors)
    n = tensors[0].shape[0]
    batch = n if batch_size is None else min(int(batch_size), n)

    sync_param_store(vae)
    optim = make_optimizer(optimizer, lr) if isinstance(optimizer, str) else optimizer
    if loss is None:
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    svi = SVI(vae.model, vae.guide, optim, loss)

    history, step_losses = [], []
    bar = tqdm(range(1, epochs + 1), desc="epochs", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        vae.train()
        epoch_data = tensors if train_transform is None else (train_transform(tensors[0]), *tensors[1:])
        perm = torch.randperm(n, device=device)
        epoch_losses = []
        for lo in range(0, n, batch):
            idx = perm[lo:lo + batch]
            epoch_losses.append(svi.step(*(t[idx] for t in epoch_data), idx=idx, num_data=n) / n)
        step_losses.extend(epoch_losses)
        record = {"epoch": epoch, "train_elbo": -sum(epoch_losses) / len(epoch_losses)}
        if val_data is not None and (epoch % val_every == 0 or epoch == epochs):
            vae.eval()
            record["val_elbo"] = evaluate_elbo(vae, val_data)
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(record, optim)
        bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})
    vae.eval()
    return FitResult(vae, history, step_losses)
