"""Fitting a VAE with stochastic variational inference.

A thin loop over Pyro's SVI step: the data sit in memory as one tensor, each
epoch draws a permutation and slices minibatches from it, so there is no
per-item Python overhead. Minibatch indices go to the model's data plate,
which scales the ELBO to the full data set.

Each step is :class:`~pyro_vae.step.Stepper`: ``SVI.step``'s three moves (the objective's
``loss_and_grads`` under a parameter-capturing trace, the optimiser, clearing
the gradients) with a finiteness check between the gradients and the update,
so a NaN or Inf is caught at the step it appears and never reaches the weights.
The data are validated once, up front (:meth:`VAE.check_data`), so Pyro's
per-step distribution validation is off inside the loop unless asked for
(``validate_steps=True``); it costs ~15% of a small network's step.

Everything the loop depends on (weights, optimiser and scheduler state, RNG
states, epoch, step, history, early-stopping bookkeeping) is in the snapshot
handed to ``on_epoch_end``; passing a snapshot back as ``resume=`` continues
the run exactly where it stopped, bit for bit on CPU.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import numpy as np
import pyro
import pyro.optim
import torch
from pyro.infer import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO
from pyro.optim.clipped_adam import ClippedAdam
from pyro.params.param_store import param_with_module_name
from tqdm.auto import tqdm

from . import distributed
from ._registry import Registry
from .evaluate import elbo as evaluate_elbo
from .objectives import KLSchedule, LatentScale, ShapeJitELBO, model_objective
from .optim import MultiTensorOptim
from .step import Stepper

__all__ = ["FitResult", "EarlyStopping", "Stepper", "TrainingDivergedError", "fit", "make_optimizer", "OPTIMIZERS", "LR_SCHEDULES",
           "sync_param_store", "as_tensors", "rng_state", "set_rng_state"]


# ----------------------------------------------------------------------------- optimisers
OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam, doc="Adam (Kingma & Ba 2015)")
OPTIMIZERS.register("clipped-adam", ClippedAdam, doc="Pyro's ClippedAdam (per-element clip_norm, lr decay lrd)")
OPTIMIZERS.register("adamw", torch.optim.AdamW, doc="Adam with decoupled weight decay")

LR_SCHEDULES = Registry("lr schedule")
LR_SCHEDULES.register("exponential", torch.optim.lr_scheduler.ExponentialLR, doc="lr *= gamma every epoch",
                      target=torch.optim.lr_scheduler.ExponentialLR)
LR_SCHEDULES.register("step", torch.optim.lr_scheduler.StepLR, doc="lr *= gamma every step_size epochs",
                      target=torch.optim.lr_scheduler.StepLR)
LR_SCHEDULES.register("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, doc="cosine decay over T_max epochs",
                      target=torch.optim.lr_scheduler.CosineAnnealingLR)
LR_SCHEDULES.register("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau,
                      doc="lr *= factor when the validation ELBO stalls for patience epochs",
                      target=torch.optim.lr_scheduler.ReduceLROnPlateau)
_SCHEDULE_SKIP = {"optimizer", "last_epoch", "verbose"}
# defaults for options torch requires, so that a schedule can be named alone (`--lr-schedule exponential`)
_SCHEDULE_DEFAULTS = {"exponential": {"gamma": 0.98}, "step": {"step_size": 10, "gamma": 0.5}}


def make_optimizer(name: str = "adam", lr: float = 1e-3, clip_norm: float | None = None, schedule=None,
                   epochs: int | None = None, **options) -> pyro.optim.PyroOptim:
    """A ``pyro.optim`` optimiser by name (``adam``, ``clipped-adam``, ``adamw``).

    It is a :class:`~pyro_vae.optim.MultiTensorOptim`: one torch optimiser over
    all parameters rather than Pyro's one per tensor (same update, fewer calls).

    ``clip_norm`` clips the gradient norm of each parameter tensor (Pyro's
    ``clip_args``). ``schedule`` (a name or ``{"name": "exponential", "gamma": 0.99}``)
    wraps it in a ``pyro.optim`` learning-rate scheduler stepped once per epoch;
    ``cosine`` decays over ``epochs`` unless given ``T_max``.
    """
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}")
    optim_cls = OPTIMIZERS[name].factory
    args = {"lr": lr, **options}
    clip = {"clip_norm": clip_norm} if clip_norm is not None else None
    if schedule is None:
        return MultiTensorOptim(optim_cls, args, clip)
    sname, sopts = LR_SCHEDULES.split_spec(schedule)
    entry = LR_SCHEDULES[sname]
    bad = set(sopts) - (set(entry.options()) - _SCHEDULE_SKIP)
    if bad:
        LR_SCHEDULES.check_options(sname, {bad.pop(): None})
    sopts = {**_SCHEDULE_DEFAULTS.get(sname, {}), **sopts}
    if sname == "cosine" and "T_max" not in sopts:
        if epochs is None:
            raise ValueError("lr schedule 'cosine' needs T_max (epochs to decay over)")
        sopts["T_max"] = int(epochs)
    return MultiTensorOptim(optim_cls, args, clip, scheduler=(entry.factory, sopts))


def _schedulers(optim) -> list:
    """The torch lr schedulers inside a pyro optimiser (ours, or Pyro's PyroLRScheduler)."""
    if isinstance(optim, MultiTensorOptim):
        return [optim.scheduler] if optim.scheduler is not None else []
    if isinstance(optim, pyro.optim.PyroLRScheduler):
        return list(optim.optim_objs.values())
    return []


# ----------------------------------------------------------------------------- results and state
class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        vae: the fitted model (the same object that was passed in; the best
            weights when early stopping restored them).
        history: one record per epoch: ``epoch``, ``train_elbo`` (mean
            minibatch ELBO per data point), ``kl_weight``, ``lr``, ``val_elbo``
            (on validation epochs) and ``seconds``.
        step_losses: every step's loss, ``-ELBO / num_data`` in nats per point.
        best_epoch: the epoch with the best validation ELBO (``None`` without validation).
        stopped_early: whether early stopping ended the run.
    """

    vae: torch.nn.Module
    history: list
    step_losses: list
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def final_elbo(self) -> float:
        return self.history[-1]["train_elbo"]


@dataclass
class EarlyStopping:
    """Stop when the validation ELBO has not improved by ``min_delta`` for ``patience`` validations.

    With ``restore_best`` the weights of the best validation epoch are put back at the end.
    """

    patience: int = 10
    min_delta: float = 0.0
    restore_best: bool = True
    best: float = -math.inf
    best_epoch: int = 0
    bad_checks: int = 0

    def __post_init__(self):
        if int(self.patience) < 1:
            raise ValueError(f"early-stopping patience must be >= 1 validation, got {self.patience}")

    def update(self, epoch: int, value: float) -> tuple[bool, bool]:
        """Record a validation ELBO; returns ``(improved, stop)``."""
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_checks = value, epoch, 0
            return True, False
        self.bad_checks += 1
        return False, self.bad_checks >= self.patience


def rng_state() -> dict:
    """The states of every random generator training touches."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _current_lr(optim) -> float | None:
    if isinstance(optim, MultiTensorOptim):
        return optim.lr
    for opt in getattr(optim, "optim_objs", {}).values():
        opt = getattr(opt, "optimizer", opt)  # a scheduler wraps its optimiser
        return float(opt.param_groups[0]["lr"])
    return None


# ----------------------------------------------------------------------------- one step
class TrainingDivergedError(FloatingPointError):
    """The loss or a gradient became NaN or infinite; raised before that step's update is applied.

    Attributes:
        epoch: the epoch of the step (1-based).
        step: the global step number (1-based) at which it happened.
    """

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step


_DIVERGED_HINT = ("Likely causes: a learning rate too high (lower lr, e.g. by 10x, or set clip_norm), a "
                  "likelihood scale collapsing towards 0 (use likelihood options such as a scale floor or a fixed "
                  "scale), or extreme data values (check the preprocessing).")
_SKIP_HINT = " To skip such steps instead: on_nonfinite='skip' (config: train.on_nonfinite = \"skip\")."


# ----------------------------------------------------------------------------- the loop
# Objectives traced by torch.jit: ours and Pyro's four (they share no base class of their own).
_COMPILED = (ShapeJitELBO, JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO)


def fit(vae, data, *, epochs: int = 20, batch_size: int | None = 128, lr: float = 1e-3, optimizer="adam",
        objective="elbo", num_particles: int = 1, kl_weight: float | KLSchedule = 1.0, lr_schedule=None,
        clip_norm: float | None = None, seed: int | None = 0, device=None, val_data=None, val_every: int = 1,
        early_stopping: EarlyStopping | int | None = None, resume: dict | None = None,
        train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_epoch_end: Callable[[dict, Callable[[], dict]], None] | None = None,
        on_nonfinite: str = "stop", validate_steps: bool = False, progress: bool = True) -> FitResult:
    """Fit ``vae`` to ``data: [N, *data_shape]`` by SVI.

    ``data`` may also be a tuple of tensors with a common first dimension
    (e.g. ``(x, y)`` for models with labels): each step calls
    ``model(*minibatch, idx, num_data=N)``, and likewise the guide (tensors
    positionally, as compiled objectives such as ``{"name": "elbo", "jit": True}`` need).

    Args:
        epochs, batch_size: total passes over the data and minibatch size (``None``: full batch).
        lr, optimizer: learning rate and a ``pyro.optim`` optimiser by name
            (``adam``, ``clipped-adam``, ``adamw``) or object.
        objective, num_particles: a name from ``objectives.OBJECTIVES``
            (``elbo``, ``meanfield``, ``iwae``, ...), a dict with options, or any Pyro ELBO.
        kl_weight: beta, a number or a :class:`~pyro_vae.objectives.KLSchedule`,
            applied to the latent sites with :class:`~pyro_vae.objectives.LatentScale`.
        lr_schedule, clip_norm: see :func:`make_optimizer`; the schedule steps once per epoch.
        seed: seeds torch, numpy and ``random`` via ``pyro.set_rng_seed`` (``None``: leave them).
        device: ``"cpu"``, ``"cuda"``, ... (default: where the VAE's parameters are).
        val_data: held-out data for ``val_elbo`` every ``val_every`` epochs.
        early_stopping: an :class:`EarlyStopping` or a patience; needs ``val_data``.
        resume: a snapshot from ``on_epoch_end`` (e.g. a loaded checkpoint) to continue from.
        train_transform: applied to the whole training tensor at the start of
            each epoch (e.g. ``torch.bernoulli`` for dynamic binarisation); the
            previous epoch's result is released first, so one copy is held at a time.
        on_epoch_end: called as ``on_epoch_end(record, snapshot)``; ``snapshot()``
            returns everything needed to resume (call it only when saving).
        on_nonfinite: what a step whose loss or gradient is NaN/Inf does: ``"stop"``
            raises :class:`TrainingDivergedError` before updating the weights;
            ``"skip"`` drops that step (counted in the epoch record as
            ``skipped_steps``) and raises only if a whole epoch is skipped.
        validate_steps: keep Pyro's distribution validation on in every step
            (slower; the data are checked once up front either way).
        progress: a tqdm bar with the running ELBO.

    Inside a ``torch.distributed`` process group (e.g. under ``torchrun``) each
    process trains on its shard of every global batch of ``batch_size`` points,
    with DistributedDataParallel averaging the gradients (see
    :mod:`pyro_vae.distributed`); losses and ELBOs mean the same as in one
    process, and ``on_epoch_end`` and the progress bar run on rank 0 only.
    """
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    if epochs < 0 or (batch_size is not None and batch_size < 1) or val_every < 1:
        raise ValueError(f"need epochs >= 0, batch_size >= 1 and val_every >= 1; got epochs={epochs}, "
                         f"batch_size={batch_size}, val_every={val_every}")
    if isinstance(early_stopping, int):
        early_stopping = EarlyStopping(patience=early_stopping)
    if early_stopping is not None and val_data is None:
        raise ValueError("early stopping watches the validation ELBO: pass val_data")
    schedule = kl_weight if isinstance(kl_weight, KLSchedule) else KLSchedule("constant", float(kl_weight))
    if seed is not None and resume is None:
        pyro.set_rng_seed(seed)

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
    steps_per_epoch = math.ceil(n / batch)

    if isinstance(optimizer, str):
        optim = make_optimizer(optimizer, lr, clip_norm=clip_norm, schedule=lr_schedule, epochs=epochs)
    else:
        optim = optimizer
    loss = model_objective(vae, objective, num_particles)
    if schedule.kind != "constant" and isinstance(loss, _COMPILED):
        raise ValueError(f"a compiled objective ({type(loss).__name__}) freezes the KL weight at its first value; "
                         f"with the {schedule.kind} KL schedule use the objective without jit, or a constant kl_weight")
    model, guide = vae.model, vae.guide
    scaler = None
    if schedule != KLSchedule("constant", 1.0):
        scaler = LatentScale(vae.latent_sites)
        model, guide = scaler(model), scaler(guide)

    history, step_losses, best_state, first_epoch = [], [], None, 1
    if resume is not None:
        vae.load_state_dict(resume["model"])
        history, step_losses = list(resume["history"]), list(resume["step_losses"])
        first_epoch = resume["epoch"] + 1
        if early_stopping is not None and resume.get("early_stopping"):
            early_stopping = EarlyStopping(**resume["early_stopping"])
            best_state = resume.get("best_model")
    sync_param_store(vae)
    if resume is not None:
        optim.set_state(resume["optim"])
        set_rng_state(resume["rng"])
    shards = None
    if not distributed.active():
        stepper = Stepper(model, guide, optim, loss, validate=validate_steps)
    else:  # under torchrun: DDP over the ranks, each on its shard (pyro_vae.distributed)
        stepper = distributed.DistributedStepper(vae, model, guide, optim, loss, validate=validate_steps)
        shards = distributed.ShardSampler(n, batch, seed=torch.initial_seed(), device=device)
        steps_per_epoch = shards.steps_per_epoch
        distributed.seed_rank(first_epoch)
    step = (first_epoch - 1) * steps_per_epoch

    def snapshot() -> dict:
        return {"epoch": epoch, "step": step, "model": copy.deepcopy(vae.state_dict()),
                "optim": copy.deepcopy(optim.get_state()), "rng": rng_state(), "history": list(history),
                "step_losses": list(step_losses), "kl_weight": schedule(step / steps_per_epoch),
                "early_stopping": asdict(early_stopping) if early_stopping else None, "best_model": best_state}

    stopped = False
    bar = tqdm(range(first_epoch, epochs + 1), desc="epochs", unit="epoch",
               disable=not (progress and distributed.is_main()), leave=False)
    for epoch in bar:
        start = time.perf_counter()
        vae.train()
        epoch_data = None  # the last epoch's transformed copy goes before the next is made: one copy at a time
        epoch_data = tensors if train_transform is None else (train_transform(tensors[0]), *tensors[1:])
        if shards is None:
            perm = torch.randperm(n, device=device)
            batches = [perm[lo:lo + batch] for lo in range(0, n, batch)]
        else:
            batches = shards.batches(epoch)
        epoch_losses, skipped = [], 0
        with pyro.validation_enabled(validate_steps):  # once for the epoch's steps, not per step
            for k, idx in enumerate(batches):
                if scaler is not None:
                    scaler.weight = schedule(step / steps_per_epoch)
                step_loss = stepper(*(t[idx] for t in epoch_data), idx, num_data=n)
                step += 1
                if step_loss is None:
                    if on_nonfinite == "stop":
                        raise TrainingDivergedError(
                            f"the loss or a gradient became NaN/Inf at step {step} (epoch {epoch}, minibatch "
                            f"{k + 1} of {steps_per_epoch}); the weights keep their values from before "
                            f"this step. {_DIVERGED_HINT}{_SKIP_HINT}", epoch, step)
                    skipped += 1
                    continue
                epoch_losses.append(step_loss / n)
        if not epoch_losses:
            raise TrainingDivergedError(f"every step of epoch {epoch} had a NaN/Inf loss or gradient and was "
                                        f"skipped (steps {step - steps_per_epoch + 1}-{step}). {_DIVERGED_HINT}",
                                        epoch, step)
        step_losses.extend(epoch_losses)
        record = {"epoch": epoch, "train_elbo": -sum(epoch_losses) / len(epoch_losses),
                  "kl_weight": scaler.weight if scaler is not None else schedule.beta, "lr": _current_lr(optim)}
        if on_nonfinite == "skip":
            record["skipped_steps"] = skipped
        validate = val_data is not None and (epoch % val_every == 0 or epoch == epochs)
        if validate:
            vae.eval()
            record["val_elbo"] = distributed.on_main(lambda: evaluate_elbo(vae, val_data))
            if early_stopping is not None:
                improved, stopped = early_stopping.update(epoch, record["val_elbo"])
                record["best"] = improved
                if improved:
                    best_state = copy.deepcopy(vae.state_dict())
        schedulers = _schedulers(optim)
        if schedulers and isinstance(schedulers[0], torch.optim.lr_scheduler.ReduceLROnPlateau):
            if validate or val_data is None:
                optim.step(-record.get("val_elbo", record["train_elbo"]))
        elif schedulers:
            optim.step()
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if on_epoch_end is not None and distributed.is_main():
            on_epoch_end(record, snapshot)
        distributed.barrier()  # a rank that dies later leaves this epoch's checkpoint complete
        bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})
        if stopped:
            break
    if early_stopping is not None and early_stopping.restore_best and best_state is not None:
        vae.load_state_dict(best_state)
    vae.eval()
    return FitResult(vae, history, step_losses, early_stopping.best_epoch if early_stopping else None, stopped)
