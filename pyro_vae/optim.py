"""A ``pyro.optim`` optimiser that steps all parameters with one torch optimiser.

Pyro's ``PyroOptim`` builds one torch optimiser per parameter tensor and steps
them one by one: for a VAE with ten weight tensors that is ten Python-level
Adam calls per step, a large share of a small network's step time. Here one
torch optimiser holds every parameter in a single group and steps them with
its fused kernel (``fused=True``: one pass over each parameter's state instead of
about ten multi-tensor ``foreach`` passes) where torch has one for the optimiser
and the parameters' device, else with its ``foreach`` kernels; the per-element
update is the same Adam. Over the 784-400-50 VAE's parameters on 2 cores an
``Adam.step`` took 0.70 ms fused against 1.60 ms ``foreach`` (the tiny
784-16-2 net: 0.13 against 0.35 ms). An explicit ``fused`` or ``foreach`` in
the optimiser's arguments is kept as given. An optional torch lr scheduler
wraps that optimiser and is stepped once per epoch by ``fit``.

It keeps ``PyroOptim``'s contract: ``SVI`` calls it with the parameters seen in
the traces, new parameters join lazily, per-parameter gradient clipping via
``clip_args``, and ``get_state``/``set_state`` keyed by Pyro's parameter names
so checkpoints survive a rebuilt model.

The optimiser and lr-schedule tables (``OPTIMIZERS``, ``LR_SCHEDULES``) and
:func:`make_optimizer`, which builds one by name, are here too.
"""

from __future__ import annotations

import inspect

import pyro
import pyro.optim
import torch
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam

from ._registry import LR_SCHEDULES, OPTIMIZERS

__all__ = ["MultiTensorOptim", "OPTIMIZERS", "LR_SCHEDULES", "make_optimizer", "schedulers", "current_lr"]


class MultiTensorOptim(PyroOptim):
    """``optim_constructor(params, **optim_args)`` over all parameters at once.

    Args:
        optim_constructor: a ``torch.optim.Optimizer`` class (e.g. ``torch.optim.Adam``).
        optim_args: its keyword arguments (``lr``, ``betas``, ...).
        clip_args: ``{"clip_norm": c}`` clips each parameter's gradient norm (as Pyro does).
        scheduler: ``(scheduler_class, kwargs)``, a torch lr scheduler stepped by :meth:`step`.
    """

    def __init__(self, optim_constructor, optim_args: dict, clip_args: dict | None = None, scheduler=None):
        args = dict(optim_args)
        accepted = inspect.signature(optim_constructor).parameters
        chosen = {"fused", "foreach"} & set(args)  # the caller's own kernel choice is kept
        # fused is tried when the first parameters arrive (torch checks their device and dtype)
        self._try_fused = "fused" in accepted and not chosen
        if "foreach" in accepted and not chosen:
            args["foreach"] = True
        super().__init__(optim_constructor, args, clip_args)
        self._scheduler_spec = scheduler
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self._known: set = set()
        self._waiting_scheduler = None
        self._waiting_group: dict = {}

    def __call__(self, params, *args, **kwargs) -> None:
        new = [p for p in params if p not in self._known]
        if new:
            self._add(new)
        if self.pt_clip_args:
            for p in params:
                if p.grad is not None:
                    self._clip_grad(p, **self.pt_clip_args)  # Pyro's own per-parameter clipping
        self.optimizer.step(*args, **kwargs)

    def _add(self, new) -> None:
        store = pyro.get_param_store()
        new = sorted(new, key=store.param_name)  # a fixed order, whatever the set's iteration order
        if self.optimizer is None:
            self.optimizer = self._construct(new)
            if self._scheduler_spec is not None:
                cls, kwargs = self._scheduler_spec
                self.scheduler = cls(self.optimizer, **kwargs)
                if self._waiting_scheduler is not None:
                    self.scheduler.load_state_dict(self._waiting_scheduler)
                    self._waiting_scheduler = None
            if "initial_lr" in self._waiting_group:  # a new scheduler set it to the resumed lr
                self.optimizer.param_groups[0]["initial_lr"] = self._waiting_group["initial_lr"]
        else:
            self.optimizer.param_groups[0]["params"].extend(new)
        for p in new:
            self._known.add(p)
            state = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            if state is not None:
                self.optimizer.state[p] = {k: (v.to(p.device) if torch.is_tensor(v) else v) for k, v in state.items()}

    def _construct(self, params) -> torch.optim.Optimizer:
        """The torch optimiser, fused where torch has a kernel for these parameters, else ``foreach``."""
        if self._try_fused:
            args = {k: v for k, v in self.pt_optim_args.items() if k != "foreach"}
            try:
                return self.pt_optim_constructor(params, fused=True, **args)
            except (RuntimeError, ValueError):  # e.g. a device or dtype without the fused kernel
                pass
        return self.pt_optim_constructor(params, **self.pt_optim_args)

    def step(self, *args, **kwargs) -> None:
        """Step the lr scheduler (once per epoch); ``ReduceLROnPlateau`` takes the monitored value."""
        if self.scheduler is not None:
            self.scheduler.step(*args, **kwargs)

    @property
    def lr(self) -> float | None:
        if self.optimizer is None:
            return float(self.pt_optim_args["lr"])
        return float(self.optimizer.param_groups[0]["lr"])

    def get_state(self) -> dict:
        """``{param name: optimiser state}`` plus the group settings and the scheduler state."""
        if self.optimizer is None:
            return dict(self._state_waiting_to_be_consumed)
        store = pyro.get_param_store()
        state = {store.param_name(p): dict(s) for p, s in self.optimizer.state.items()}
        group = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
        state["__group__"] = group
        if self.scheduler is not None:
            state["__scheduler__"] = self.scheduler.state_dict()
        return state

    def set_state(self, state_dict: dict) -> None:
        state = dict(state_dict)
        group = state.pop("__group__", None)
        self._waiting_scheduler = state.pop("__scheduler__", None)
        self._waiting_group = dict(group or {})
        if group is not None:
            kept = {k: v for k, v in group.items()  # the settings; not fused/foreach, the kernels this machine has
                    if (k in self.pt_optim_args or k == "lr") and k not in ("fused", "foreach")}
            self.pt_optim_args = {**self.pt_optim_args, **kept}
        self._state_waiting_to_be_consumed.update(state)


