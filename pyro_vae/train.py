"""Fitting a model by stochastic variational inference: the epoch loop over built objects.

::

    for epoch in first .. epochs:
        step       each minibatch: the objective's loss and gradients, finiteness and divergence checks, the optimiser
        validate   the validation ELBO every val_every epochs, the callbacks' metrics, early stopping
        record     the TrainState snapshot, handed to the callbacks (a run's recorder saves it)
        stop       early stopping, or a stop request (e.g. Ctrl-C whose exception was lost)

The data sit in memory as tensors; each epoch draws a permutation and slices
minibatches from it, so there is no per-item Python overhead. Minibatch indices
go to the model's data plate, which scales the ELBO to the full data set. Each
step is a :class:`~pyro_vae.step.Stepper`: ``SVI.step``'s moves with a check
between gradients and update, so a NaN or Inf never reaches the weights, nor a
finite loss that left the plausible range (:class:`~pyro_vae.step.Divergence`). The
data are validated once, up front, so Pyro's per-step distribution validation is
off inside the loop unless asked for (it costs ~15% of a small network's step).

Everything the loop depends on is in the :class:`TrainState` of an epoch:
``fit(..., resume=state)`` continues exactly where it stopped, bit for bit on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pyro
import torch
from pyro.infer import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO
from pyro.params.param_store import param_with_module_name
from tqdm.auto import tqdm

from . import distributed
from ._registry import spec_name
from .data import as_tensors
from .evaluate import elbo as evaluate_elbo
from .objectives import KLSchedule, LatentScale, ShapeJitELBO, model_objective, objective_for
from .optim import LR_SCHEDULES, OPTIMIZERS, current_lr, make_optimizer, schedulers
from .sources import chunked_permutation, is_source
from .step import DIVERGENCE_FACTOR, Divergence, Stepper

__all__ = ["fit", "FitResult", "TrainState", "Callback", "EarlyStopping", "Stepper", "Divergence",
           "TrainingDivergedError",
           "rng_state", "set_rng_state", "sync_param_store", "make_optimizer", "OPTIMIZERS", "LR_SCHEDULES",
           "as_tensors"]


# ----------------------------------------------------------------------------- state and results
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


@dataclass
class TrainState:
    """Everything the loop depends on after a completed epoch; ``fit(resume=state)`` continues from it.

    Attributes:
        epoch, step: the last completed epoch (1-based) and optimisation step.
        model: the model's ``state_dict``.
        optim: the pyro optimiser's state (``get_state()``), lr scheduler included.
        rng: torch, numpy, python (and CUDA) generator states (:func:`rng_state`).
        history, step_losses: the per-epoch records and every step's loss so far.
        kl_weight: the KL weight at the end of the epoch.
        early_stopping: the :class:`EarlyStopping` bookkeeping as a dict, or ``None``.
        best_model: the ``state_dict`` of the best validation epoch (with early stopping), or ``None``.
    """

    epoch: int
    step: int
    model: dict
    optim: dict
    rng: dict
    history: list
    step_losses: list
    kl_weight: float = 1.0
    early_stopping: dict | None = None
    best_model: dict | None = None

    def to_payload(self) -> dict:
        """The fields as a plain dict (the checkpoint payload's training part); tensors are not copied."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, payload: dict) -> "TrainState":
        """The state in a checkpoint payload (other keys, such as ``config``, are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"epoch", "step", "model", "optim", "rng", "history", "step_losses"} - set(payload)
        if missing:
            raise ValueError(f"not a training state: no {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in payload.items() if k in names})


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        vae: the fitted model (the same object that was passed in; the best
            weights when early stopping restored them).
        history: one record per epoch: ``epoch``, ``train_elbo`` (mean
            minibatch ELBO per data point), ``kl_weight``, ``lr``, ``val_elbo``
            (on validation epochs), whatever callbacks added, and ``seconds``.
        step_losses: every step's loss, ``-ELBO / num_data`` in nats per point.
        best_epoch: the epoch with the best validation ELBO (``None`` without early stopping).
        stopped_early: whether early stopping ended the run.
        interrupted: whether a stop request ended the run (after a completed epoch).
    """

    vae: torch.nn.Module
    history: list
    step_losses: list
    best_epoch: int | None = None
    stopped_early: bool = False
    interrupted: bool = False

    @property
    def final_elbo(self) -> float:
        return self.history[-1]["train_elbo"]


class Callback:
    """Hooks :func:`fit` calls on rank 0; override the ones you need.

    ``on_validation`` runs on validation epochs, before the epoch's state is
    taken, with the global RNG forked: what it adds to ``record`` (e.g. a KL
    and reconstruction split) is saved with the epoch, and whatever it draws
    leaves training untouched. ``on_epoch_end`` receives the completed epoch's
    :class:`TrainState` and record (a run's recorder writes them out).
    """

    def on_validation(self, model, record: dict) -> None:
        """Add metrics of the model after this epoch to ``record``."""

    def on_epoch_end(self, state: TrainState, record: dict) -> None:
        """Persist or inspect a completed epoch."""


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


def sync_param_store(vae) -> None:
    """Make the model's own tensors the ones Pyro's param store optimises.

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


class TrainingDivergedError(FloatingPointError):
    """The loss or a gradient became NaN or infinite, or the loss diverged (:class:`Divergence`); raised
    before that step's update is applied.

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
_DIVERGENCE_OFF = " To turn this check off: divergence=None (config: train.divergence = 0)."


def _diverged_fix(lr: float | None) -> str:
    lower = f" (--lr / optim.lr, now {lr:g}: try {lr / 10:g})" if lr else " (--lr / optim.lr)"
    return (f"Fix: lower the learning rate by 10x or more{lower}, or clip the gradients with optim.clip_norm "
            "(e.g. --set optim.clip_norm=10).")

# Objectives traced by torch.jit: ours and Pyro's four (they share no base class of their own).
_COMPILED = (ShapeJitELBO, JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO)

# Keywords fit took before it took built objects, and what to pass instead.
_REPLACED = {
    "lr": "optim=make_optimizer('adam', lr=...)",
    "optimizer": "optim=make_optimizer(name, lr=...) (or any pyro.optim optimiser)",
    "lr_schedule": "optim=make_optimizer(name, lr=..., schedule=...)",
    "clip_norm": "optim=make_optimizer(name, lr=..., clip_norm=...)",
    "num_particles": "objective=make_objective(name, num_particles=...)",
    "kl_weight": "kl_schedule=KLSchedule('constant', beta) (or another KLSchedule)",
    "on_epoch_end": "callbacks=[a Callback whose on_epoch_end(state, record) does it]",
}


def _refuse_replaced(removed: dict) -> None:
    for key in removed:
        if key in _REPLACED:
            raise TypeError(f"fit() takes built objects: instead of {key}=..., pass {_REPLACED[key]} "
                            "(from pyro_vae: make_optimizer, make_objective, KLSchedule)")
        raise TypeError(f"fit() got an unexpected keyword argument {key!r}")


# ----------------------------------------------------------------------------- the loop
def fit(vae, data, *, epochs: int = 20, batch_size: int | None = 128, optim=None, objective=None,
        kl_schedule: KLSchedule | None = None, val_data=None, val_every: int = 1,
        early_stopping: EarlyStopping | int | None = None, callbacks: Sequence[Callback] = (),
        stop: threading.Event | None = None, resume: TrainState | None = None,
        train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int | None = 0, device=None,
        on_nonfinite: str = "stop", divergence: Divergence | float | None = DIVERGENCE_FACTOR,
        validate_steps: bool = False, progress: bool = True, **removed) -> FitResult:
    """Fit ``vae`` (a :class:`~pyro_vae.models.Model`) to ``data: [N, *data_shape]`` by SVI.

    ``data`` may also be a tuple of tensors with a common first dimension
    (``(x, y)`` for models with labels; ``model.split_inputs`` makes it): each
    step calls ``model(*minibatch, idx, num_data=N)``, and likewise the guide.

    Args:
        epochs, batch_size: total passes over the data and minibatch size (``None``: full batch).
        optim: a ``pyro.optim`` optimiser, e.g. ``make_optimizer("adam", lr=1e-3)`` (the default);
            its lr scheduler, if any, steps once per epoch.
        objective: a Pyro ELBO, e.g. ``make_objective("iwae", num_particles=5)``; default the
            model's own (``"elbo"``, or ``"enum"`` for a model that sums a discrete site out).
        kl_schedule: the KL weight beta over training, a :class:`~pyro_vae.objectives.KLSchedule`
            (default a constant 1), applied to the latent sites with :class:`~pyro_vae.objectives.LatentScale`.
        val_data: held-out data for ``val_elbo`` every ``val_every`` epochs (and the last).
        early_stopping: an :class:`EarlyStopping` or a patience; needs ``val_data``.
        callbacks: :class:`Callback` objects (a run's recorder is one).
        stop: an event; when set, the loop ends after the epoch in flight (``FitResult.interrupted``).
        resume: a :class:`TrainState` (e.g. ``TrainState.from_payload(load_checkpoint(path))``).
        train_transform: applied to the whole training tensor at the start of each epoch (e.g.
            ``torch.bernoulli`` for dynamic binarisation); one transformed copy is held at a time.
        seed: seeds torch, numpy and ``random`` via ``pyro.set_rng_seed`` (``None``: leave them).
        device: ``"cpu"``, ``"cuda"``, ... (default: where the model's parameters are).
        on_nonfinite: a step whose loss or gradient is NaN/Inf, or whose loss diverged: ``"stop"`` raises
            :class:`TrainingDivergedError` before updating the weights; ``"skip"`` drops that
            step (counted as ``skipped_steps`` in the record) and raises only if a whole epoch is.
        divergence: when a finite loss counts as diverged, handled like a NaN (``on_nonfinite``): a
            :class:`~pyro_vae.step.Divergence` or its factor (default 1000: a step's loss more than
            1000 x max(|first loss|, |best loss|, values per data point) above the best loss so far,
            in nats per data point; see that class for why); ``None`` (or 0) turns the check off.
        validate_steps: keep Pyro's distribution validation on in every step (slower).
        progress: a tqdm bar with the running ELBO.

    Inside a ``torch.distributed`` process group (e.g. under ``torchrun``) each
    process trains on its shard of every global batch, with DistributedDataParallel
    averaging the gradients (:mod:`pyro_vae.distributed`); losses and ELBOs mean the
    same as in one process, and callbacks and the progress bar run on rank 0 only.
    """
    _refuse_replaced(removed)
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    if divergence is not None and not isinstance(divergence, Divergence):
        divergence = Divergence(divergence) if divergence is not False and divergence != 0 else None
    if epochs < 0 or (batch_size is not None and batch_size < 1) or val_every < 1:
        raise ValueError(f"need epochs >= 0, batch_size >= 1 and val_every >= 1; got epochs={epochs}, "
                         f"batch_size={batch_size}, val_every={val_every}")
    if isinstance(early_stopping, int):
        early_stopping = EarlyStopping(patience=early_stopping)
    if early_stopping is not None and val_data is None:
        raise ValueError("early stopping watches the validation ELBO: pass val_data")
    if resume is not None and not isinstance(resume, TrainState):
        raise TypeError(f"resume takes a TrainState, got {type(resume).__name__}; for a checkpoint payload pass "
                        "TrainState.from_payload(payload)")
    schedule = KLSchedule() if kl_schedule is None else kl_schedule
    if not isinstance(schedule, KLSchedule):
        raise TypeError(f"kl_schedule takes a KLSchedule, got {type(schedule).__name__}; for a fixed weight beta "
                        "pass KLSchedule('constant', beta)")
    for key, value, builder in (("optim", optim, "make_optimizer"), ("objective", objective, "make_objective")):
        if isinstance(value, (str, dict)):
            raise TypeError(f"fit() takes built objects: {key}={value!r} is a name; pass {key}={builder}(...) "
                            f"(from pyro_vae), e.g. {builder}({spec_name(value)!r})")
    optim = make_optimizer() if optim is None else optim
    loss = model_objective(vae, "elbo") if objective is None else objective_for(vae, objective)
    if not hasattr(loss, "loss_and_grads"):
        raise TypeError(f"objective takes a Pyro ELBO (e.g. make_objective('iwae', num_particles=5)), got "
                        f"{type(loss).__name__}")
    if schedule.kind != "constant" and isinstance(loss, _COMPILED):
        raise ValueError(f"a compiled objective ({type(loss).__name__}) freezes the KL weight at its first value; "
                         f"with the {schedule.kind} KL schedule use the objective without jit, or a constant kl_weight")
    if seed is not None and resume is None:
        pyro.set_rng_seed(seed)

    tensors = as_tensors(data)
    vae.check_data(tensors[0])
    if val_data is not None:
        vae.check_data(as_tensors(val_data)[0])
    if device is not None:
        vae.to(device)
    device = vae.device
    tensors = tuple(t.to(device) for t in tensors)
    n = tensors[0].shape[0]
    batch = n if batch_size is None else min(int(batch_size), n)
    steps_per_epoch = math.ceil(n / batch)

    model, guide, scaler = vae.model, vae.guide, None
    if schedule != KLSchedule("constant", 1.0):
        scaler = LatentScale(vae.latent_sites)
        model, guide = scaler(model), scaler(guide)

    history, step_losses, best_state, first_epoch = [], [], None, 1
    if resume is not None:
        vae.load_state_dict(resume.model)
        history, step_losses = list(resume.history), list(resume.step_losses)
        first_epoch = resume.epoch + 1
        if early_stopping is not None and resume.early_stopping:
            early_stopping = EarlyStopping(**resume.early_stopping)
            best_state = resume.best_model
    sync_param_store(vae)
    if resume is not None:
        optim.set_state(resume.optim)
        set_rng_state(resume.rng)
    shards = None
    if not distributed.active():
        stepper = Stepper(model, guide, optim, loss, validate=validate_steps)
    else:  # under torchrun: DDP over the ranks, each on its shard (pyro_vae.distributed)
        stepper = distributed.DistributedStepper(vae, model, guide, optim, loss, validate=validate_steps)
        shards = distributed.ShardSampler(n, batch, seed=torch.initial_seed(), device=device)
        steps_per_epoch = shards.steps_per_epoch
        distributed.seed_rank(first_epoch)
    if divergence is not None:  # every rank sees the same (all-reduced) loss, so all refuse together
        divergence.start(tensors[0][0].numel(), step_losses)
        stepper.accept = lambda total: divergence.accepts(total / n)
    step = (first_epoch - 1) * steps_per_epoch
    main = distributed.is_main()
    callbacks = list(callbacks) if main else []

    stopped = interrupted = False
    bar = tqdm(range(first_epoch, epochs + 1), desc="epochs", unit="epoch", disable=not (progress and main),
               leave=False)
    for epoch in bar:
        start = time.perf_counter()
        # ---- step: every minibatch of the epoch
        vae.train()
        epoch_data = None  # the last epoch's transformed copy goes before the next is made: one copy at a time
        if train_transform is None:
            epoch_data = tensors
        elif is_source(tensors[0]):  # a source transforms each minibatch as it is read
            epoch_data = (tensors[0].map(train_transform), *tensors[1:])
        else:
            epoch_data = (train_transform(tensors[0]), *tensors[1:])
        if shards is None:
            chunk = tensors[0].chunk if is_source(tensors[0]) else None  # disk-backed: chunks, then rows in each
            perm = torch.randperm(n, device=device) if chunk is None else chunked_permutation(n, chunk, device)
            batches = [perm[lo:lo + batch] for lo in range(0, n, batch)]
        else:
            batches = shards.batches(epoch)
        epoch_losses, skipped, diverged = [], 0, 0
        with pyro.validation_enabled(validate_steps):  # once for the epoch's steps, not per step
            for k, idx in enumerate(batches):
                if scaler is not None:
                    scaler.weight = schedule(step / steps_per_epoch)
                step_loss = stepper(*(t[idx] for t in epoch_data), idx, num_data=n)
                step += 1
                if step_loss is None:
                    if on_nonfinite == "stop":
                        where = f"step {step} (epoch {epoch}, minibatch {k + 1} of {steps_per_epoch})"
                        if stepper.refused == "diverged":
                            raise TrainingDivergedError(
                                f"training diverged at {where}: {divergence.describe(stepper.loss / n)}; the "
                                f"weights keep their values from before this step. {_diverged_fix(current_lr(optim))}"
                                f"{_SKIP_HINT}{_DIVERGENCE_OFF}", epoch, step)
                        raise TrainingDivergedError(
                            f"the loss or a gradient became NaN/Inf at {where}; the weights keep their values "
                            f"from before this step. {_DIVERGED_HINT}{_SKIP_HINT}", epoch, step)
                    skipped += 1
                    diverged += stepper.refused == "diverged"
                    continue
                epoch_losses.append(step_loss / n)
        if not epoch_losses:
            what, fix = "a NaN/Inf loss or gradient", _DIVERGED_HINT
            if diverged:
                what = "a diverged loss (far outside the plausible range)"
                if diverged < skipped:
                    what += f" ({diverged} steps) or a NaN/Inf loss or gradient ({skipped - diverged} steps)"
                fix = f"{_diverged_fix(current_lr(optim))}{_DIVERGENCE_OFF}"
            raise TrainingDivergedError(f"every step of epoch {epoch} had {what} and was "
                                        f"skipped (steps {step - steps_per_epoch + 1}-{step}). {fix}", epoch, step)
        step_losses.extend(epoch_losses)
        record = {"epoch": epoch, "train_elbo": -sum(epoch_losses) / len(epoch_losses),
                  "kl_weight": scaler.weight if scaler is not None else schedule.beta, "lr": current_lr(optim)}
        if on_nonfinite == "skip":
            record["skipped_steps"] = skipped

        # ---- validate: the held-out ELBO, the callbacks' metrics, early stopping
        validating = val_data is not None and (epoch % val_every == 0 or epoch == epochs)
        if validating:
            vae.eval()
            record["val_elbo"] = distributed.on_main(lambda: evaluate_elbo(vae, val_data))
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for callback in callbacks:
                    callback.on_validation(vae, record)
            if early_stopping is not None:
                improved, stopped = early_stopping.update(epoch, record["val_elbo"])
                record["best"] = improved
                if improved:
                    best_state = copy.deepcopy(vae.state_dict())
        _step_schedule(optim, record, validating or val_data is None)
        record["seconds"] = time.perf_counter() - start
        history.append(record)

        # ---- record: the completed epoch's state, to the callbacks
        if callbacks:
            state = TrainState(epoch, step, copy.deepcopy(vae.state_dict()), copy.deepcopy(optim.get_state()),
                               rng_state(), list(history), list(step_losses), schedule(step / steps_per_epoch),
                               dataclasses.asdict(early_stopping) if early_stopping else None, best_state)
            for callback in callbacks:
                callback.on_epoch_end(state, record)
        distributed.barrier()  # a rank that dies later leaves this epoch's checkpoint complete
        bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})

        # ---- stop: early stopping, or a request from outside
        interrupted = stop is not None and stop.is_set()
        if stopped or interrupted:
            break
    if early_stopping is not None and early_stopping.restore_best and best_state is not None:
        vae.load_state_dict(best_state)
    vae.eval()
    return FitResult(vae, history, step_losses, early_stopping.best_epoch if early_stopping else None, stopped,
                     interrupted)


def _step_schedule(optim, record: dict, validated: bool) -> None:
    """Step the lr scheduler once per epoch; ``ReduceLROnPlateau`` watches the validation (else training) ELBO."""
    found = schedulers(optim)
    if found and isinstance(found[0], torch.optim.lr_scheduler.ReduceLROnPlateau):
        if validated:
            optim.step(-record.get("val_elbo", record["train_elbo"]))
    elif found:
        optim.step()
