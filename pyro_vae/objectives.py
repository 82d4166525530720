"""Objectives by name, KL-weight schedules and the messenger that applies them.

Every name maps to a Pyro ELBO object in one table (``OBJECTIVES``):

=============  =====================================================================
``elbo``       :class:`SummedTrace_ELBO`, ``Trace_ELBO`` with less work per step (default);
               ``jit=True`` gives :class:`ShapeJitELBO` (``JitTrace_ELBO``)
``meanfield``  ``TraceMeanField_ELBO``: analytic KL where torch has it
``iwae``       :class:`LocalRenyiELBO` with ``alpha=0``: the IWAE bound per data point
``renyi``      :class:`LocalRenyiELBO` with a chosen ``alpha``
``tracegraph`` ``TraceGraph_ELBO`` (Rao-Blackwellised score-function gradients)
``enum``       ``TraceEnum_ELBO`` for models with enumerated discrete sites
=============  =====================================================================

Why not Pyro's ``RenyiELBO`` for ``iwae``: it takes the log-mean-exp over
particles per point of the plates shared by all sites, which is the IWAE bound
for full-batch data, but the log weights it exponentiates already carry the
data plate's minibatch scale ``N / B``. With minibatches it then estimates
``B/N * log mean_k w^(N/B)`` per point: no longer the IWAE bound, and biased
upwards (measured on digits with N/B = 10: -29.16 nats against -29.34 for the
true IWAE-5 bound and -29.37 for the ELBO). :class:`LocalRenyiELBO` removes the
scale before the log-mean-exp and applies it after, on Pyro's own vectorised
traces; ``tests/test_objectives.py`` checks both facts.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import (ELBO, JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO,
                        TraceMeanField_ELBO)
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.util import warn_if_nan
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import prune_subsample_sites

from ._registry import KL_SCHEDULES, OBJECTIVES, did_you_mean, spec_name
from .importance import data_frame

__all__ = [
    "OBJECTIVES",
    "make_objective",
    "SummedTrace_ELBO",
    "LocalRenyiELBO",
    "FreeBitsELBO",
    "ShapeJitELBO",
    "KLSchedule",
    "KL_SCHEDULES",
    "LatentScale",
    "model_objective",
    "objective_for",
]


# ----------------------------------------------------------------------------- ELBO
def _add(total, term):
    return term if total is None else total + term


class SummedTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` that sums the log-densities of a reparameterised guide before scaling them.

    The same estimator on the same Pyro traces, so the same values and
    gradients (``tests/test_objectives.py`` compares them on every model
    type), with less work per step. ``Trace_ELBO`` multiplies each site's
    log-density by its plate's scale (``N / B``), keeps three score parts
    per guide site and reads every site's sum back to Python; for a VAE that
    is about ten extra tensor operations, forwards and backwards, and three
    synchronisations a step. Here every site's log-density is summed, sums
    sharing a scale are added, each distinct scale multiplies once and the
    loss is read once::

        ELBO = sum_s scale_s * (sum_{model sites at s} log p - sum_{guide sites at s} log q)

    A guide site without ``rsample`` (which needs the score-function
    estimator), a guide that is a ``GuideMessenger`` and Pyro's validation
    mode (which checks the traces) take ``Trace_ELBO``'s own path.
    """

    def _get_trace(self, model, guide, args, kwargs):
        if is_validation_enabled() or isinstance(poutine.unwrap(guide), Messenger):
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace),
                                    graph_type="flat").get_trace(*args, **kwargs)
        return model_trace, guide_trace

    @staticmethod
    def _sites(trace):
        return [site for site in trace.nodes.values()
                if site["type"] == "sample" and not isinstance(site["fn"], _Subsample)]

    def _summed_elbo(self, model_trace, guide_trace):
        """The particle's ELBO as a tensor, or ``None`` where ``Trace_ELBO``'s estimator is needed."""
        model_sites, guide_sites = self._sites(model_trace), self._sites(guide_trace)
        if any("log_prob" in site for site in model_sites) or not all(site["fn"].has_rsample
                                                                       for site in guide_sites):
            return None
        sums: dict = {}  # scale -> [sum of model log-densities, sum of guide log-densities]
        for i, sites in enumerate((model_sites, guide_sites)):
            for site in sites:
                lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
                scale, mask = site["scale"], site["mask"]
                if torch.is_tensor(scale) or mask is not None:
                    lp, scale = scale_and_mask(lp, scale, mask), 1.0
                pair = sums.setdefault(scale, [None, None])
                pair[i] = _add(pair[i], lp.sum())
        elbo = None
        for scale, (log_p, log_q) in sums.items():
            term = -log_q if log_p is None else (log_p if log_q is None else log_p - log_q)
            elbo = _add(elbo, term if scale == 1.0 else term * scale)
        return elbo

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo = self._summed_elbo(model_trace, guide_trace)
        if elbo is None:  # Trace_ELBO's bookkeeping (memoised per site: a no-op on its own validated traces)
            model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
            model_trace.compute_log_prob()
            guide_trace.compute_score_parts()
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        return -elbo.item(), -elbo

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """``Trace_ELBO.loss_and_grads``, letting go of each particle's traces before its backward pass.

        The traces hold the decoder's output and other large tensors; the
        backward pass frees what it no longer needs, and these go with them
        instead of after the whole step."""
        loss = 0.0
        for traces in self._get_traces(model, guide, args, kwargs):
            trainable = any(site["type"] == "param" for trace in traces for site in trace.nodes.values())
            loss_particle, surrogate = self._differentiable_loss_particle(*traces)
            del traces
            loss += loss_particle / self.num_particles
            if trainable and getattr(surrogate, "requires_grad", False):
                if self.num_particles != 1:
                    surrogate = surrogate / self.num_particles
                surrogate.backward(retain_graph=self.retain_graph)
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            loss = sum(self._differentiable_loss_particle(*traces)[0]
                       for traces in self._get_traces(model, guide, args, kwargs)) / self.num_particles
        warn_if_nan(loss, "loss")
        return loss


