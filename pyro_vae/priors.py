"""Priors p(z): small modules that return a Pyro distribution over ``z``.

Every prior is called as ``prior(context=None)`` and returns a distribution
with ``batch_shape == ()`` (or the context's batch shape) and
``event_shape == (latent_dim,)``; the model's data plate broadcasts it over the
minibatch. A prior with learnable parts is an ``nn.Module`` whose parameters
are fitted by SVI with the rest of the VAE.

Adding a prior takes a few lines::

    class Logistic(Prior):
        def forward(self, context=None):
            base = dist.Uniform(torch.zeros(self.latent_dim), 1.0)
            return dist.TransformedDistribution(base, [SigmoidTransform().inv]).to_event(1)

    vae = VAE(data_shape, prior=Logistic(latent_dim=8))

or ``register_prior("logistic", Logistic)`` to make it a config name.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ._registry import PRIORS
from .distributions import DiagNormalMixture, UnitNormal

__all__ = [
    "Prior",
    "StandardNormal",
    "Laplace",
    "StudentT",
    "MixtureOfGaussians",
    "VampPrior",
    "FlowPrior",
    "PRIORS",
    "make_prior",
    "register_prior",
]


class Prior(nn.Module):
    """Base class: ``forward(context=None) -> Distribution`` over ``[latent_dim]``.

    ``setup(vae)`` is called once by the VAE that owns the prior, for priors
    that need the VAE's parts (the VampPrior needs its encoder).
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)
        # A zero buffer moves with .to(device) so that fixed priors follow the model.
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def setup(self, vae) -> None:  # noqa: D401 - hook
        """Hook called by the owning VAE after it has built its networks."""

    def _loc(self) -> torch.Tensor:
        return self._zero.expand(self.latent_dim)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


class StandardNormal(Prior):
    """``p(z) = N(0, I)`` (Kingma & Welling 2014)."""

    def forward(self, context=None):
        return UnitNormal(self._loc())


class Laplace(Prior):
    """``p(z) = prod_i Laplace(z_i; 0, b)``, heavier tails than the normal."""

    def __init__(self, latent_dim: int, scale: float = 1.0):
        super().__init__(latent_dim)
        if scale <= 0:
            raise ValueError(f"laplace prior: scale must be > 0, got {scale}")
        self.scale = float(scale)

    def forward(self, context=None):
        loc = self._loc()
        return dist.Laplace(loc, torch.full_like(loc, self.scale)).to_event(1)


class StudentT(Prior):
    """``p(z) = prod_i t_nu(z_i; 0, s)``; small ``df`` gives heavy tails."""

    def __init__(self, latent_dim: int, df: float = 3.0, scale: float = 1.0):
        super().__init__(latent_dim)
        if df <= 0 or scale <= 0:
            raise ValueError(f"student-t prior: df and scale must be > 0, got df={df}, scale={scale}")
        self.df = float(df)
        self.scale = float(scale)

    def forward(self, context=None):
        loc = self._loc()
        return dist.StudentT(torch.full_like(loc, self.df), loc, torch.full_like(loc, self.scale)).to_event(1)