# ----------------------------------------------------------------------------- the tables
OPTIMIZERS.register("adam", torch.optim.Adam, doc="Adam (Kingma & Ba 2015)", target=torch.optim.Adam)
OPTIMIZERS.register("clipped-adam", ClippedAdam, doc="Pyro's ClippedAdam (per-element clip_norm, lr decay lrd)",
                    target=ClippedAdam)
OPTIMIZERS.register("adamw", torch.optim.AdamW, doc="Adam with decoupled weight decay", target=torch.optim.AdamW)

_SCHEDULE_DEFAULTS = {"exponential": {"gamma": 0.98}, "step": {"step_size": 10, "gamma": 0.5}}


def _schedule_check(name):
    """A checker of a schedule's option values that builds nothing: the options torch requires must be there."""
    def check(T_max=None, **options):
        if name == "cosine" and T_max is not None and not T_max >= 1:
            raise ValueError(f"lr schedule 'cosine': T_max must be >= 1 epoch, got {T_max!r}")
    return check


for _name, _cls, _doc in [
    ("exponential", torch.optim.lr_scheduler.ExponentialLR, "lr *= gamma every epoch"),
    ("step", torch.optim.lr_scheduler.StepLR, "lr *= gamma every step_size epochs"),
    ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, "cosine decay over T_max epochs (default: the run)"),
    ("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau,
     "lr *= factor when the validation ELBO stalls for patience epochs"),
]:
    LR_SCHEDULES.register(_name, _cls, doc=_doc, target=_cls, check=_schedule_check(_name))


def make_optimizer(name: str = "adam", lr: float = 1e-3, clip_norm: float | None = None, schedule=None,
                   epochs: int | None = None, **options) -> pyro.optim.PyroOptim:
    """A ``pyro.optim`` optimiser by name (``adam``, ``clipped-adam``, ``adamw``).

    It is a :class:`MultiTensorOptim`: one torch optimiser over all parameters
    rather than Pyro's one per tensor (same update, fewer calls).

    ``clip_norm`` clips the gradient norm of each parameter tensor (Pyro's
    ``clip_args``). ``schedule`` (a name or ``{"name": "exponential", "gamma": 0.99}``)
    wraps it in a learning-rate scheduler stepped once per epoch by ``fit``;
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
    LR_SCHEDULES.check(schedule)
    sopts = {**_SCHEDULE_DEFAULTS.get(sname, {}), **sopts}
    if sname == "cosine" and "T_max" not in sopts:
        if epochs is None:
            raise ValueError("lr schedule 'cosine' needs T_max (epochs to decay over)")
        sopts["T_max"] = int(epochs)
    return MultiTensorOptim(optim_cls, args, clip, scheduler=(LR_SCHEDULES[sname].factory, sopts))


def schedulers(optim) -> list:
    """The torch lr schedulers inside a pyro optimiser (ours, or Pyro's ``PyroLRScheduler``)."""
    if isinstance(optim, MultiTensorOptim):
        return [optim.scheduler] if optim.scheduler is not None else []
    if isinstance(optim, pyro.optim.PyroLRScheduler):
        return list(optim.optim_objs.values())
    return []


def current_lr(optim) -> float | None:
    """The learning rate of a pyro optimiser now (of its first parameter group)."""
    if isinstance(optim, MultiTensorOptim):
        return optim.lr
    for opt in getattr(optim, "optim_objs", {}).values():
        opt = getattr(opt, "optimizer", opt)  # a scheduler wraps its optimiser
        return float(opt.param_groups[0]["lr"])
    return None