# ----------------------------------------------------------------------------- IWAE / Renyi
def _particle_rank(*traces) -> int:
    """Batch rank with the particle dim first: every log_prob is left-padded to it.

    With one particle Pyro does not add a particle plate, so one is counted here.
    """
    frames = [f for tr in traces for s in tr.nodes.values() if s["type"] == "sample"
              for f in s["cond_indep_stack"] if f.vectorized]
    rank = max((-f.dim for f in frames), default=0)
    return rank if any(f.name == "num_particles_vectorized" for f in frames) else rank + 1


class LocalRenyiELBO(ELBO):
    """Renyi bound with the log-mean-exp over particles taken per data point (Li & Turner 2016)::

        L_alpha(x_n) = 1 / (1 - alpha) * log 1/K sum_k w_nk^(1 - alpha),
        log w_nk = log p(x_n, z_nk) - log q(z_nk | x_n)

    ``alpha=0`` is the IWAE bound (Burda et al. 2016); as ``alpha -> 1`` it
    tends to the ELBO. Sites inside the ``"data"`` plate give the per-point
    weights; the plate's subsampling scale ``N / B`` multiplies the sum over
    points afterwards. Sites outside the data plate (global latents) enter
    as a particle-averaged ELBO term. Latent sites must be reparameterised.

    The ``K`` particles are vectorised with a particle plate, as Pyro does.
    """

    def __init__(self, num_particles: int = 5, alpha: float = 0.0, max_plate_nesting: float = float("inf")):
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO: use objective 'elbo'")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=True)
        self.alpha = float(alpha)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["fn"].has_rsample:
                raise NotImplementedError(f"objective 'iwae'/'renyi' needs reparameterised latents; site "
                                          f"{site['name']!r} is not (use 'elbo' or 'tracegraph')")
        return model_trace, guide_trace

    def _objective(self, model, guide, args, kwargs):
        total = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            rank = _particle_rank(model_trace, guide_trace)
            local, global_, scale = 0.0, 0.0, 1.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] != "sample":
                        continue
                    lp = sign * site["log_prob"]
                    lp = lp.reshape((1,) * (rank - lp.dim()) + lp.shape)
                    frame = data_frame(site, required=False)
                    if frame is None:
                        global_ = global_ + lp.reshape(lp.shape[0], -1).sum(-1)
                        continue
                    scale = frame.full_size / frame.size if frame.full_size else 1.0
                    other = [d for d in range(1, rank) if d != rank + frame.dim]
                    if other:
                        lp = lp.sum(other, keepdim=True)
                    local = local + lp.reshape(lp.shape[0], -1) / scale  # [K, B], per-point log weights
            if torch.is_tensor(local):
                t = (1.0 - self.alpha) * local
                per_point = (torch.logsumexp(t, 0) - math.log(t.shape[0])) / (1.0 - self.alpha)
                total = total + scale * per_point.sum()
            if torch.is_tensor(global_):
                total = total + global_.mean()
        return total

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return -float(self._objective(model, guide, args, kwargs))

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return -self._objective(model, guide, args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()


# ----------------------------------------------------------------------------- free bits
class FreeBitsELBO(Trace_ELBO):
    """ELBO with free bits (Kingma et al. 2016, Eq. 15)::

        L = E_q[log p(x | z)] - sum_s max(lambda * d_s, KL_s)

    where ``KL_s`` is the minibatch-mean Monte Carlo KL of latent site ``s``
    (``d_s`` dimensions), so no latent site is pushed below ``lambda`` nats
    per dimension. Each latent site is one group; latents must be reparameterised.
    """

    def __init__(self, free_bits: float, num_particles: int = 1, max_plate_nesting: float = float("inf")):
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0 nats per latent dimension, got {free_bits!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.free_bits = float(free_bits)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            objective = 0.0
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if site["is_observed"]:
                    objective = objective + site["log_prob_sum"]
                    continue
                kl = guide_trace.nodes[name]["unscaled_log_prob"] - site["unscaled_log_prob"]  # per point
                floor = self.free_bits * site["fn"].event_shape.numel()
                # site["scale"] carries N / B (data plate) and any KL weight
                objective = objective - site["scale"] * kl.numel() * kl.mean().clamp(min=floor)
            loss = loss - objective / self.num_particles
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


# ----------------------------------------------------------------------------- compiled
class ShapeJitELBO(ELBO):
    """Pyro's ``JitTrace_ELBO``, one compiled graph per shape of the positional arguments.

    ``pyro.ops.jit`` keys its graphs on the number of positional arguments and
    the keyword values only, so a last, smaller minibatch would run the graph
    traced for the full size, valid only if no shape-dependent Python value
    was frozen into it; here each tuple of argument shapes gets its own
    ``JitTrace_ELBO``. Tensors must be positional (``model(x, idx, num_data=N)``):
    Pyro would key a tensor keyword by identity, compiling a new graph every
    step (memory grew by hundreds of MiB over a few hundred steps that way).

    The compiled graph freezes every Python value the model reads, e.g. a KL
    weight: :func:`~pyro_vae.train.fit` refuses ``jit`` with a changing KL schedule.
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles)
        self._compiled: dict = {}

    def _for(self, args, kwargs) -> JitTrace_ELBO:
        tensors = sorted(k for k, v in kwargs.items() if torch.is_tensor(v))
        if tensors:
            raise TypeError(f"objective 'elbo' with jit=True needs tensors as positional arguments, got "
                            f"{', '.join(tensors)} by keyword; call model(x, idx, num_data=N)")
        key = tuple(tuple(a.shape) if torch.is_tensor(a) else None for a in args)
        if key not in self._compiled:
            self._compiled[key] = JitTrace_ELBO(num_particles=self.num_particles,
                                                max_plate_nesting=self.max_plate_nesting,
                                                vectorize_particles=self.vectorize_particles,
                                                ignore_jit_warnings=True)
        return self._compiled[key]

    def _get_trace(self, model, guide, args, kwargs):
        return self._for(args, kwargs)._get_trace(model, guide, args, kwargs)

    def _call(self, method: str, model, guide, args, kwargs):
        elbo = self._for(args, kwargs)
        with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit.trace, which Pyro's jit is built on
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace. is deprecated", category=FutureWarning)
            return getattr(elbo, method)(model, guide, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs):
        return self._call("loss", model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self._call("differentiable_loss", model, guide, args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return self._call("loss_and_grads", model, guide, args, kwargs)


# ----------------------------------------------------------------------------- the table
def _vectorised(cls, num_particles, max_plate_nesting, **kw):
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1,
               max_plate_nesting=max_plate_nesting, **kw)


def _elbo(num_particles=1, max_plate_nesting=float("inf"), jit: bool = False, free_bits: float | None = None):
    if free_bits:
        if jit:
            raise ValueError("objective 'elbo': free_bits and jit cannot be combined")
        return FreeBitsELBO(free_bits, num_particles=num_particles, max_plate_nesting=max_plate_nesting)
    return _vectorised(ShapeJitELBO if jit else SummedTrace_ELBO, num_particles, max_plate_nesting)


def _meanfield(num_particles=1, max_plate_nesting=float("inf"), jit: bool = False):
    if jit:
        raise ValueError(
            "objective 'meanfield' with jit=True (JitTraceMeanField_ELBO) is refused: on torch 2.14 it grows memory "
            "by ~3 MiB per step at batch 128 and runs ~5x slower (see ANCHORS.md). Use 'meanfield' without jit, "
            "or 'elbo' with jit=True.")
    return _vectorised(TraceMeanField_ELBO, num_particles, max_plate_nesting)


def _renyi(num_particles=5, max_plate_nesting=float("inf"), alpha: float = 0.5):
    return LocalRenyiELBO(num_particles, alpha=alpha, max_plate_nesting=max_plate_nesting)


class _Options:
    """Signatures the registry reads to validate each objective's option names."""

    class elbo:
        def __init__(self, jit: bool = False, free_bits: float | None = None): ...

    class meanfield:
        def __init__(self, jit: bool = False): ...

    class renyi:
        def __init__(self, alpha: float = 0.5): ...

    class none:
        def __init__(self): ...


OBJECTIVES.register("elbo", _elbo, doc="Trace_ELBO, log-densities summed before scaling (jit=True: "
                    "JitTrace_ELBO; free_bits=lambda nats per latent dim)",
                    target=_Options.elbo)
OBJECTIVES.register("meanfield", _meanfield, doc="TraceMeanField_ELBO, analytic KL where available",
                    target=_Options.meanfield)
OBJECTIVES.register("iwae", lambda num_particles=5, max_plate_nesting=float("inf"): _renyi(
    num_particles, max_plate_nesting, alpha=0.0), doc="IWAE bound per data point, K particles", target=_Options.none)
OBJECTIVES.register("renyi", _renyi, doc="Renyi alpha bound per data point, K particles", target=_Options.renyi)
OBJECTIVES.register("tracegraph", lambda num_particles=1, max_plate_nesting=float("inf"): _vectorised(
    TraceGraph_ELBO, num_particles, max_plate_nesting), doc="TraceGraph_ELBO", target=_Options.none)
OBJECTIVES.register("enum", lambda num_particles=1, max_plate_nesting=float("inf"): _vectorised(
    TraceEnum_ELBO, num_particles, max_plate_nesting), doc="TraceEnum_ELBO for enumerated discrete sites",
    target=_Options.none)


def make_objective(spec="elbo", num_particles: int | None = None, max_plate_nesting: int | None = None) -> ELBO:
    """A Pyro ELBO from a name (``"iwae"``), a dict (``{"name": "renyi", "alpha": 0.5}``) or the object itself.

    ``max_plate_nesting`` (the model's, e.g. ``VAE.max_plate_nesting``) spares
    Pyro a tracing pass to guess it.
    """
    if isinstance(spec, ELBO):
        return spec
    name, options = OBJECTIVES.split_spec(spec)
    OBJECTIVES.check_options(name, options)
    if num_particles is not None:
        if int(num_particles) < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        options["num_particles"] = int(num_particles)
    if max_plate_nesting is not None:
        options["max_plate_nesting"] = int(max_plate_nesting)
    return OBJECTIVES[name].factory(**options)


def model_objective(model, spec="elbo", num_particles: int | None = None) -> ELBO:
    """:func:`make_objective` for ``model``: ``spec`` as the model must be fitted (:func:`objective_for`),
    with the model's ``max_plate_nesting``. What :func:`~pyro_vae.train.fit` and
    :func:`~pyro_vae.evaluate.elbo` use."""
    return make_objective(objective_for(model, spec), num_particles, getattr(model, "max_plate_nesting", None))


def objective_for(model, spec="elbo"):
    """``spec`` as ``model`` must be fitted: a model that sums a discrete site out exactly says so.

    A model with ``objective = "enum"`` (M2, whose label is enumerated) turns the
    default ``"elbo"`` into ``"enum"``: the same bound, with the discrete site
    summed exactly by ``TraceEnum_ELBO`` instead of sampled. Any other name is
    refused for it, since it would sample the site its guide marks for enumeration.
    ELBO objects pass unchanged.
    """
    needed = getattr(model, "objective", None)
    if needed is None or isinstance(spec, ELBO):
        return spec
    name = spec_name(spec)
    if name == "elbo":
        return needed if isinstance(spec, str) else {**spec, "name": needed}
    if name != needed:
        raise ValueError(f"model {type(model).__name__} sums its discrete site out exactly and needs objective "
                         f"{needed!r} (or 'elbo', which means it), got {name!r}")
    return spec


# ----------------------------------------------------------------------------- KL weight
@dataclass(frozen=True)
class KLSchedule:
    """The KL weight beta as a function of training progress ``t`` (epochs, fractional).

    ``kind``:
    - ``"constant"``: ``beta`` throughout (beta-VAE, Higgins et al. 2017);
    - ``"linear"``: warm-up from 0 to ``beta`` over ``warmup`` epochs (Bowman et al. 2016);
    - ``"cyclical"``: ``cycles`` ramps over ``epochs``, each rising over the first
      ``ratio`` of its period, then holding at ``beta`` (Fu et al. 2019).
    """

    kind: str = "constant"
    beta: float = 1.0
    warmup: float = 10.0
    cycles: int = 4
    ratio: float = 0.5
    epochs: float = 100.0

    def __post_init__(self):
        if self.kind not in ("constant", "linear", "cyclical"):
            raise ValueError(f"KL schedule kind must be constant, linear or cyclical, got {self.kind!r}."
                             + did_you_mean(self.kind, ("constant", "linear", "cyclical")))
        if not self.beta >= 0:
            raise ValueError(f"KL weight beta must be >= 0, got {self.beta!r}")
        if self.kind == "linear" and not self.warmup > 0:
            raise ValueError(f"linear KL warm-up needs warmup > 0 epochs, got {self.warmup!r}")
        if self.kind == "cyclical" and not (self.cycles >= 1 and 0 < self.ratio <= 1 and self.epochs > 0):
            raise ValueError("cyclical KL schedule needs cycles >= 1, 0 < ratio <= 1 and epochs > 0")

    def __call__(self, t: float) -> float:
        if self.kind == "constant":
            return self.beta
        if self.kind == "linear":
            return self.beta * min(1.0, t / self.warmup)
        period = self.epochs / self.cycles
        phase = (t % period) / period if t < self.epochs else 1.0
        return self.beta * min(1.0, phase / self.ratio)


for _kind, _doc in [("constant", "beta throughout"), ("linear", "warm-up from 0 to beta over warmup epochs"),
                    ("cyclical", "cycles ramps over the run, each rising over ratio of its period")]:
    KL_SCHEDULES.register(_kind, partial(KLSchedule, _kind), doc=_doc, target=KLSchedule, skip=("kind",),
                          check=partial(KLSchedule, _kind))


class LatentScale(Messenger):
    """Scale the log-densities of the named latent sites by ``weight``, in model and guide alike.

    Like ``poutine.scale``, but only for latent sites, so ``beta * KL`` is
    weighted while the likelihood is not. A weight of 0 is allowed (the start of a warm-up).
    """

    def __init__(self, sites, weight: float = 1.0):
        super().__init__()
        self.sites = frozenset(sites)
        self.weight = float(weight)

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.sites and not msg["is_observed"]:
            msg["scale"] = self.weight * msg["scale"]
