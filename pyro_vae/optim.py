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
"""

from __future__ import annotations

import inspect

import pyro
import torch
from pyro.optim import PyroOptim

__all__ = ["MultiTensorOptim"]


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
        if group is not None:
            kept = {k: v for k, v in group.items()  # the settings; not fused/foreach, the kernels this machine has
                    if (k in self.pt_optim_args or k == "lr") and k not in ("fused", "foreach")}
            self.pt_optim_args = {**self.pt_optim_args, **kept}
        self._state_waiting_to_be_consumed.update(state)
