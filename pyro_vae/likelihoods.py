"""Likelihoods p(x | z): small modules that turn decoder outputs into a Pyro distribution.

The likelihood sizes the decoder: it states ``n_params``, the number of
decoder outputs per feature, and the decoder emits a tensor of shape
``[*batch, n_params, *data_shape]``. ``likelihood(params)`` returns a
distribution with ``event_shape == data_shape``. ELBO, IWAE, sampling and plots
all go through this object, so there is no reconstruction-loss branch anywhere
else.

Adding a likelihood::

    class Gamma(Likelihood):
        n_params = 2
        def forward(self, params):
            conc, rate = (F.softplus(p) + 1e-4 for p in self.split(params))
            return dist.Gamma(conc, rate).to_event(self.event_dim)
        def check_support(self, x):
            self.require(bool((x > 0).all()), x, "positive values", "shift or log-transform the data")

    vae = VAE(data_shape, likelihood=Gamma())   # or register_likelihood("gamma", Gamma)
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ._registry import LIKELIHOODS
from .distributions import IndependentBernoulli, IndependentNormal
from .nets import inv_softplus

__all__ = [
    "Likelihood",
    "Bernoulli",
    "ContinuousBernoulli",
    "Normal",
    "Laplace",
    "Poisson",
    "NegativeBinomial",
    "ZINB",
    "Categorical",
    "LIKELIHOODS",
    "make_likelihood",
    "register_likelihood",
]

_EPS = 1e-8


class Likelihood(nn.Module):
    """Base class. Subclasses set ``n_params`` and implement ``forward`` and ``check_support``.

    ``setup(data_shape)`` is called once by the owning VAE before any parameter
    is registered; likelihoods with per-feature parameters create them there.
    """

    n_params: int = 1
    name: str = "likelihood"
    # what a run does to the data when data.preprocess is unset: as given ("none"), or the map under which
    # this family is usually fitted; reported numbers refer to the data as given either way
    default_preprocess: str = "none"

    def __init__(self):
        super().__init__()
        self.data_shape: tuple[int, ...] | None = None

    def setup(self, data_shape) -> None:
        self.data_shape = tuple(int(s) for s in data_shape)

    @property
    def event_dim(self) -> int:
        if self.data_shape is None:
            raise RuntimeError(f"{type(self).__name__} is not set up: pass it to a VAE, or call .setup(data_shape)")
        return len(self.data_shape)

    def split(self, params: torch.Tensor):
        """The ``n_params`` heads of ``params: [*batch, n_params, *data_shape]``, each ``[*batch, *data_shape]``."""
        return params.unbind(-self.event_dim - 1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """``E[x | z]``: what reconstructions and sample grids show."""
        return self(params).mean

    def check_support(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem if ``x`` lies outside this likelihood's support."""

    def require(self, ok: bool, x: torch.Tensor, expected: str, fix: str) -> None:
        if not ok:
            raise ValueError(
                f"data outside the support of the {self.name!r} likelihood: expected {expected}, found values in "
                f"[{x.min().item():.4g}, {x.max().item():.4g}]. {fix}"
            )


def _in_unit_interval(x):
    lo, hi = torch.aminmax(x)  # one pass, no [N, D] temporaries: the whole data set is checked per fit
    return bool(lo >= 0) and bool(hi <= 1)


def _is_count(x):
    return bool(torch.aminmax(x)[0] >= 0) and (not x.is_floating_point() or not bool(torch.frac(x).any()))


class Bernoulli(Likelihood):
    """``x_i ~ Bernoulli(sigmoid(logits_i))``, parameterised by logits for speed and stability.

    With ``binary=False`` (default) grey values in [0, 1] are accepted and the
    log-likelihood is the binary cross-entropy, as in most VAE code; it is then
    not a normalised density (use ``continuous-bernoulli`` for one, Loaiza-Ganem
    & Cunningham 2019). ``binary=True`` demands {0, 1}.
    """

    name = "bernoulli"
    default_preprocess = "scale"

    def __init__(self, binary: bool = False):
        super().__init__()
        self.binary = bool(binary)

    def forward(self, params):
        logits = params.squeeze(-self.event_dim - 1)
        return IndependentBernoulli(logits, self.event_dim)

    def mean(self, params):
        return torch.sigmoid(params.squeeze(-self.event_dim - 1))

    def check_support(self, x):
        if self.binary:
            self.require(bool(((x == 0) | (x == 1)).all()), x, "values in {0, 1}",
                         "Binarise the data (preprocess 'binarize' or 'dynamic-binarize') or set binary=False.")
        else:
            self.require(_in_unit_interval(x), x, "values in [0, 1]",
                         "Scale the data to [0, 1] (preprocess 'scale'), or use the 'normal' likelihood.")


