"""The declared interface of every model type: what training, evaluation, checkpoints and the CLI may ask.

A model type is a :class:`Model`: an ``nn.Module`` holding its networks, with
a Pyro ``model`` and ``guide`` over a ``"data"`` plate. Code outside
:mod:`pyro_vae.models` asks a model only what this class declares; it never
branches on a model's class or type name. A model of your own (its ``model``
and ``guide`` written in plain Pyro, as in Pyro's examples) subclasses it and
then trains with :func:`~pyro_vae.train.fit`, evaluates with
:func:`~pyro_vae.evaluate.elbo`, :func:`~pyro_vae.evaluate.iwae_log_likelihood`
and :func:`~pyro_vae.diagnostics.psis_diagnostic`, checkpoints and resumes;
:func:`~pyro_vae.models.register_model` makes it a config name::

    class FactorAnalysis(Model):
        latent_sites = ("z",)

        def __init__(self, data_shape, latent_dim=2):
            super().__init__(data_shape)
            self.latent_dim = latent_dim
            self.loading = nn.Linear(latent_dim, data_shape[0])
            self.encoder = nn.Linear(data_shape[0], 2 * latent_dim)

        def model(self, x=None, idx=None, num_data=None, n=None):
            pyro.module(self.name, self)
            with self.data_plate(x, idx, num_data, n):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
                pyro.sample("x", dist.Normal(self.loading(z), 0.5).to_event(1), obs=x)

        def guide(self, x=None, idx=None, num_data=None, n=None):
            pyro.module(self.name, self)
            with self.data_plate(x, idx, num_data, n):
                loc, raw = self.encoder(x).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc, F.softplus(raw)).to_event(1))

        def posterior_mean(self, x, labels=None):
            return self.encoder(x.to(self.device)).chunk(2, -1)[0]

The contract, member by member:

==========================  ==================================================================
``model``, ``guide``        Pyro programs called ``(*inputs, idx, num_data=N)`` during
                            training (``idx``: the minibatch's indices, ``N``: the data size)
                            and ``(n=n)`` with ``x=None`` to generate; the data site is ``"x"``
``inputs``                  names of the tensors before ``idx``: ``("x",)``, ``("x", "y")``
``latent_sites``            the latent sample sites (KL weights apply to them)
``max_plate_nesting``       plates the programs nest (the data plate: 1)
``data_plate``              the ``"data"`` plate, ``subsample=idx`` scaling a minibatch by ``N / B``
``register_params``         ``pyro.param`` for the parameters one program owns (or use ``pyro.module``)
``check_data``              shape, finiteness and the likelihood's support, one message each
``split_inputs``            the tensors model and guide take for one split: ``(x,)`` or
                            ``(x, labels)`` (M2 hides held-out labels and keeps ``labelled``)
``posterior_mean``          ``E_q[z | x]``, ``[N, latent_dim]``: what ``pyro-vae encode`` writes
``decode``, ``reconstruct``  ``E[x | z]`` and ``E[x | posterior mean]`` (figures)
``sample``, ``sample_grid``  draws from ``p(x)``; the grid a run shows (a labelled row per class for M2)
``artifacts``               extra files a finished run writes (M2: ``accuracy.json``)
``from_config``             the model from the ``[model]`` keys of a config
``complete_options``        options filled in from the data's labels (``n_classes``)
``check_component``         checks a ``[model]`` component spec (prior, posterior, likelihood, net)
==========================  ==================================================================

An operation a model type does not define raises :class:`Unsupported` with
the reason; the CLI turns it into one line and exit code 2.
"""

from __future__ import annotations

import abc
import inspect
import json
import math
from pathlib import Path
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.params.param_store import param_with_module_name
from torch import nn

from .._registry import LIKELIHOODS, NETS, POSTERIORS, PRIORS, did_you_mean

__all__ = ["Model", "Unsupported", "SampleGrid", "DATA_SITE"]

DATA_SITE = "x"  # the observed site of every model

# Counts parameter and submodule registrations on every nn.Module in the process, so that the per-program
# parameter lists (Model.register_params) are rebuilt only when a module changed.
_STRUCTURE_VERSION = [0]


def _structure_changed(module, name, value) -> None:
    _STRUCTURE_VERSION[0] += 1


nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
nn.modules.module.register_module_module_registration_hook(_structure_changed)

_COMPONENTS = {"prior": PRIORS, "posterior": POSTERIORS, "likelihood": LIKELIHOODS, "net": NETS}
_COMMON = ("latent_dim", "prior", "posterior", "likelihood", "net")  # the [model] keys a type may take


class Unsupported(ValueError):
    """An operation this model type does not define, or not with these settings (encoding without the
    context it needs; M2 without data.labelled). The CLI exits with status 2, as for a configuration error."""


class SampleGrid(NamedTuple):
    """What a model generates, laid out for a figure: ``images: [N, *data_shape]``, ``nrow`` items a row.

    ``row_labels``: one label per row of ``nrow`` items, which the figure prints beside it (the class each
    row was generated for: ``"y = 3"``), or ``None`` where the rows are not different conditions.
    """

    images: torch.Tensor
    nrow: int
    row_labels: tuple[str, ...] | None = None


def _shape(s) -> tuple[int, ...]:
    return (int(s),) if isinstance(s, int) else tuple(int(v) for v in s)


class Model(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every model type; see the module docstring for the contract.

    Args:
        data_shape: shape of one data point, e.g. ``(1, 28, 28)`` or ``(2000,)``.
        likelihood: a :class:`~pyro_vae.likelihoods.Likelihood`, its config name or dict, or
            ``None`` for a model that declares its observation itself.
        name: prefix of the parameters in Pyro's param store.
    """

    inputs: tuple[str, ...] = ("x",)
    max_plate_nesting: int = 1
    guide_parts: tuple[str, ...] = ()  # what the guide registers (register_params); the model registers the rest
    objective: str | None = None  # an objective the model must be fitted with ("enum": M2's label is summed)
    label_option: str | None = None  # the option that takes the data's label count ("n_classes")

    def __init__(self, data_shape, likelihood=None, name: str = "model"):
        super().__init__()
        shape = _shape(data_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"data_shape must be a non-empty shape of positive sizes, got {data_shape!r}")
        self.data_shape = shape
        self.name = name
        self.likelihood = None
        if likelihood is not None:
            from ..likelihoods import make_likelihood

            self.likelihood = make_likelihood(likelihood)
            self.likelihood.setup(self.data_shape)

    # ----------------------------------------------------------------- the Pyro programs
    @property
    @abc.abstractmethod
    def latent_sites(self) -> tuple[str, ...]:
        """Names of the latent sample sites."""

    @abc.abstractmethod
    def model(self, *args, **kwargs):
        """The generative program: prior and likelihood over the ``"data"`` plate."""

    @abc.abstractmethod
    def guide(self, *args, **kwargs):
        """The inference program ``q(z | x)`` over the same plate."""

    def data_plate(self, x, idx=None, num_data=None, n=None) -> pyro.plate:
        """The ``"data"`` plate over a minibatch ``x: [B, *data_shape]`` (or ``n`` points to generate).

        ``idx: [B]`` are the minibatch's indices in the full data set and
        ``num_data`` its size: Pyro's ``plate(..., subsample=idx)`` scales the ELBO by ``N / B``.
        """
        if x is not None:
            if x.shape[1:] != self.data_shape:
                raise ValueError(self._shape_message(x))
            batch = x.shape[0]
        elif n is not None:
            batch = int(n)
        else:
            raise ValueError("model needs data x, or n (the number of points to sample) when x is None")
        size = batch if num_data is None else int(num_data)
        if idx is None:
            idx = torch.arange(batch, device=self.device)
        return pyro.plate("data", size, subsample=idx, device=idx.device)  # a device spares Pyro a probe tensor

    def register_params(self, program: str) -> None:
        """``pyro.param`` for the parameters ``program`` (``"model"`` or ``"guide"``) owns.

        Named as ``pyro.module(self.name, self)`` names them. The guide registers
        ``guide_parts`` (top-level submodule or parameter names), the model every
        other trainable parameter, as Pyro's own VAE example registers the decoder
        in the model and the encoder in the guide: each parameter is one param
        site per step instead of two. Frozen parameters are left out. Which
        parameter belongs where is worked out once and kept until any
        ``nn.Module`` registers a parameter or submodule or ``name`` changes
        (walking the module tree twice a step was ~4% of a tiny network's step).
        """
        key = (_STRUCTURE_VERSION[0], self.name)
        owners = self.__dict__.get("_param_owners")
        if owners is None or owners[0] != key:
            sites: dict = {"model": [], "guide": []}
            for name, p in self.named_parameters():
                part = "guide" if name.partition(".")[0] in self.guide_parts else "model"
                sites[part].append((param_with_module_name(self.name, name), p))
            owners = self.__dict__["_param_owners"] = (key, sites)  # not an nn.Module attribute
        for name, p in owners[1][program]:
            if p.requires_grad:
                pyro.param(name, p)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters (or buffers) are."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    # ----------------------------------------------------------------- input checks
    def check_data(self, x, support: bool = True) -> None:
        """Raise ``ValueError`` naming the problem if ``x: [N, *data_shape]`` cannot be modelled.

        A :class:`~pyro_vae.sources.Source` is checked block by block, in one pass (rows counted from its start).
        """
        from ..sources import Source

        if isinstance(x, Source):
            if x.dim() < 1 or x.shape[1:] != self.data_shape:
                raise ValueError(self._shape_message(x))
            if len(x) == 0:
                raise ValueError("data is empty (0 rows)")
            for start, block in x.blocks():
                try:
                    self.check_data(block, support)
                except ValueError as err:
                    raise ValueError(f"{x.name}, rows {start}-{start + len(block) - 1}: {err}") from None
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor of shape [N, {', '.join(map(str, self.data_shape))}], "
                            f"got {type(x).__name__}; convert with torch.as_tensor(x, dtype=torch.float32)")
        if x.dim() < 1 or x.shape[1:] != self.data_shape:
            raise ValueError(self._shape_message(x))
        if x.shape[0] == 0:
            raise ValueError("data is empty (0 rows)")
        # min and max propagate NaN and show +-Inf: one pass over clean data, the full scan only to report
        if x.is_floating_point() and not all(map(math.isfinite, map(float, torch.aminmax(x)))):
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                bad = (~finite).reshape(x.shape[0], -1).any(1).nonzero()[:, 0]
                n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
                raise ValueError(f"data contains {n_nan} NaN and {n_inf} infinite values in {len(bad)} rows "
                                 f"(first at row {int(bad[0])}); remove or impute them before fitting")
        if support and self.likelihood is not None:
            self.likelihood.check_support(x)

    def _shape_message(self, x) -> str:
        want = list(self.data_shape)
        msg = (f"data of shape {list(x.shape)} does not match the model: expected [N, "
               f"{', '.join(map(str, want))}] (data_shape={tuple(want)}).")
        if x.dim() >= 1 and math.prod(x.shape[1:]) == math.prod(want):
            msg += f" Reshape it with x.reshape(-1, {', '.join(map(str, want))})."
        else:
            msg += f" Build the model with data_shape={tuple(x.shape[1:])} for this data."
        return msg

    # ----------------------------------------------------------------- data of a split
    def split_inputs(self, x: torch.Tensor, labels: torch.Tensor | None = None, *, split: str = "train",
                     labelled: int | None = None, seed: int = 0) -> tuple:
        """The tensors ``model`` and ``guide`` take for one split: ``(x,)``, or ``(x, labels)`` as ``inputs`` name."""
        if len(self.inputs) == 1:
            return (x,)
        if labels is None:
            raise Unsupported(f"{type(self).__name__} takes {self.inputs}: this data has no labels; use a labelled "
                              "data set (digits, mnist, ...) or a .npz/.pt file with a 'y' array")
        return (x, labels)

    def init_from_data(self, x: torch.Tensor) -> None:
        """Called once before training with the training data: a prior with data-shaped parameters starts
        at training points (the VampPrior's pseudo-inputs, Tomczak & Welling 2018)."""
        init_from = getattr(getattr(self, "prior", None), "init_from", None)
        if init_from is not None:
            init_from(x.to(self.device))

    # ----------------------------------------------------------------- the fitted model
    @abc.abstractmethod
    def posterior_mean(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``E_q[z | x]`` for ``x: [N, *data_shape]``, as ``[N, latent_dim]`` (``labels``: the data's labels,
        for models whose posterior needs them); raise :class:`Unsupported` where it is not defined."""

    def decoder_context(self, *context) -> tuple:
        """What the decoder takes besides ``z`` (none here; a label one-hot for M2, ``c`` for the CVAE)."""
        if context:
            raise Unsupported(f"{type(self).__name__} decodes z alone; got {len(context)} extra argument(s)")
        return ()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *context, mean: bool = True) -> torch.Tensor:
        """``E[x | z, ...]`` (``mean=True``) or a draw of ``x``; ``z: [*b, latent_dim] -> [*b, *data_shape]``."""
        if self.likelihood is None or not hasattr(self, "decoder"):
            raise Unsupported(f"{type(self).__name__} has no decoder and likelihood to decode z with")
        params = self.decoder(z.to(self.device), *self.decoder_context(*context))
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``E[x | z]`` at the posterior mean of ``z``."""
        return self.decode(self.posterior_mean(x, labels))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` draws from the generative model: ``E[x | z]`` per draw (``mean=True``) or ``x`` itself.

        By default the mean of the ``"x"`` site in a trace of ``model(n=n)``.
        """
        site = poutine.trace(self.model).get_trace(n=n).nodes[DATA_SITE]
        return site["fn"].mean if mean else site["value"]

    @torch.no_grad()
    def sample_grid(self, n: int = 64, mean: bool = True) -> SampleGrid:
        """What a run's ``samples.png`` and ``pyro-vae sample`` show: ``n`` draws, 8 a row."""
        return SampleGrid(self.sample(n, mean=mean), 8)

    def artifacts(self, run_dir: Path, splits, inputs: dict) -> dict:
        """Extra files a finished run writes into ``run_dir``, as ``{name: path}`` (none by default).

        ``splits``: the run's :class:`~pyro_vae.data.DataSplits`; ``inputs``: ``{split: tuple}``
        as :meth:`split_inputs` made them.
        """
        return {}

    # ----------------------------------------------------------------- from a config
    @classmethod
    def _accepted(cls) -> set:
        own = cls.from_config.__func__ is not Model.from_config.__func__  # a type that maps the keys itself
        params = inspect.signature(cls.from_config if own else cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # the rest passes through to __init__
            return set(params) | (set(_COMMON) & set(inspect.signature(cls.__init__).parameters))
        return set(params)

    @classmethod
    def from_config(cls, data_shape, latent_dim=None, prior=None, likelihood=None, net=None, posterior=None,
                    **options):
        """The model from the ``[model]`` keys of a config: those ``__init__`` takes, then the type's options."""
        common = {"latent_dim": latent_dim, "prior": prior, "posterior": posterior, "likelihood": likelihood,
                  "net": net}
        accepted = cls._accepted()
        return cls(tuple(data_shape), **{k: v for k, v in common.items() if k in accepted and v is not None},
                   **options)

    @classmethod
    def takes(cls, key: str) -> bool:
        """Whether ``from_config`` uses the ``[model]`` key ``key`` (``latent_dim``, ``prior``, ...)."""
        return key in cls._accepted()

    @classmethod
    def complete_options(cls, options: dict, labels: torch.Tensor | None) -> dict:
        """``options`` with ``label_option`` filled in from the data's labels (``labels.max() + 1``);
        unchanged without labels (then the type's default applies, or its data check refuses the data)."""
        key = cls.label_option
        if key is None or key in options or labels is None:
            return dict(options)
        return {**options, key: int(labels.max()) + 1}

    @classmethod
    def check_component(cls, key: str, spec) -> None:
        """Check the ``[model]`` component ``key`` (``prior``, ``posterior``, ``likelihood``, ``net``) by its registry."""
        registry = _COMPONENTS.get(key)
        if registry is None:
            raise ValueError(f"unknown component {key!r}; valid: {', '.join(_COMPONENTS)}." + did_you_mean(key, _COMPONENTS))
        registry.check(spec)


def write_json(path: Path, record: dict) -> Path:
    """A small JSON artefact, written atomically."""
    from .._io import atomic_write_text

    return atomic_write_text(path, json.dumps(record, indent=2))
