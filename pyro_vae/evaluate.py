"""Evaluation of fitted VAEs: ELBO, IWAE log-likelihood, ELBO decomposition.

:func:`elbo` runs the training objective without gradients. The other
estimators work on importance weights from traces of the guide and of the
model replayed against it under a vectorised particle plate, with per-point
noise streams that make chunking exact (:mod:`pyro_vae.importance`)::

    log w[k, n] = log p(x_n, z_nk) - log q(z_nk | x_n),    z_nk ~ q(z | x_n)

References:
    1. Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    2. Kingma & Welling (2014), Auto-Encoding Variational Bayes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from torch.distributions import kl_divergence

from .data import as_tensors
from .importance import (data_frame, densities, evaluation, Evaluator, is_random, log_mean_exp, mean_stderr,
                         per_point, site_log_prob)
from .objectives import model_objective

__all__ = [
    "elbo",
    "Units",
    "data_units",
    "observation_is_discrete",
    "IWAEResult",
    "iwae_log_likelihood",
    "log_importance_weights",
    "ELBODecomposition",
    "elbo_decomposition",
]

_ACTIVE = 0.01  # Burda et al. (2016): unit u is active if Cov_x(E_q[z_u | x]) > 0.01


@torch.no_grad()
def elbo(vae, data, num_particles: int = 1, batch_size: int = 1024, loss=None) -> float:
    """Monte Carlo ELBO per data point, in nats (higher is better)::

        ELBO(x) = E_q(z|x)[log p(x, z) - log q(z | x)]

    ``data: [N, *data_shape]`` is evaluated in chunks of ``batch_size`` with
    ``num_particles`` vectorised draws per point; ``loss`` defaults to Pyro's
    ``Trace_ELBO`` (``TraceEnum_ELBO`` for a model that enumerates, such as M2).
    ``data`` may be a tuple ``(x, y, ...)`` as in :func:`~pyro_vae.train.fit`.
    """
    tensors = as_tensors(data)
    vae.check_data(tensors[0])
    device = vae.device
    if loss is None:
        loss = model_objective(vae, "elbo", num_particles)
    n = tensors[0].shape[0]
    total = 0.0
    for start in range(0, n, batch_size):
        total += loss.loss(vae.model, vae.guide, *(t[start:start + batch_size].to(device) for t in tensors))
    return -total / n


# --------------------------------------------------------------------------- units

class Units(NamedTuple):
    """What reported log-densities refer to.

    Attributes:
        log_jacobian: ``log |J|`` per data point of the preprocessing, added to the model's
            values so they are log-densities of the data as given (0 when there is none to add).
        description: the units in words, as reports state them.
    """

    log_jacobian: float
    description: str


@torch.no_grad()
def observation_is_discrete(model, data) -> bool:
    """Whether the model's observed sites are probability masses (Bernoulli, counts) rather than densities.

    Read from the support of the distributions in one trace of the model on two points.
    """
    args = tuple(t[:2].to(model.device) for t in as_tensors(data))
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), poutine.block():
        trace = poutine.trace(model.model).get_trace(*args)
    sites = [site for site in trace.nodes.values() if is_random(site) and site["is_observed"]]
    return bool(sites) and all(site["fn"].support.is_discrete for site in sites)


def data_units(model, data, preprocessing) -> Units:
    """The units of a run's reported ELBOs and log-likelihoods, given its fitted preprocessing.

    An affine map ``x' = (x - shift) / scale`` changes a density by its Jacobian:
    ``log p(x) = log p'(x') + log |J|``, so that term is added and numbers refer
    to the data as the user gave it. A probability mass is unchanged by a change
    of units, and binarised data cannot be mapped back: both are reported as the
    model sees them, and the description says so.
    """
    name = preprocessing.name
    if name == "none":
        return Units(0.0, "nats per data point, of the data as given")
    if preprocessing.binarize:
        return Units(0.0, f"nats per data point, of the binarised data ({name!r}: a Bernoulli draw of the data "
                          "scaled to [0, 1]; not invertible, so not of the data as given)")
    if observation_is_discrete(model, data):
        return Units(0.0, f"nats per data point, of the data after {name!r} (a probability mass, which a "
                          "change of units leaves unchanged)")
    log_j = preprocessing.log_abs_det_jacobian(model.data_shape)
    return Units(log_j, f"nats per data point, of the data as given (the model's values plus the log-Jacobian "
                        f"of {name!r}, {log_j:.6g})")


# --------------------------------------------------------------------------- public estimators

class IWAEResult(NamedTuple):
    """Importance-weighted log-likelihood estimate, nats.

    Attributes:
        mean: average of ``per_point`` over the data.
        stderr: standard error of that average over data points (``std / sqrt(N)``);
            it includes the Monte Carlo noise of each point's estimate.
        per_point: ``[N]`` estimate of ``log p(x_n)`` for every data point (CPU).
    """

    mean: float
    stderr: float
    per_point: torch.Tensor


def iwae_log_likelihood(vae, data, num_samples: int = 1000, batch_size: int = 256, particle_chunk: int | None = None,
                        seed: int | None = None) -> IWAEResult:
    """Importance-weighted estimate of ``log p(x)`` per data point (Burda et al. 2016)::

        log p(x) ~= log 1/K sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x)

    a lower bound in expectation that tightens as K grows. Computed from Pyro
    traces of the guide and the replayed model (see the module docstring), so it
    covers every sample site inside the ``"data"`` plate.

    Args:
        data: ``[N, *data_shape]`` (or a tuple ``(x, y, ...)`` passed to model and guide).
        num_samples: K, importance samples per point.
        batch_size: points per trace, rounded up to a multiple of 64.
        particle_chunk: particles per trace (default: about 32768 / batch_size).
            Memory is one trace of ``batch_size * particle_chunk`` pairs plus
            ``batch_size * K`` log weights, whatever N: K = 5000 with the MNIST
            MLP of benchmarks/bench_evaluate.py peaks at about 0.4 GiB over the
            process's baseline.
        seed: the noise streams' seed; ``None`` draws one from torch's global RNG
            (so ``pyro.set_rng_seed`` fixes it). For a given seed the result
            does not depend on ``batch_size`` or ``particle_chunk``.
    """
    ev = Evaluator(vae, data, seed)
    with evaluation(vae):
        per_point = torch.cat([log_mean_exp(log_w)[:stop - start].cpu()
                               for start, stop, log_w in ev.log_weight_chunks(num_samples, batch_size, particle_chunk)])
    return IWAEResult(*mean_stderr(per_point), per_point)


def log_importance_weights(vae, data, num_samples: int = 1000, batch_size: int = 256,
                           particle_chunk: int | None = None, seed: int | None = None) -> torch.Tensor:
    """All log importance weights ``log p(x_n, z_nk) - log q(z_nk | x_n)``, as ``[N, K]`` on the CPU.

    The same draws as :func:`iwae_log_likelihood` with the same arguments (and
    the first K of any run with more samples); ``N * K`` values are kept, so
    for large data prefer :func:`iwae_log_likelihood`.
    """
    ev = Evaluator(vae, data, seed)
    with evaluation(vae):
        return torch.cat([log_w[:stop - start].cpu()
                          for start, stop, log_w in ev.log_weight_chunks(num_samples, batch_size, particle_chunk)])


class ELBODecomposition(NamedTuple):
    """ELBO split into reconstruction and KL terms, nats per data point (averages over the data).

    Attributes:
        elbo: ``recon - kl``.
        recon: ``E_q[log p(x | z)]`` (all observed sites of the model).
        kl: ``E_q[log q(z | x) - log p(z)]`` summed over latent sites.
        kl_method: ``"analytic"`` (every latent site had a registered
            ``kl_divergence``), ``"monte-carlo"`` (none had) or ``"mixed"``.
        active_units: number of latent units with ``Cov_x(E_q[z_u | x]) > 0.01``.
        unit_variance: ``[U]`` that covariance for every continuous latent unit
            (the event elements of each continuous guide site, in trace order).
        iwae: IWAE estimate with ``iwae_samples`` particles (None if not asked).
        iwae_gap: ``iwae - elbo`` (None if not asked); >= 0 in expectation.
    """

    elbo: float
    recon: float
    kl: float
    kl_method: str
    active_units: int
    unit_variance: torch.Tensor
    iwae: float | None
    iwae_gap: float | None


def _site_kl(guide_site, model_site, particle_dim: int, analytic: bool):
    """Per-point ``KL(q || p)`` of one latent site ``[particles, points]`` and how it was computed."""
    if analytic:
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            pass
        else:
            return per_point(guide_site, scale_and_mask(kl, mask=guide_site["mask"]), particle_dim), "analytic"
    kl = site_log_prob(guide_site, particle_dim, guide=True) - site_log_prob(model_site, particle_dim)
    return kl, "monte-carlo"


def _posterior_mean(site, particle_dim: int) -> torch.Tensor:
    """``E_q[z | x, upstream draws]`` of a guide site as ``[particles, points, units]``."""
    try:
        mean = site["fn"].mean
    except NotImplementedError:  # e.g. a mixture without a closed-form mean: use the draw itself
        mean = site["value"]
    nb = len(site["fn"].batch_shape)
    mean = mean.expand(site["value"].shape).movedim((nb + particle_dim, nb + data_frame(site).dim), (0, 1))
    return mean.reshape(mean.shape[0], mean.shape[1], -1)


def _latent_order(trace, among) -> list[str]:
    return [name for name, site in trace.nodes.items() if is_random(site) and not site["is_observed"]
            and name in among]


def _elbo_terms(guide_trace, model_trace, particle_dim: int, analytic_kl: bool, methods: set):
    """Reconstruction ``[k, B]``, KL ``[k, B]`` and posterior means ``[k, B, units]`` of one trace pair."""
    recon = densities(guide_trace, model_trace, particle_dim).log_lik
    # A closed-form KL per site is unbiased when the guide draws the latents in the model's order (the
    # condition of Pyro's TraceMeanField_ELBO); otherwise a site's KL would condition on later draws.
    analytic_kl = analytic_kl and _latent_order(guide_trace, model_trace.nodes) == _latent_order(
        model_trace, guide_trace.nodes)
    kl, means = 0.0, []
    for name, site in guide_trace.nodes.items():
        if is_random(site) and not site["is_observed"]:
            site_kl, method = _site_kl(site, model_trace.nodes[name], particle_dim, analytic_kl)
            kl = kl + site_kl
            methods.add(method)
            if not site["fn"].support.is_discrete:  # active units are continuous units (Burda et al. 2016)
                means.append(_posterior_mean(site, particle_dim))
    return recon, kl, torch.cat(means, -1) if means else recon.new_zeros(*recon.shape, 0)


def elbo_decomposition(vae, data, num_samples: int = 10, iwae_samples: int | None = None, analytic_kl: bool = True,
                       batch_size: int = 256, particle_chunk: int | None = None,
                       seed: int | None = None) -> ELBODecomposition:
    """``ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))`` with active units and the IWAE gap.

    The KL term of each latent site is ``torch.distributions.kl_divergence``
    when the (guide, prior) pair has a registered closed form, ``analytic_kl``
    is set and the guide samples the latent sites in the model's order; it is a
    Monte Carlo average over ``num_samples`` draws otherwise. Active units follow Burda et al. (2016)::

        A_u = Cov_x(E_q(z|x)[z_u]) > 0.01

    with ``E_q[z_u | x]`` the guide distribution's mean, averaged over draws of
    any upstream latents. With ``iwae_samples=K`` the same pass returns the IWAE
    bound: it equals :func:`iwae_log_likelihood` with the same seed, since both
    use the first K particles of the same noise streams. Other arguments as for
    :func:`iwae_log_likelihood`.
    """
    ev = Evaluator(vae, data, seed)
    total = max(num_samples, iwae_samples or 0)
    recon, kl, means, iwae, methods = [], [], [], [], set()
    with evaluation(vae):
        for start, stop, tensors in ev.chunks(batch_size):
            n, sums, log_w = stop - start, [0.0, 0.0, 0.0], []
            for particles in ev.particle_ranges(total, tensors[0].shape[0], particle_chunk):
                guide_trace, model_trace = ev.traces(start, tensors, particles)
                if iwae_samples:
                    log_w.append(densities(guide_trace, model_trace, ev.particle_dim).log_weight)
                used = min(particles.stop, num_samples) - particles.start
                if used > 0:
                    terms = _elbo_terms(guide_trace, model_trace, ev.particle_dim, analytic_kl, methods)
                    sums = [acc + term[:used].sum(0) for acc, term in zip(sums, terms)]
            for out, acc in zip((recon, kl, means), sums):
                out.append((acc[:n] / num_samples).cpu().double())
            if iwae_samples:
                iwae.append(log_mean_exp(torch.cat(log_w)[:iwae_samples].T.contiguous())[:n].cpu().double())
    recon_t, kl_t, means_t = torch.cat(recon), torch.cat(kl), torch.cat(means)
    variance = means_t.var(0) if means_t.shape[0] > 1 and means_t.shape[1] else torch.zeros_like(means_t[0])
    elbo_value = recon_t.mean().item() - kl_t.mean().item()
    iwae_value = torch.cat(iwae).mean().item() if iwae_samples else None
    return ELBODecomposition(
        elbo=elbo_value, recon=recon_t.mean().item(), kl=kl_t.mean().item(),
        kl_method=methods.pop() if len(methods) == 1 else "mixed",
        active_units=int((variance > _ACTIVE).sum()), unit_variance=variance,
        iwae=iwae_value, iwae_gap=None if iwae_value is None else iwae_value - elbo_value,
    )