class ContinuousBernoulli(Likelihood):
    """``x_i ~ ContinuousBernoulli(logits_i)`` on [0, 1], the normalised version of BCE
    (Loaiza-Ganem & Cunningham 2019)."""

    name = "continuous-bernoulli"
    default_preprocess = "scale"

    def forward(self, params):
        logits = params.squeeze(-self.event_dim - 1)
        return dist.ContinuousBernoulli(logits=logits).to_event(self.event_dim)

    def check_support(self, x):
        self.require(_in_unit_interval(x), x, "values in [0, 1]",
                     "Scale the data to [0, 1] (preprocess 'scale'), or use the 'normal' likelihood.")


class _LocScale(Likelihood):
    """Location from the decoder; scale fixed, learned, or predicted per feature by the decoder.

    ``scale``: a positive float (fixed), ``"shared"`` (one learned scalar),
    ``"feature"`` (one learned value per feature) or ``"decoder"`` (a second
    decoder head, ``softplus(raw) + min_scale``). Subclasses give the law
    over the event dimensions, ``_law(loc, scale)``.
    """

    _scale_modes = ("shared", "feature", "decoder")
    default_preprocess = "standardize"

    def __init__(self, scale="shared", init_scale: float = 1.0, min_scale: float = 1e-4):
        super().__init__()
        if isinstance(scale, str):
            if scale not in self._scale_modes:
                raise ValueError(f"{self.name} likelihood: scale must be a positive number or one of "
                                 f"{', '.join(self._scale_modes)}; got {scale!r}")
        elif not float(scale) > 0:
            raise ValueError(f"{self.name} likelihood: a fixed scale must be > 0, got {scale!r}")
        self.scale = scale
        self.init_scale = float(init_scale)
        self.min_scale = float(min_scale)
        self.n_params = 2 if scale == "decoder" else 1

    def setup(self, data_shape):
        super().setup(data_shape)
        shape = {"shared": (), "feature": self.data_shape}.get(self.scale)
        if shape is not None and not hasattr(self, "raw_scale"):
            raw = inv_softplus(self.init_scale - self.min_scale)
            self.raw_scale = nn.Parameter(torch.full(shape, raw))

    def _loc_scale(self, params):
        if self.scale == "decoder":
            loc, raw = self.split(params)
            return loc, F.softplus(raw) + self.min_scale
        loc = params.squeeze(-self.event_dim - 1)
        if isinstance(self.scale, str):
            return loc, F.softplus(self.raw_scale) + self.min_scale
        return loc, torch.full((), float(self.scale), device=loc.device, dtype=loc.dtype)

    def forward(self, params):
        loc, scale = self._loc_scale(params)
        return self._law(loc, scale.expand_as(loc))

    def _law(self, loc, scale):
        raise NotImplementedError

    def mean(self, params):
        return self._loc_scale(params)[0]

    def extra_repr(self):
        return f"scale={self.scale!r}"


class Normal(_LocScale):
    """``x_i ~ N(loc_i, scale_i^2)``; see ``_LocScale`` for the scale options."""

    name = "normal"

    def _law(self, loc, scale):
        return IndependentNormal(loc, scale, self.event_dim)  # Normal(loc, scale).to_event, density summed in one pass


class Laplace(_LocScale):
    """``x_i ~ Laplace(loc_i, scale_i)``: an L1 reconstruction term, robust to outliers."""

    name = "laplace"

    def _law(self, loc, scale):
        return dist.Laplace(loc, scale).to_event(self.event_dim)


def _check_counts(lik, x):
    lik.require(_is_count(x), x, "non-negative integer counts",
                "Use raw counts (preprocess 'none'), or a continuous likelihood such as 'normal'.")


class Poisson(Likelihood):
    """``x_i ~ Poisson(rate_i)`` with ``rate = softplus(raw) + 1e-8`` for count data."""

    name = "poisson"

    def forward(self, params):
        rate = F.softplus(params.squeeze(-self.event_dim - 1)) + _EPS
        return dist.Poisson(rate).to_event(self.event_dim)

    def check_support(self, x):
        _check_counts(self, x)


