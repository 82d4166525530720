"""Importance weights of a VAE from Pyro traces, under a vectorised particle plate.

The machinery behind :mod:`pyro_vae.evaluate` and :mod:`pyro_vae.diagnostics`:
traces of the guide and of the model replayed against it::

    with plate("particles", k, dim=-(max_plate_nesting + 1)):
        guide_trace = trace(guide).get_trace(x)
        model_trace = trace(replay(model, trace=guide_trace)).get_trace(x)

    log w[k, n] = sum_{model sites} log p(.)[k, n] - sum_{guide sites} log q(.)[k, n]

Each site's ``log_prob`` is summed over every dim except the particle dim and
the ``"data"`` plate dim, so models with more latent sites or more plates need
no code here, provided every sample site sits inside the ``"data"`` plate.
Model and guide are called with ``num_data=None``: no minibatch scaling; site
scales (``poutine.scale``, e.g. KL weights) are ignored, masks are applied, and
``pyro.factor`` sites are left out: in these models they are training terms
(M2's classifier loss), not part of ``p(x, z)``.

Common random numbers make chunking exact: the guide's noise for data point
``n`` and particle ``k`` comes from a stream keyed by ``(seed, site, n // 64,
k // 10)`` (see ``_Streams``), never from the global RNG, so the draws do not
depend on ``batch_size`` or ``particle_chunk``. All ``K`` log weights of a point
are reduced in one ``logsumexp``, and data chunks are padded to a multiple of 64
rows so that SIMD kernels never fall back to their scalar tail loops (which
round transcendental functions differently) at chunk-dependent positions.

The estimators built on it are :mod:`pyro_vae.evaluate` and :mod:`pyro_vae.diagnostics`.
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_factor, site_is_subsample
from torch.distributions import (Bernoulli, Categorical, Independent, LowRankMultivariateNormal, MultivariateNormal,
                                 Normal, OneHotCategorical, StudentT, TransformedDistribution)

from .data import as_tensors
from .distributions import bernoulli_logits_log_prob
from .models.base import Unsupported

__all__ = ["DATA_PLATE", "data_frame", "is_random", "per_point", "site_log_prob", "Densities", "densities",
           "evaluation", "Evaluator", "log_mean_exp", "mean_stderr"]

DATA_PLATE = "data"
_ROWS = 64  # points per noise tile; data chunks are padded to a multiple of it
_BLOCK = 10  # particles per noise stream: K = 10, 100, 1000, 5000 draw no spare noise
_PAIRS_PER_PASS = 2 ** 15  # (particle, point) pairs per trace when particle_chunk is None
_LOG_2PI = math.log(2 * math.pi)
_NOISE = "_standard_normal_noise"  # key in a guide site's ``infer`` dict


# --------------------------------------------------------------------------- common random numbers

def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a cheap bijective hash."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _stream_keys(seed: int, site: str, tiles: range, blocks: range) -> np.ndarray:
    """One 64-bit generator seed per (point tile, particle block) of one site: ``[len(tiles), len(blocks)]``."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        h = _mix64(np.array([seed % 2 ** 64], dtype=np.uint64) + golden)
        h = _mix64(h ^ np.uint64(zlib.crc32(site.encode())))
        h = _mix64(h ^ (np.arange(tiles.start, tiles.stop, dtype=np.uint64)[:, None] * golden))
        return _mix64(h ^ (np.arange(blocks.start, blocks.stop, dtype=np.uint64)[None, :] + golden))


def _unwrap(fn):
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return fn


