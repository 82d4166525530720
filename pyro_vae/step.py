"""One SVI step that refuses non-finite losses and gradients, and finite losses that diverged.

The moves of Pyro's ``SVI.step``: the objective's ``loss_and_grads`` under a
handler that records the parameters (``poutine.trace(param_only=True)`` there), ``optim(params)``,
then the gradients cleared. Between gradients and update the loss and the
gradients are checked, so a NaN or Inf is caught at the step it appears and
never reaches the weights; so is a finite loss that left the plausible range
(:class:`Divergence`, through the stepper's ``accept``).
:class:`~pyro_vae.distributed.DistributedStepper` replaces only the
loss-and-gradients move.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Sequence

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger

__all__ = ["Stepper", "Divergence", "DIVERGENCE_FACTOR"]

DIVERGENCE_FACTOR = 1000.0  # the default of train.divergence (pyro_vae.config.TrainConfig)


def _finite(grads: list) -> bool:
    """Whether every gradient element is finite: one sum per tensor and one sync.

    A sum is NaN or Inf when any element is (``inf - inf`` is NaN); a total
    beyond float32's ~3e38 overflows and counts as diverged too. Sums cost
    less than the norms this used (70 against 175 us per step over the
    784-400-50 VAE's gradients on 2 cores).
    """
    return not grads or math.isfinite(float(torch.stack([g.sum() for g in grads]).sum()))


class _ParamCapture(Messenger):
    """The unconstrained tensors of the ``param`` sites run inside it, once each, in first-seen order.

    What ``poutine.trace(param_only=True)`` gives ``SVI.step``, without
    copying each message into a trace node (~100 us, about 4% of a tiny
    network's step, went to that capture).
    """

    def __init__(self):
        super().__init__()
        self.params: dict = {}

    def _pyro_post_param(self, msg) -> None:
        if msg["name"] not in self.params:
            self.params[msg["name"]] = msg["value"].unconstrained()


class Divergence:
    """When a finite loss has diverged: it rose far above anything the run has shown plausible.

    Fed every applied step's loss ``L`` in nats per data point (``-ELBO / N``,
    what :func:`~pyro_vae.train.fit` records as ``step_losses``), it refuses a
    step whose loss exceeds ::

        limit = best + factor * scale,    scale = max(|first|, |best|, D)

    ``first`` is the run's first loss (the untrained model's), ``best`` the
    lowest loss applied so far, ``D`` the number of values in one data point.
    With the default ``factor = 1000`` a step is refused once its loss is three
    orders of magnitude of the run's own scale above its best: 1000 nats per
    value, or a thousand times the untrained model's loss.

    Why this rule:

    * **An absolute floor, D nats per point.** Continuous likelihoods on
      standardised data have losses near 0 or below it, where a ratio of losses
      (``L / best``) is noise; a loss is a sum over the D values of a point, so
      one nat per value is the natural unit.
    * **The untrained model's loss sets the data's own scale.** Training only
      lowers it, so whatever the data's units (raw counts start at 1e5 nats per
      point), a loss a thousand times the first one is not a plausible
      fit. ``|best|`` widens the scale for a model whose loss went strongly
      negative (a normal likelihood with a small learned scale), where
      minibatch noise grows with the fit.
    * **Measured from the best loss, not the last one,** so a slow climb is
      caught too; but healthy rises stay far below the limit: KL warm-up from
      beta 0 adds the KL term (tens to hundreds of nats per point), cyclical
      schedules drop beta and rise again, minibatch noise is a few nats. Over
      the test suite and 60 random soak configs (``benchmarks/soak.py``) the
      closest a healthy step came was 3.4 x the scale (a learned normal scale
      spiking by 270 nats), 300 times below the default. Diverging runs leave
      the range at once: on the 8x8 digits (D = 64, first
      loss 47) ``--lr 1e6`` jumps to 6e29 and ``--lr 10`` with a normal
      likelihood to 8e24 at step 2, and even ``--lr 1`` spikes to 6e5 (1e4
      times the scale) before settling worse than where it started.
    * **Decided from the loss alone, before the update,** from the losses the
      run keeps anyway: :meth:`start` rebuilds the state from a resumed run's
      ``step_losses``, so a resumed run refuses exactly the steps an
      uninterrupted one would.

    ``factor`` must be at least 1: below, the limit sits within a nat per value
    of the best loss, which KL warm-up and minibatch noise reach in healthy runs.
    One object watches one run at a time (:meth:`start` resets it).
    """

    def __init__(self, factor: float = DIVERGENCE_FACTOR):
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise TypeError(f"divergence takes a factor (a number >= 1), got {type(factor).__name__} {factor!r}")
        if not (math.isfinite(factor) and factor >= 1):
            raise ValueError(f"the divergence factor must be a finite number >= 1, got {factor!r} (to turn the "
                             "check off pass divergence=None, or in a config train.divergence = 0)")
        self.factor = float(factor)
        self.start(1, ())

    def start(self, data_dim: int, losses: Sequence[float] = ()) -> None:
        """Begin watching a run on points of ``data_dim`` values, after the applied ``losses`` (a resumed run's)."""
        self.data_dim = max(int(data_dim), 1)
        self.first = float(losses[0]) if len(losses) else None
        self.best = min(map(float, losses)) if len(losses) else math.inf

    @property
    def scale(self) -> float:
        return max(abs(self.first), abs(self.best), float(self.data_dim)) if self.first is not None else math.inf

    @property
    def limit(self) -> float:
        """The highest loss a step may have now (``inf`` before the first step)."""
        return self.best + self.factor * self.scale if self.first is not None else math.inf

    def accepts(self, loss: float) -> bool:
        """Whether a step of ``loss`` (nats per data point, finite) is within range; an accepted one is recorded."""
        if loss > self.limit:
            return False
        if self.first is None:
            self.first = loss
        self.best = min(self.best, loss)
        return True

    def describe(self, loss: float) -> str:
        """Why ``loss`` was refused, with the numbers."""
        return (f"the loss rose to {loss:.3g} nats per data point, out of the plausible range for this data "
                f"(limit {self.limit:.3g} = the best loss so far, {self.best:.4g}, + {self.factor:g} x the run's "
                f"scale {self.scale:.4g}, the largest of |first loss| {abs(self.first):.4g}, |best loss| "
                f"{abs(self.best):.4g} and the {self.data_dim} values per data point)")

    def __repr__(self) -> str:
        return f"Divergence(factor={self.factor:g})"


class Stepper:
    """One SVI step on ``model``/``guide`` that refuses non-finite losses and gradients, and diverged losses.

    ``stepper(*args, **kwargs)`` runs :meth:`loss_and_grads` (the objective's)
    under a handler that records the ``param`` sites, then
    ``optim(params)``, then clears the gradients (set to ``None``, which torch
    optimisers skip, rather than re-allocated as zeros). Between gradients and
    update it checks the loss and the gradients' sums, then asks ``accept``;
    on a non-finite value or a refusal it clears the gradients and returns
    ``None`` without touching the weights, and ``refused`` says why.

    Args:
        model, guide: Pyro programs.
        optim: a ``pyro.optim`` optimiser (called with the captured parameters).
        objective: a Pyro ELBO (anything with ``loss_and_grads``).
        validate: keep Pyro's distribution validation on inside the step.
        accept: called with a finite step's loss (as the objective returns it) before the update;
            ``False`` refuses the step as diverged (``fit`` sets it from its :class:`Divergence`).
            An attribute, so it can be set on a subclass's instance too.

    Attributes:
        refused: after a call, ``None`` (applied), ``"nonfinite"`` or ``"diverged"``.
        loss: the last call's loss, refused or not.
    """

    def __init__(self, model, guide, optim, objective, validate: bool = False,
                 accept: Callable[[float], bool] | None = None):
        self.model, self.guide, self.optim, self.objective = model, guide, optim, objective
        self.validate, self.accept = validate, accept
        self.refused, self.loss = None, None

    def loss_and_grads(self, *args, **kwargs) -> float:
        """The loss of this step, its gradients left in the parameters' ``.grad``."""
        return self.objective.loss_and_grads(self.model, self.guide, *args, **kwargs)

    def __call__(self, *args, **kwargs) -> float | None:
        validation = contextlib.nullcontext() if is_validation_enabled() == self.validate else \
            pyro.validation_enabled(self.validate)  # switching it costs ~30 us; fit switches once for all steps
        with validation, _ParamCapture() as capture, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Encountered NaN")  # reported by the caller, with the step
            loss = float(self.loss_and_grads(*args, **kwargs))
        params = list(capture.params.values())
        self.loss, self.refused = loss, None
        if not (math.isfinite(loss) and _finite([p.grad for p in params if p.grad is not None])):
            self.refused = "nonfinite"
        elif self.accept is not None and not self.accept(loss):
            self.refused = "diverged"
        else:
            self.optim(params)
        for p in params:
            p.grad = None
        return None if self.refused else loss
