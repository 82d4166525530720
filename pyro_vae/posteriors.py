"""Variational families q(z | x): small modules turning the encoder's outputs into a Pyro distribution.

A posterior declares the encoder outputs it needs (``heads``: a size and a
link per output), so **the posterior sizes the encoder** just as the
likelihood sizes the decoder. The encoder returns those outputs with their
links applied (``"positive"``: ``softplus(raw) + 1e-4``), and the posterior
builds the distribution of the latent site from them::

    params = encoder(x)            # for "normal": (loc, scale), each [*b, latent_dim]
    q = posterior(*params)         # batch [*b], event [latent_dim], reparameterised

Every family is built from Pyro's own distributions and
``pyro.distributions.transforms``:

===============  ===========================================================  ====================
name             q(z | x)                                                     encoder outputs
===============  ===========================================================  ====================
``normal``       diagonal Normal (default; the fast ``IndependentNormal``)     loc, scale
``student-t``    factorised Student-t with ``df`` degrees of freedom           loc, scale
``lowrank``      ``LowRankMultivariateNormal``, covariance ``W W^T + D``        loc, D, W (d x rank)
``fullrank``     ``MultivariateNormal`` with a Cholesky factor from the        loc, diag, lower
                 encoder
``iaf``          diagonal Normal pushed through ``n_flows`` conditional        loc, scale, context
                 affine autoregressive steps (Kingma et al. 2016)
``planar``       ... through conditional planar flows (Rezende & Mohamed 2015) loc, scale, context
``householder``  ... through conditional Householder reflections (Tomczak &    loc, scale, context
                 Welling 2016)
``sylvester``    ... through Sylvester flows (van den Berg et al. 2018), with   loc, scale
                 parameters shared over x (Pyro has no conditional Sylvester)
``spline``       ... through conditional rational-quadratic splines (Durkan et  loc, scale, context
                 al. 2019)
===============  ===========================================================  ====================

``exact_density`` says whether ``log_prob`` is available at any point or only
at the family's own draws (planar and Sylvester flows have no inverse; Pyro
caches the forward pass, so the ELBO, IWAE and PSIS work, but a VampPrior,
which scores the guide's draws under other points' posteriors, does not).
``mean(*params)`` is ``E_q[z]``: closed form for the Gaussian families and
Householder flows (a rotation of the base), else the average over
``mean_draws`` draws from one fixed set of base noises shared by every point,
so a point's mean does not depend on the batch it is encoded in.

Adding a family takes a few lines (the default ``heads`` are ``(loc, scale)``)::

    class LaplacePosterior(Posterior):
        def forward(self, loc, scale):
            return dist.Laplace(loc, scale).to_event(1)

    register_posterior("laplace", LaplacePosterior)      # VAE(..., posterior="laplace")

A family with other encoder outputs declares them as ``heads``, a tuple of
:class:`Head` ``(size, link)``.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ._registry import POSTERIORS
from .distributions import IndependentNormal
from .nets import Head, apply_links, make_activation, normal_heads

__all__ = [
    "Head",
    "Posterior",
    "DiagonalNormal",
    "StudentTPosterior",
    "LowRankNormal",
    "FullRankNormal",
    "FlowPosterior",
    "IAFPosterior",
    "PlanarPosterior",
    "HouseholderPosterior",
    "SylvesterPosterior",
    "SplinePosterior",
    "POSTERIORS",
    "make_posterior",
    "register_posterior",
    "normal_heads",
    "apply_links",
]

def _positive_int(value, option: str, family: str, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{family} posterior: {option} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{family} posterior: {option} must be {bound}, got {value}")
    return value


def _hidden(hidden, family: str) -> list[int]:
    sizes = [hidden] if isinstance(hidden, int) else list(hidden)
    if not sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
        raise ValueError(f"{family} posterior: hidden must be a non-empty list of positive layer sizes, got {hidden!r}")
    return sizes


class Posterior(nn.Module):
    """Base class: ``forward(*params) -> Distribution`` over ``[latent_dim]``, params as ``heads`` declares.

    Attributes:
        heads: the encoder outputs, one :class:`Head` each, in the order ``forward`` takes them.
        exact_density: ``log_prob`` works at any point, not only at the family's own draws.
        name: the family's config name, for messages.
    """

    exact_density = True
    name = "posterior"

    def __init__(self, latent_dim: int):
        super().__init__()
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)

    @property
    def heads(self) -> tuple[Head, ...]:
        return normal_heads(self.latent_dim)

    def forward(self, *params):  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, *params) -> torch.Tensor:
        """``E_q[z]``, ``[*b, latent_dim]``; by default the distribution's own ``mean``."""
        return self(*params).mean

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