def _from_noise(fn, eps: torch.Tensor, name: str) -> torch.Tensor:
    """A draw of ``fn`` (shape ``batch + event``) from standard normal noise ``eps`` of that shape.

    A Gaussian is ``loc + L eps`` (``L`` its Cholesky factor); a transformed distribution (a flow) is its
    base's draw pushed through its transforms, in the order it applies them, which also fills the
    transforms' caches so that ``log_prob`` of the draw needs no inverse; a Student-t goes through its
    inverse CDF (SciPy's ``stdtrit``).
    """
    base = _unwrap(fn)
    if isinstance(base, Normal):
        return base.loc + base.scale * eps
    if isinstance(base, (MultivariateNormal, LowRankMultivariateNormal)):
        return base.loc + (base.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    if isinstance(base, TransformedDistribution):
        value = _from_noise(base.base_dist, eps, name)
        for transform in base.transforms:
            value = transform(value)
        return value
    if isinstance(base, StudentT):
        from scipy.special import stdtrit

        df, loc, scale = torch.broadcast_tensors(base.df, base.loc, base.scale)
        u = torch.special.ndtr(eps.double()).expand(df.shape).cpu().numpy()
        t = torch.from_numpy(stdtrit(df.detach().double().cpu().numpy(), u)).to(loc)
        return loc + scale * t
    u = torch.special.ndtr(eps)
    if isinstance(base, OneHotCategorical):  # inverse CDF, one uniform per categorical draw
        k = (base.probs.cumsum(-1) < u[..., :1]).sum(-1).clamp(max=base.probs.shape[-1] - 1)
        return torch.nn.functional.one_hot(k, base.probs.shape[-1]).to(base.probs)
    if isinstance(base, Categorical):
        return (base.probs.cumsum(-1) < u.unsqueeze(-1)).sum(-1).clamp(max=base.probs.shape[-1] - 1)
    tiny = torch.finfo(eps.dtype).eps
    try:
        return base.icdf(u.clamp(tiny, 1 - tiny)).expand(eps.shape)
    except NotImplementedError:
        warnings.warn(f"guide site {name!r}: {type(base).__name__} has no icdf, so its draws come from the global "
                      "RNG and results depend on batch_size / particle_chunk", RuntimeWarning, stacklevel=2)
        return fn.sample()


def data_frame(site, required: bool = True):
    """The ``"data"`` plate's frame of a site; ``None`` (or, if ``required``, an error) outside it."""
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    if not required:
        return None
    raise Unsupported(f"sample site {site['name']!r} is outside the {DATA_PLATE!r} plate: per-point importance "
                     "weights need every sample site of the model and guide inside it")


class _Streams(Messenger):
    """Set the guide's latent values from noise streams keyed by (seed, site, point tile, particle block).

    Applied outside the particle plate, so it sees each site's fully broadcast
    distribution. The noise of point ``n`` and particle ``k`` is row ``n % 64``,
    particle ``k % 10`` of the tile drawn by a generator seeded from
    ``(seed, site, n // 64, k // 10)``: it does not depend on how the data and
    particles are chunked, and a K-particle run uses the first K particles of
    any longer run.
    """

    def __init__(self, seed: int, start: int, particles: range, particle_dim: int, dtype):
        super().__init__()
        assert start % _ROWS == 0, "data chunks must start on a noise tile"
        self.seed, self.start, self.particles = seed, start, particles
        self.particle_dim, self.dtype = particle_dim, dtype

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        fn = msg["fn"]
        shape = tuple(fn.batch_shape + fn.event_shape)
        nb = len(fn.batch_shape)
        pdim, ddim = nb + self.particle_dim, nb + data_frame(msg).dim
        eps = self._noise(msg["name"], shape, pdim, ddim).to(_device_of(fn))
        msg["value"] = _from_noise(fn, eps, msg["name"])
        if isinstance(_unwrap(fn), Normal):
            msg["infer"][_NOISE] = eps  # (value - loc) / scale, for the guide's density

    def _noise(self, name: str, shape: tuple, pdim: int, ddim: int) -> torch.Tensor:
        rest = [s for i, s in enumerate(shape) if i not in (pdim, ddim)]
        rows, p = shape[ddim], self.particles
        tiles = range(self.start // _ROWS, -(-(self.start + rows) // _ROWS))
        blocks = range(p.start // _BLOCK, -(-p.stop // _BLOCK))
        keys = _stream_keys(self.seed, name, tiles, blocks)
        buf = torch.empty(len(blocks) * _BLOCK, len(tiles) * _ROWS, *rest, dtype=self.dtype)
        gen = torch.Generator()
        for i in range(len(tiles)):
            for j in range(len(blocks)):
                gen.manual_seed(int(keys[i, j]))
                buf[j * _BLOCK:(j + 1) * _BLOCK, i * _ROWS:(i + 1) * _ROWS] = torch.randn(
                    _BLOCK, _ROWS, *rest, generator=gen, dtype=self.dtype)
        first = p.start - blocks.start * _BLOCK
        return buf[first:first + len(p), :rows].movedim((0, 1), (pdim, ddim))


def _device_of(fn) -> torch.device:
    base = _unwrap(fn)
    for value in vars(base).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- traces under a particle plate

def is_random(site) -> bool:
    """A sample site of the generative model or guide: not a plate's subsample site, nor a ``pyro.factor``."""
    return site["type"] == "sample" and not site_is_subsample(site) and not site_is_factor(site)


def per_point(site, value: torch.Tensor, particle_dim: int) -> torch.Tensor:
    """Reduce a tensor over the batch dims of ``site`` to ``[particles, points]``."""
    need = -particle_dim
    if value.dim() < need:
        value = value.reshape((1,) * (need - value.dim()) + value.shape)
    n = value.dim()
    pdim, ddim = n + particle_dim, n + data_frame(site).dim
    if (pdim, ddim) == (0, 1) and n == 2:
        return value
    value = value.movedim((pdim, ddim), (0, 1))
    return value.reshape(value.shape[0], value.shape[1], -1).sum(-1)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """The stored values behind an expanded tensor: size-1 views of its stride-0 dims."""
    return t[tuple(slice(0, 1) if st == 0 else slice(None) for st in t.stride())]


def _normal_log_prob(base, value: torch.Tensor, dims: tuple, noise: torch.Tensor | None = None) -> torch.Tensor:
    loc, scale = _compact(base.loc), _compact(base.scale)
    if noise is not None:  # a guide draw value = loc + scale * noise
        square = noise.square()
    elif loc.any() or not bool((scale == 1).all()):
        diff = value - loc
        diff = diff.div_(scale) if torch.broadcast_shapes(diff.shape, scale.shape) == diff.shape else diff / scale
        square = diff.square_()
    else:  # a standard normal prior: skip two passes
        square = value.square()
    norm = scale.log() + 0.5 * _LOG_2PI
    if dims:
        norm = norm.reshape((1,) * max(0, len(dims) - norm.dim()) + norm.shape)
        norm = norm.expand(*norm.shape[:norm.dim() - len(dims)], *square.shape[square.dim() - len(dims):]).sum(dims)
        square = square.sum(dims)
    return square.mul_(-0.5) - norm


def _bernoulli_log_prob(base, value: torch.Tensor, dims: tuple, noise=None) -> torch.Tensor:
    return bernoulli_logits_log_prob(base.logits, value, dims)


_REDUCED_LOG_PROB = {Normal.log_prob: _normal_log_prob, Bernoulli.log_prob: _bernoulli_log_prob}


def _log_prob(fn, value: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``fn.log_prob(value)``, summing ``Independent`` event dims before the last elementwise steps.

    Under the particle plate ``[K, B, *event]`` tensors are the bulk of the
    work: ``Normal.log_prob`` takes ``log`` and ``**2`` of the expanded scale
    and ``Bernoulli.log_prob`` negates every element; here the normaliser is
    computed on the stored (unexpanded) scale and the negation after the sum.
    Same density, fewer passes (measured in benchmarks/bench_evaluate.py);
    other distributions use their own ``log_prob``. ``noise``: the standard
    normal draw behind a guide value (recorded by ``_Streams``), which spares
    recomputing ``(value - loc) / scale``.
    """
    base, event_dims = fn, 0
    while isinstance(base, (Independent, ExpandedDistribution)):
        event_dims += getattr(base, "reinterpreted_batch_ndims", 0)
        base = base.base_dist
    reduced = _REDUCED_LOG_PROB.get(type(base).log_prob)
    if reduced is None:
        return fn.log_prob(value)
    shape = torch.broadcast_shapes(value.shape, fn.batch_shape + fn.event_shape)
    batch_shape = shape[:len(shape) - len(fn.event_shape)]
    return reduced(base, value, tuple(range(-event_dims, 0)), noise).expand(batch_shape)


def site_log_prob(site, particle_dim: int, guide: bool = False) -> torch.Tensor:
    # replay copies a guide site's ``infer`` into the model's site: only guide sites may use the noise
    noise = site["infer"].get(_NOISE) if guide else None
    log_p = scale_and_mask(_log_prob(site["fn"], site["value"], noise), mask=site["mask"])
    return per_point(site, log_p, particle_dim)


class Densities(NamedTuple):
    """Per-point log densities of one trace pair, each ``[particles, points]``."""

    log_lik: torch.Tensor  # observed sites of the model, log p(x | z)
    log_prior: torch.Tensor  # latent sites of the model that the guide sampled, log p(z)
    log_q: torch.Tensor  # latent sites of the guide, log q(z | x)

    @property
    def log_weight(self) -> torch.Tensor:
        return self.log_lik + self.log_prior - self.log_q


def densities(guide_trace, model_trace, particle_dim: int) -> Densities:
    log_lik = log_prior = log_q = 0.0
    for name, site in model_trace.nodes.items():
        if not is_random(site):
            continue
        if site["is_observed"]:
            log_lik = log_lik + site_log_prob(site, particle_dim)
        elif name in guide_trace.nodes:  # sites the model drew itself are their own proposal: they cancel
            log_prior = log_prior + site_log_prob(site, particle_dim)
    for site in guide_trace.nodes.values():
        if is_random(site) and not site["is_observed"]:
            log_q = log_q + site_log_prob(site, particle_dim, guide=True)
    return Densities(*(torch.as_tensor(t) for t in (log_lik, log_prior, log_q)))


@contextmanager
def evaluation(vae):
    """No gradients, no validation (the data were checked once), eval mode; restored afterwards."""
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            yield
    finally:
        vae.train(was_training)


class Evaluator:
    """Runs guide and replayed model on chunks of ``data`` under a particle plate."""

    def __init__(self, vae, data, seed: int | None):
        self.vae = vae
        self.tensors = as_tensors(data)
        vae.check_data(self.tensors[0])
        self.n = self.tensors[0].shape[0]
        self.device = vae.device
        tensor = next(itertools.chain(vae.parameters(), vae.buffers()), None)  # the noise takes the model's dtype
        self.dtype = tensor.dtype if tensor is not None else torch.get_default_dtype()
        self.seed = int(torch.randint(2 ** 62, ())) if seed is None else int(seed)
        self.particle_dim = -(self._max_plate_nesting() + 1)

    def _max_plate_nesting(self) -> int:
        """Run guide and model once on two points (RNG state preserved) to find their plates."""
        args = [t[:2].to(self.device) for t in self.tensors]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(self.vae.guide).get_trace(*args)
            model_trace = poutine.trace(poutine.replay(self.vae.model, trace=guide_trace)).get_trace(*args)
        nesting = 1
        for trace in (guide_trace, model_trace):
            for site in trace.nodes.values():
                if is_random(site):
                    data_frame(site)  # raises if the site is not per point
                    dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
                    nesting = max([nesting, *dims])
        return nesting

    def chunks(self, batch_size: int):
        """``(start, stop, tensors)``: ``start`` a multiple of 64, tensors padded to a multiple of 64 rows."""
        batch = -(-max(int(batch_size), 1) // _ROWS) * _ROWS
        for start in range(0, self.n, batch):
            stop = min(start + batch, self.n)
            rows = -(-(stop - start) // _ROWS) * _ROWS
            if rows == stop - start:
                yield start, stop, tuple(t[start:stop].to(self.device) for t in self.tensors)
                continue
            pad = torch.full((rows,), stop - 1, dtype=torch.long)  # padding repeats the last point
            pad[:stop - start] = torch.arange(start, stop)
            yield start, stop, tuple(t[pad].to(self.device) for t in self.tensors)

    def particle_ranges(self, num_samples: int, rows: int, particle_chunk: int | None):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        step = max(1, _PAIRS_PER_PASS // rows) if particle_chunk is None else int(particle_chunk)
        if step < 1:
            raise ValueError(f"particle_chunk must be >= 1, got {particle_chunk}")
        return [range(k, min(k + step, num_samples)) for k in range(0, num_samples, step)]

    def traces(self, start: int, tensors, particles: range):
        """Guide trace (noise from ``_Streams``) and model trace replayed against it."""
        plate = pyro.plate("particles", len(particles), dim=self.particle_dim)
        with _Streams(self.seed, start, particles, self.particle_dim, self.dtype), plate:
            guide_trace = poutine.trace(self.vae.guide).get_trace(*tensors)
        with plate:
            model_trace = poutine.trace(poutine.replay(self.vae.model, trace=guide_trace)).get_trace(*tensors)
        return guide_trace, model_trace

    def passes(self, num_samples: int, batch_size: int, particle_chunk: int | None):
        """Yield ``(start, stop, particles, guide_trace, model_trace)`` over data chunks, then particle chunks."""
        for start, stop, tensors in self.chunks(batch_size):
            for particles in self.particle_ranges(num_samples, tensors[0].shape[0], particle_chunk):
                yield (start, stop, particles, *self.traces(start, tensors, particles))

    def log_weight_chunks(self, num_samples: int, batch_size: int, particle_chunk: int | None):
        """Yield ``(start, stop, log_w)`` with ``log_w: [rows, K]`` contiguous (rows padded to a multiple of 64)."""
        parts, current = [], None
        for start, stop, _, guide_trace, model_trace in self.passes(num_samples, batch_size, particle_chunk):
            if current is not None and start != current[0]:
                yield (*current, torch.cat(parts).T.contiguous())
                parts = []
            current = (start, stop)
            parts.append(densities(guide_trace, model_trace, self.particle_dim).log_weight)
        yield (*current, torch.cat(parts).T.contiguous())


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    return log_w.logsumexp(-1) - math.log(log_w.shape[-1])


def mean_stderr(per_point: torch.Tensor) -> tuple[float, float]:
    x = per_point.double()
    stderr = x.std().item() / math.sqrt(x.numel()) if x.numel() > 1 else float("nan")
    return x.mean().item(), stderr