class MixtureOfGaussians(Prior):
    """Learnable mixture ``p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2))``.

    Means start spread on a scale-``init_spread`` normal draw so components
    do not coincide; weights and scales are learned unless ``learn_weights``
    is False.
    """

    def __init__(self, latent_dim: int, n_components: int = 10, init_spread: float = 1.0,
                 learn_weights: bool = True):
        super().__init__(latent_dim)
        if int(n_components) < 1:
            raise ValueError(f"mog prior: n_components must be >= 1, got {n_components}")
        self.n_components = int(n_components)
        self.locs = nn.Parameter(init_spread * torch.randn(self.n_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(self.n_components, latent_dim))
        logits = torch.zeros(self.n_components)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def forward(self, context=None):
        return DiagNormalMixture(self.logits, self.locs, self.log_scales.exp())

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, n_components={self.n_components}"


class VampPrior(Prior):
    """Variational mixture of posteriors (Tomczak & Welling 2018)::

        p(z) = 1/K sum_k q(z | u_k)

    where ``q`` is the VAE's own encoder and posterior family and ``u_k`` are K
    learnable pseudo-inputs of the data's shape. The encoder is shared with the
    guide, not copied: it is held outside this module's parameters so it is
    registered (and stepped by the optimiser) once. With the diagonal Normal
    the mixture is :class:`DiagNormalMixture`; ``student-t``, ``lowrank`` and
    ``fullrank`` posteriors give a ``MixtureSameFamily`` of theirs; a flow
    posterior is refused (its density would be needed at other points'
    draws, through K conditionings of the flow).

    Pseudo-inputs start as ``init_mean + init_std * noise``; ``init_from(x)``
    resets them to K data points, which usually trains faster.
    """

    def __init__(self, latent_dim: int, data_shape, n_components: int = 500,
                 init_mean: float = 0.5, init_std: float = 0.05):
        super().__init__(latent_dim)
        if int(n_components) < 1:
            raise ValueError(f"vamp prior: n_components must be >= 1, got {n_components}")
        self.n_components = int(n_components)
        self.data_shape = tuple(int(s) for s in data_shape)
        self.pseudo_inputs = nn.Parameter(init_mean + init_std * torch.randn(self.n_components, *self.data_shape))
        self._encoder = ()  # tuple, so nn.Module does not register it as a child
        self._posterior = None  # the owner's posterior family (None: the diagonal Normal)

    def setup(self, vae) -> None:
        posterior = getattr(vae, "posterior", None)
        if posterior is not None and getattr(posterior, "transforms", None) is not None:
            raise ValueError(f"the vamp prior is a mixture of the posterior at its pseudo-inputs, which a flow "
                             f"posterior ({posterior.name!r}) does not form; use posterior 'normal', 'student-t', "
                             "'lowrank' or 'fullrank' with it, or prior 'mog' or 'flow' with a flow posterior")
        self._encoder = (vae.encoder,)
        self._posterior = None if posterior is None or posterior.name == "normal" else posterior

    @property
    def encoder(self):
        if not self._encoder:
            raise RuntimeError("VampPrior is not attached to a VAE: pass it as VAE(..., prior=VampPrior(...))")
        return self._encoder[0]

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Set the pseudo-inputs to ``n_components`` rows of ``x: [N, *data_shape]`` (cycled if N < K)."""
        idx = torch.arange(self.n_components, device=x.device) % x.shape[0]
        self.pseudo_inputs.copy_(x[idx].to(self.pseudo_inputs))

    def forward(self, context=None):
        params = self.encoder(self.pseudo_inputs)
        if self._posterior is None:
            loc, scale = params
            return DiagNormalMixture(loc.new_zeros(self.n_components), loc, scale)
        components = self._posterior(*params)  # batch [K]
        return dist.MixtureSameFamily(dist.Categorical(logits=params[0].new_zeros(self.n_components)), components)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, n_components={self.n_components}, data_shape={self.data_shape}"


_FLOW_TRANSFORMS = ("affine-autoregressive", "spline-autoregressive", "spline-coupling", "spline")


class FlowPrior(Prior):
    """A learnable normalizing flow over a standard Normal: ``z = f_K(...f_1(e))``, ``e ~ N(0, I)``.

    The transforms are Pyro's (``transform``: ``affine-autoregressive``,
    ``spline-autoregressive``, ``spline-coupling`` or element-wise ``spline``),
    ``n_flows`` of them with ``hidden`` layers, each used in its inverse
    direction, so ``log p(z)`` at the guide's draws is one network pass per
    flow (a masked autoregressive flow, Papamakarios et al. 2017) and drawing
    from the prior (generation only) is the sequential direction. Between
    autoregressive flows Pyro draws a fresh variable order.
    """

    def __init__(self, latent_dim: int, transform: str = "affine-autoregressive", n_flows: int = 2,
                 hidden=(64,), count_bins: int = 8, bound: float = 3.0):
        super().__init__(latent_dim)
        import pyro.distributions.transforms as T

        if transform not in _FLOW_TRANSFORMS:
            from ._registry import did_you_mean

            raise ValueError(f"flow prior: unknown transform {transform!r}; valid: {', '.join(_FLOW_TRANSFORMS)}."
                             + did_you_mean(transform, _FLOW_TRANSFORMS))
        if isinstance(n_flows, bool) or int(n_flows) != n_flows or int(n_flows) < 1:
            raise ValueError(f"flow prior: n_flows must be an integer >= 1, got {n_flows!r}")
        hidden = [hidden] if isinstance(hidden, int) else [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"flow prior: hidden must be a non-empty list of positive layer sizes, got {hidden!r}")
        if transform in ("spline-coupling", "affine-autoregressive", "spline-autoregressive") and self.latent_dim < 2:
            raise ValueError(f"flow prior: transform {transform!r} needs latent_dim >= 2; use transform 'spline'")
        self.transform, self.n_flows = transform, int(n_flows)
        make = {
            "affine-autoregressive": lambda: T.affine_autoregressive(self.latent_dim, hidden),
            "spline-autoregressive": lambda: T.spline_autoregressive(self.latent_dim, hidden, count_bins, bound),
            "spline-coupling": lambda: T.spline_coupling(self.latent_dim, hidden_dims=hidden, count_bins=count_bins,
                                                         bound=bound),
            "spline": lambda: T.spline(self.latent_dim, count_bins=count_bins, bound=bound),
        }[transform]
        self.flows = nn.ModuleList(make() for _ in range(self.n_flows))

    def forward(self, context=None):
        return dist.TransformedDistribution(UnitNormal(self._loc()), [f.inv for f in self.flows])

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, transform={self.transform!r}, n_flows={self.n_flows}"


def _student_t(latent_dim, data_shape=None, **options):
    return StudentT(latent_dim, **options)


PRIORS.register("normal", lambda latent_dim, data_shape=None: StandardNormal(latent_dim),
                doc="standard normal N(0, I)", target=StandardNormal)
PRIORS.register("laplace", lambda latent_dim, data_shape=None, **o: Laplace(latent_dim, **o),
                doc="factorised Laplace(0, scale)", target=Laplace)
PRIORS.register("student-t", _student_t, doc="factorised Student-t(df, 0, scale)", target=StudentT)
PRIORS.register("mog", lambda latent_dim, data_shape=None, **o: MixtureOfGaussians(latent_dim, **o),
                doc="learnable mixture of K diagonal Gaussians", target=MixtureOfGaussians)
PRIORS.register("vamp", lambda latent_dim, data_shape, **o: VampPrior(latent_dim, data_shape, **o),
                doc="VampPrior: mixture of q(z|u_k) at K pseudo-inputs", target=VampPrior)
PRIORS.register("flow", lambda latent_dim, data_shape=None, **o: FlowPrior(latent_dim, **o),
                doc="normalizing flow over N(0, I) (transform, n_flows, hidden)", target=FlowPrior)


def register_prior(name: str, cls, doc: str = "") -> None:
    """Make ``cls(latent_dim, **options)`` available under a config name."""
    PRIORS.register(name, lambda latent_dim, data_shape=None, **o: cls(latent_dim, **o), doc=doc, target=cls)


def make_prior(spec, latent_dim: int, data_shape=None) -> Prior:
    """A prior from a name (``"mog"``), a dict (``{"name": "mog", "n_components": 5}``) or an object."""
    if isinstance(spec, nn.Module):
        if getattr(spec, "latent_dim", latent_dim) != latent_dim:
            raise ValueError(f"prior has latent_dim={spec.latent_dim} but the VAE has latent_dim={latent_dim}")
        return spec
    return PRIORS.build(spec, latent_dim=latent_dim, data_shape=data_shape)