class DiagonalNormal(Posterior):
    """``q(z | x) = N(loc, diag(scale^2))``, the default, with the density of its own draws from their noise."""

    name = "normal"

    def forward(self, loc, scale):
        return IndependentNormal(loc, scale)

    def mean(self, loc, scale):
        return loc


class StudentTPosterior(Posterior):
    """``q(z | x) = prod_i t_df(z_i; loc_i, scale_i)``: heavy tails for a heavy-tailed prior (``df`` fixed)."""

    name = "student-t"

    def __init__(self, latent_dim: int, df: float = 5.0):
        super().__init__(latent_dim)
        if isinstance(df, bool) or not isinstance(df, (int, float)) or not df > 0:
            raise ValueError(f"student-t posterior: df must be a number > 0, got {df!r}")
        self.df = float(df)

    def forward(self, loc, scale):
        return dist.StudentT(torch.full_like(loc, self.df), loc, scale).to_event(1)

    def mean(self, loc, scale):
        return loc  # the centre; the mean itself when df > 1

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, df={self.df}"


class LowRankNormal(Posterior):
    """``q(z | x) = N(loc, W W^T + diag(D))`` with ``W: [latent_dim, rank]`` from the encoder."""

    name = "lowrank"

    def __init__(self, latent_dim: int, rank: int = 2):
        super().__init__(latent_dim)
        self.rank = _positive_int(rank, "rank", "lowrank", 1, self.latent_dim)

    @property
    def heads(self):
        d = self.latent_dim
        return Head(d), Head(d, "positive"), Head(d * self.rank)

    def forward(self, loc, cov_diag, cov_factor):
        factor = cov_factor.reshape(*cov_factor.shape[:-1], self.latent_dim, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, cov_diag)

    def mean(self, loc, cov_diag, cov_factor):
        return loc

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, rank={self.rank}"


