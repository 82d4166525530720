"""Diagnostics of a fitted VAE: ArviZ export and Pareto-smoothed importance sampling.

Both read the traces that :mod:`pyro_vae.evaluate` runs (guide under a particle
plate, model replayed against it), so they cover every site of hierarchical
models as well, and use the same noise streams: for one seed the draws here
are the ones :func:`~pyro_vae.evaluate.iwae_log_likelihood` weighs.

References:
    1. Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?: Evaluating Variational Inference.
    2. Vehtari, Simpson, Gelman, Yao & Gabry (2024), Pareto Smoothed Importance Sampling.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import arviz as az
import numpy as np
import torch
from matplotlib.figure import Figure

from .evaluate import log_importance_weights
from .plots import save_figure
from .importance import data_frame, densities, evaluation, Evaluator, is_random, site_log_prob

__all__ = ["to_inference_data", "PSISResult", "psis_diagnostic", "plot_khat"]

_FLAT_ULPS = 64  # log weights closer than this many ulps of their size are constant: the guide is exact


def _by_point(site, tensor: torch.Tensor, particle_dim: int) -> torch.Tensor:
    """``tensor`` (broadcastable to the site's shape) as ``[particles, points, *rest]``."""
    shape = site["fn"].batch_shape + site["fn"].event_shape
    nb = len(site["fn"].batch_shape)
    return tensor.expand(shape).movedim((nb + particle_dim, nb + data_frame(site).dim), (0, 1))


def _flat(value: torch.Tensor) -> torch.Tensor:
    return value if value.dim() == 2 else value.reshape(*value.shape[:2], -1)


def _collect(ev, num_samples: int, batch_size: int, particle_chunk: int | None):
    """``{(group, site): [S or 1, N, ...] array}`` and each site's per-point shape, from every pass."""
    store, shapes, last, pd = defaultdict(list), {}, None, ev.particle_dim

    def add(key, value, fresh: bool):  # pieces of one data chunk are a list over particle chunks
        if fresh:
            store[key].append([])
        store[key][-1].append(value.cpu())

    for start, stop, _, guide_trace, model_trace in ev.passes(num_samples, batch_size, particle_chunk):
        n, fresh, last = stop - start, start != last, start
        for name, site in guide_trace.nodes.items():
            if is_random(site) and not site["is_observed"]:
                value = _by_point(site, site["value"], pd)[:, :n]
                shapes[name] = tuple(value.shape[2:])
                add(("posterior", name), value, fresh)
        for name, site in model_trace.nodes.items():
            if is_random(site) and site["is_observed"]:
                draw = _by_point(site, site["fn"].sample(), pd)[:, :n]
                shapes[name] = tuple(draw.shape[2:])
                add(("posterior_predictive", name), _flat(draw), fresh)
                add(("log_likelihood", name), site_log_prob(site, pd)[:, :n], fresh)
                if fresh:
                    add(("observed_data", name), _flat(_by_point(site, site["value"], pd)[:1, :n]), fresh)
        add(("sample_stats", "log_weight"), densities(guide_trace, model_trace, pd).log_weight[:, :n], fresh)
    arrays = {key: torch.cat([torch.cat(p, 0) for p in chunks], 1).numpy() for key, chunks in store.items()}
    return arrays, shapes


def _site_dims(name: str, shape: tuple, kind: str, alone: bool) -> list[str]:
    """Dims after ``obs``: ``latent`` / ``feature`` for a lone site, ``{site}_latent`` etc. otherwise."""
    if not shape:
        return []
    if kind == "feature" or len(shape) == 1:
        return [kind if alone else f"{name}_{kind}"]
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def to_inference_data(vae, data, num_samples: int = 100, history=None, num_chains: int = 2, batch_size: int = 256,
                      particle_chunk: int | None = None, seed: int | None = None) -> az.InferenceData:
    """Draws from the guide and the model as an ``arviz.InferenceData``.

    The ``num_samples`` independent draws per point are split into
    ``num_chains`` chains (default 2, so that ``az.summary`` can report
    ``r_hat``, which should be 1 for independent draws). Groups (``N`` points):

    * ``posterior``: each latent site, ``z ~ q(z | x)``, dims ``(chain, draw, obs, latent)``
      (``{site}_latent`` when the model has several latent sites).
    * ``posterior_predictive``: each observed site, ``x ~ p(x | z)`` flattened
      over its features, dims ``(chain, draw, obs, feature)``.
    * ``log_likelihood``: ``log p(x | z)`` per point, named like the observed
      site, dims ``(chain, draw, obs)``.
    * ``observed_data``: the data, dims ``(obs, feature)``.
    * ``sample_stats``: ``log_weight = log p(x, z) - log q(z | x)``, dims
      ``(chain, draw, obs)``; ``attrs["training_history"]`` holds ``history``
      (e.g. ``fit(...).history``) as a JSON list of records.

    Works with ``az.summary``, ``az.plot_posterior`` and ``az.plot_ppc``.
    Posterior draws follow ``seed`` as in :func:`~pyro_vae.evaluate.iwae_log_likelihood`;
    predictive draws come from torch's global RNG. Memory is ``S * N`` times a
    data point: keep ``num_samples`` modest for large data.
    """
    if num_chains < 1 or num_samples % num_chains:
        raise ValueError(f"num_samples ({num_samples}) must be a positive multiple of num_chains ({num_chains})")
    ev = Evaluator(vae, data, seed)
    with evaluation(vae):
        arrays, shapes = _collect(ev, num_samples, batch_size, particle_chunk)
    latents = [name for group, name in arrays if group == "posterior"]
    observed = [name for group, name in arrays if group == "observed_data"]
    dims = {name: ["obs", *_site_dims(name, shapes[name], "latent", len(latents) == 1)] for name in latents}
    dims.update({name: ["obs", *_site_dims(name, shapes[name], "feature", len(observed) == 1)] for name in observed})
    coords = {"obs": np.arange(ev.n)}

    def group(kind: str, var_dims: dict, per_draw: bool = True):
        variables = {}
        for (g, name), value in arrays.items():
            if g != kind:
                continue
            names = var_dims[name]
            value = value.reshape(*value.shape[:2], *value.shape[2:][:len(names) - 1])  # scalars: drop the flat axis
            coords.update({d: np.arange(size) for d, size in zip(names[1:], value.shape[2:])})
            variables[name] = value.reshape(num_chains, -1, *value.shape[1:]) if per_draw else value[0]
        used = {d for name in variables for d in var_dims[name]}
        return az.dict_to_dataset(variables, coords={d: coords[d] for d in used},
                                  dims={name: var_dims[name] for name in variables},
                                  default_dims=None if per_draw else [])

    per_obs = {name: ["obs"] for name in [*observed, "log_weight"]}
    idata = az.InferenceData(
        posterior=group("posterior", dims),
        posterior_predictive=group("posterior_predictive", dims),
        log_likelihood=group("log_likelihood", per_obs),
        observed_data=group("observed_data", dims, per_draw=False),
        sample_stats=group("sample_stats", per_obs),
    )
    idata.sample_stats.attrs["training_history"] = json.dumps(list(history or []), default=float)
    return idata


# --------------------------------------------------------------------------- PSIS

class PSISResult(NamedTuple):
    """Pareto k-hat of the importance weights ``p(x, z) / q(z | x)``, per data point.

    Attributes:
        khat: ``[N]`` estimated Pareto shape of each point's weights: below 0.5
            the guide is good, 0.5-0.7 usable, above 0.7 the importance
            estimates (IWAE included) are unreliable for that point (Yao et al.
            2018). ``-inf`` marks constant weights (the guide equals the
            posterior to rounding); ``inf`` too few draws to fit a tail.
        fraction_above_07: share of points with ``khat > 0.7``.
        psis_log_likelihood: ``[N]`` the PSIS estimate of ``log p(x)``, or None.
    """

    khat: torch.Tensor
    fraction_above_07: float
    psis_log_likelihood: torch.Tensor | None


def psis_diagnostic(vae, data, num_samples: int = 1000, plot_path: str | os.PathLike | None = None,
                    smoothed_log_likelihood: bool = True, batch_size: int = 256, particle_chunk: int | None = None,
                    seed: int | None = None) -> PSISResult:
    """Pareto-smoothed importance sampling diagnostic of the guide (Yao et al. 2018).

    For each point, ``arviz.psislw`` fits a generalised Pareto distribution to
    the largest of the K log weights ``log w_k = log p(x, z_k) - log q(z_k | x)``,
    ``z_k ~ q(z | x)`` (independent draws, so ``r_eff = 1``) and returns its
    shape k-hat. It also replaces those largest weights by the fitted
    distribution's quantiles (truncated at the largest raw weight), giving
    smoothed weights ``w~_k`` on the raw scale, and::

        psis_log_likelihood = log(1/K sum_k w~_k)

    which is the IWAE estimate with its tail smoothed (the weights below the
    tail are unchanged). ``plot_path`` writes :func:`plot_khat`. Other
    arguments as for :func:`~pyro_vae.evaluate.iwae_log_likelihood`.
    """
    log_w = log_importance_weights(vae, data, num_samples, batch_size=batch_size, particle_chunk=particle_chunk,
                                   seed=seed)
    ulp = torch.finfo(log_w.dtype).eps
    lw = log_w.double().numpy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        smoothed, khat = az.psislw(lw.copy(), reff=1.0, normalize=False)
    khat = np.asarray(khat, dtype=np.float64).reshape(lw.shape[0])
    flat = (lw.max(1) - lw.min(1)) <= _FLAT_ULPS * ulp * np.maximum(1.0, np.abs(lw).max(1))
    khat[flat] = -np.inf
    khat_t = torch.from_numpy(khat)
    fraction = float((khat > 0.7).mean())
    psis_ll = None
    if smoothed_log_likelihood:
        smoothed = np.asarray(smoothed, dtype=np.float64)
        smoothed[flat] = lw[flat]
        psis_ll = torch.from_numpy(np.logaddexp.reduce(smoothed, axis=1) - math.log(lw.shape[1]))
    if plot_path is not None:
        plot_khat(khat_t, plot_path, num_samples=num_samples)
    return PSISResult(khat_t, fraction, psis_ll)


def plot_khat(khat, path, num_samples: int | None = None) -> Path:
    """Per-point k-hat with the 0.5 (good) and 0.7 (unreliable) thresholds; writes a PNG and returns its path."""
    khat = np.asarray(khat, dtype=np.float64)
    finite = np.isfinite(khat)
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    idx = np.arange(khat.size)
    above = finite & (khat > 0.7)
    ax.scatter(idx[finite & ~above], khat[finite & ~above], s=6, color="tab:blue", label="k-hat <= 0.7")
    ax.scatter(idx[above], khat[above], s=6, color="tab:red", label="k-hat > 0.7")
    for level, style in ((0.5, ":"), (0.7, "--")):
        ax.axhline(level, color="black", linestyle=style, linewidth=1)
    ax.set_xlabel("data point")
    ax.set_ylabel("Pareto k-hat")
    k_text = f", K = {num_samples}" if num_samples else ""
    note = f"; {int((~finite).sum())} non-finite not shown" if (~finite).any() else ""
    ax.set_title(f"PSIS diagnostic: {(khat > 0.7).mean():.1%} of points above 0.7{k_text}{note}")
    ax.legend(loc="best", fontsize="small")
    return save_figure(fig, path)