class NegativeBinomial(Likelihood):
    """Gamma-Poisson counts with mean ``mu = softplus(raw)`` and inverse dispersion ``r``::

        p(x) = NB(x; total_count=r, logits=log mu - log r),  Var[x] = mu + mu^2 / r

    ``dispersion``: ``"feature"`` (one learned r per feature, as scVI's
    gene-wise dispersion), ``"shared"`` (one r) or ``"decoder"`` (a decoder head).
    """

    name = "negative-binomial"
    _dispersion_modes = ("feature", "shared", "decoder")

    def __init__(self, dispersion: str = "feature", init_dispersion: float = 1.0):
        super().__init__()
        if dispersion not in self._dispersion_modes:
            raise ValueError(f"{self.name} likelihood: dispersion must be one of "
                             f"{', '.join(self._dispersion_modes)}; got {dispersion!r}")
        self.dispersion = dispersion
        self.init_dispersion = float(init_dispersion)
        self.n_params = self._n_heads() + (dispersion == "decoder")

    def _n_heads(self) -> int:
        return 1

    def setup(self, data_shape):
        super().setup(data_shape)
        shape = {"shared": (), "feature": self.data_shape}.get(self.dispersion)
        if shape is not None and not hasattr(self, "raw_dispersion"):
            self.raw_dispersion = nn.Parameter(torch.full(shape, inv_softplus(self.init_dispersion)))

    def _heads(self, params):
        """Mean, total_count and the remaining heads."""
        heads = self.split(params)
        n = self._n_heads()
        raw_r = heads[n] if self.dispersion == "decoder" else self.raw_dispersion
        mu = F.softplus(heads[0]) + _EPS
        r = F.softplus(raw_r) + _EPS
        return mu, r, heads[1:n]

    def forward(self, params):
        mu, r, _ = self._heads(params)
        return dist.NegativeBinomial(total_count=r.expand_as(mu), logits=mu.log() - r.log()).to_event(self.event_dim)

    def mean(self, params):
        return self._heads(params)[0]

    def check_support(self, x):
        _check_counts(self, x)

    def extra_repr(self):
        return f"dispersion={self.dispersion!r}"


class ZINB(NegativeBinomial):
    """Zero-inflated negative binomial: a zero with probability ``sigmoid(gate)``, else NB(mu, r).

    The decoder emits the mean and the gate logits (plus the dispersion with
    ``dispersion="decoder"``).
    """

    name = "zinb"

    def _n_heads(self) -> int:
        return 2

    def forward(self, params):
        mu, r, (gate,) = self._heads(params)
        return dist.ZeroInflatedNegativeBinomial(
            total_count=r.expand_as(mu), logits=mu.log() - r.log(), gate_logits=gate
        ).to_event(self.event_dim)

    def mean(self, params):
        mu, _, (gate,) = self._heads(params)
        return torch.sigmoid(-gate) * mu


class Categorical(Likelihood):
    """``x_i ~ Categorical(softmax(logits_i))`` over ``levels`` discrete values 0..levels-1
    (e.g. 256 pixel intensities, as in PixelCNN-style decoders)."""

    name = "categorical"

    def __init__(self, levels: int = 256):
        super().__init__()
        if int(levels) < 2:
            raise ValueError(f"categorical likelihood: levels must be >= 2, got {levels}")
        self.levels = int(levels)
        self.n_params = self.levels

    def _logits(self, params):
        return params.movedim(-self.event_dim - 1, -1)

    def forward(self, params):
        return dist.Categorical(logits=self._logits(params)).to_event(self.event_dim)

    def mean(self, params):
        probs = self._logits(params).softmax(-1)
        return (probs * torch.arange(self.levels, device=params.device, dtype=params.dtype)).sum(-1)

    def check_support(self, x):
        ok = _is_count(x) and bool((x <= self.levels - 1).all())
        self.require(ok, x, f"integer levels 0..{self.levels - 1}",
                     "Use raw integer intensities (preprocess 'none') and set 'levels' to their number.")

    def extra_repr(self):
        return f"levels={self.levels}"


for _cls, _doc in [
    (Bernoulli, "Bernoulli with logits; x in [0, 1] (binary cross-entropy)"),
    (ContinuousBernoulli, "continuous Bernoulli on [0, 1], normalised"),
    (Normal, "Gaussian; scale fixed, shared, per feature, or from the decoder"),
    (Laplace, "Laplace; scale options as for normal"),
    (Poisson, "Poisson counts"),
    (NegativeBinomial, "negative binomial counts with learned dispersion"),
    (ZINB, "zero-inflated negative binomial counts"),
    (Categorical, "categorical over integer levels 0..levels-1"),
]:
    LIKELIHOODS.register(_cls.name, _cls, doc=_doc, target=_cls)


def register_likelihood(name: str, cls, doc: str = "") -> None:
    """Make ``cls(**options)`` available under a config name."""
    LIKELIHOODS.register(name, cls, doc=doc, target=cls)


def make_likelihood(spec) -> Likelihood:
    """A likelihood from a name (``"normal"``), a dict (``{"name": "normal", "scale": "feature"}``) or an object."""
    if isinstance(spec, nn.Module):
        return spec
    return LIKELIHOODS.build(spec)