class FullRankNormal(Posterior):
    """``q(z | x) = N(loc, L L^T)``: the encoder emits L's diagonal (positive) and its strict lower triangle."""

    name = "fullrank"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        rows, cols = torch.tril_indices(self.latent_dim, self.latent_dim, -1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    @property
    def heads(self):
        d = self.latent_dim
        return Head(d), Head(d, "positive"), Head(d * (d - 1) // 2)

    def scale_tril(self, diag, lower):
        tril = torch.diag_embed(diag)
        if lower.shape[-1]:
            tril = tril.clone()
            tril[..., self._rows, self._cols] = lower
        return tril

    def forward(self, loc, diag, lower):
        return dist.MultivariateNormal(loc, scale_tril=self.scale_tril(diag, lower))

    def mean(self, loc, diag, lower):
        return loc


class FlowPosterior(Posterior):
    """A diagonal Normal base ``N(loc, scale)`` from the encoder pushed through ``n_flows`` Pyro transforms.

    Conditional transforms (``pyro.distributions.transforms.Conditional*``) read a
    ``context`` vector the encoder emits as a third output, so the flow depends on x.
    ``mean`` averages ``mean_draws`` draws made from one fixed set of standard-normal
    base noises (seed 0, the global RNG untouched), the same for every point.
    """

    conditional = True

    def __init__(self, latent_dim: int, n_flows: int, context: int = 0, mean_draws: int = 100):
        super().__init__(latent_dim)
        self.n_flows = _positive_int(n_flows, "n_flows", self.name)
        self.context = _positive_int(context, "context", self.name) if self.conditional else 0
        self.mean_draws = _positive_int(mean_draws, "mean_draws", self.name)

    @property
    def heads(self):
        return (*normal_heads(self.latent_dim), *((Head(self.context),) if self.conditional else ()))

    def forward(self, loc, scale, context=None):
        transforms = [t.condition(context) if self.conditional else t for t in self.transforms]
        return dist.TransformedDistribution(IndependentNormal(loc, scale), transforms)

    @torch.no_grad()
    def mean(self, *params):
        loc, scale = params[0], params[1]
        noise = torch.randn(self.mean_draws, self.latent_dim, generator=torch.Generator().manual_seed(0),
                            dtype=loc.dtype).to(loc.device)
        z = loc + scale * noise.reshape(self.mean_draws, *(1,) * (loc.dim() - 1), self.latent_dim)
        for transform in self(*params).transforms:
            z = transform(z)
        return z.mean(0)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, n_flows={self.n_flows}, context={self.context}"


class IAFPosterior(FlowPosterior):
    """Inverse autoregressive flow (Kingma et al. 2016): ``n_flows`` conditional affine autoregressive steps.

    Each step is Pyro's ``ConditionalAffineAutoregressive`` on a ``ConditionalAutoRegressiveNN``
    with ``hidden`` layers (the gated, numerically stable form of the paper with ``stable``);
    every step draws its own variable order (Pyro's default random permutation).
    """

    name = "iaf"

    def __init__(self, latent_dim: int, n_flows: int = 2, hidden=(64,), context: int = 32, stable: bool = True,
                 activation: str = "relu", mean_draws: int = 100):
        super().__init__(latent_dim, n_flows, context, mean_draws)
        hidden = _hidden(hidden, self.name)
        self.transforms = nn.ModuleList(
            T.ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(self.latent_dim, self.context, hidden,
                                            nonlinearity=make_activation(activation)),
                stable=bool(stable))
            for _ in range(self.n_flows))


class PlanarPosterior(FlowPosterior):
    """``n_flows`` conditional planar flows (Rezende & Mohamed 2015), parameters from the context by a
    ``hidden``-layer network; a planar flow has no inverse, so ``log_prob`` is for its own draws only."""

    name = "planar"
    exact_density = False

    def __init__(self, latent_dim: int, n_flows: int = 4, hidden=(64,), context: int = 32, mean_draws: int = 100):
        super().__init__(latent_dim, n_flows, context, mean_draws)
        hidden = _hidden(hidden, self.name)
        self.transforms = nn.ModuleList(T.conditional_planar(self.latent_dim, self.context, hidden)
                                        for _ in range(self.n_flows))


class HouseholderPosterior(FlowPosterior):
    """``n_flows`` conditional Householder reflections (Tomczak & Welling 2016): a volume-preserving
    rotation of the diagonal base, so q is a full-covariance Normal whose axes depend on x."""

    name = "householder"

    def __init__(self, latent_dim: int, n_flows: int = 2, hidden=(64,), context: int = 32, mean_draws: int = 100):
        super().__init__(latent_dim, n_flows, context, mean_draws)
        if self.latent_dim < 2:
            raise ValueError("householder posterior: a reflection needs latent_dim >= 2")
        hidden = _hidden(hidden, self.name)
        self.transforms = nn.ModuleList([T.conditional_householder(self.latent_dim, self.context, hidden,
                                                                   count_transforms=self.n_flows)])

    def mean(self, loc, scale, context):
        return self(loc, scale, context).transforms[0](loc)  # an orthogonal map: the mean is the image of loc


class _Sylvester(T.Sylvester):
    """Pyro's Householder Sylvester flow with its map in the arrangement its log-determinant assumes.

    Pyro 1.9.2 computes ``y = x + tanh(x S Q^T + b) Q R`` but scores it with
    van den Berg et al.'s ``sum log(1 + h' R_ii S_ii)``, which holds for
    ``y = x + tanh(x Q S^T + b) R^T Q^T`` (the paper's ``z + Q R h(S Q^T z + b)``
    for row vectors). Its density was then wrong for ``latent_dim >= 2`` and
    training pushed the "ELBO" above log p(x) (``tests/test_posteriors.py``
    checks the log-determinant against autograd Jacobians). The parameters, the
    Householder reflections and the log-determinant are Pyro's; ``Q`` also
    builds every reflection on the input's device and dtype.
    """

    def Q(self, x):
        u = self.u()
        eye = torch.eye(self.input_dim, dtype=x.dtype, device=x.device)
        q = eye - 2.0 * torch.outer(u[0], u[0])
        for i in range(1, u.shape[-2]):
            q = q @ (eye - 2.0 * torch.outer(u[i], u[i]))
        return q

    def _call(self, x):
        q, r, s = self.Q(x), self.R(), self.S()
        pre = x @ (q @ s.T) + self.b
        self._cached_logDetJ = torch.log1p(self.dtanh_dx(pre) * r.diagonal() * s.diagonal() + 1e-8).sum(-1)
        return x + self.tanh(pre) @ (r.T @ q.T)


class SylvesterPosterior(FlowPosterior):
    """``n_flows`` Sylvester flows (van den Berg et al. 2018), each with ``householder`` reflections in its
    orthogonal factor. Pyro's Sylvester transform is not conditional: its parameters are shared over x
    (the base Normal still comes from the encoder). No inverse: ``log_prob`` is for its own draws only."""

    name = "sylvester"
    exact_density = False
    conditional = False

    def __init__(self, latent_dim: int, n_flows: int = 4, householder: int | None = None, mean_draws: int = 100):
        super().__init__(latent_dim, n_flows, 0, mean_draws)
        count = self.latent_dim if householder is None else _positive_int(householder, "householder", self.name)
        self.householder = count
        self.transforms = nn.ModuleList(_Sylvester(self.latent_dim, count) for _ in range(self.n_flows))


class SplinePosterior(FlowPosterior):
    """``n_flows`` conditional element-wise rational-quadratic splines (Durkan et al. 2019) on
    ``[-bound, bound]`` with ``count_bins`` bins, identity outside; ``order`` linear or quadratic."""

    name = "spline"

    def __init__(self, latent_dim: int, n_flows: int = 1, hidden=(64,), context: int = 32, count_bins: int = 8,
                 bound: float = 3.0, order: str = "linear", mean_draws: int = 100):
        super().__init__(latent_dim, n_flows, context, mean_draws)
        hidden = _hidden(hidden, self.name)
        count_bins = _positive_int(count_bins, "count_bins", self.name, 2)
        if order not in ("linear", "quadratic"):
            raise ValueError(f"spline posterior: order must be 'linear' or 'quadratic', got {order!r}")
        if not float(bound) > 0:
            raise ValueError(f"spline posterior: bound must be > 0, got {bound!r}")
        self.transforms = nn.ModuleList(
            T.conditional_spline(self.latent_dim, self.context, hidden, count_bins, float(bound), order)
            for _ in range(self.n_flows))


def _register(cls, doc):
    POSTERIORS.register(cls.name, lambda latent_dim, **o: cls(latent_dim, **o), doc=doc, target=cls)


for _cls, _doc in [
    (DiagonalNormal, "diagonal Normal N(loc, diag(scale^2)) (default)"),
    (StudentTPosterior, "factorised Student-t(df, loc, scale)"),
    (LowRankNormal, "LowRankMultivariateNormal: covariance W W^T + D, W of rank `rank`"),
    (FullRankNormal, "MultivariateNormal with a full Cholesky factor from the encoder"),
    (IAFPosterior, "inverse autoregressive flow over a diagonal Normal (n_flows, hidden, context)"),
    (PlanarPosterior, "conditional planar flows (n_flows, hidden, context)"),
    (HouseholderPosterior, "conditional Householder reflections (n_flows, hidden, context)"),
    (SylvesterPosterior, "Sylvester flows, parameters shared over x (n_flows, householder)"),
    (SplinePosterior, "conditional rational-quadratic spline flows (n_flows, count_bins, bound)"),
]:
    _register(_cls, _doc)


def register_posterior(name: str, cls, doc: str = "") -> None:
    """Make ``cls(latent_dim, **options)``, a :class:`Posterior`, available under a config name."""
    POSTERIORS.register(name, lambda latent_dim, **o: cls(latent_dim, **o), doc=doc, target=cls)


def make_posterior(spec, latent_dim: int) -> Posterior:
    """A posterior from a name (``"iaf"``), a dict (``{"name": "iaf", "n_flows": 4}``) or an object."""
    if isinstance(spec, nn.Module):
        if getattr(spec, "latent_dim", latent_dim) != latent_dim:
            raise ValueError(f"posterior has latent_dim={spec.latent_dim} but the model has latent_dim={latent_dim}")
        return spec
    return POSTERIORS.build(spec, latent_dim=latent_dim)
