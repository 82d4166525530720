"""Names -> factories, one table per kind of component; the one place where config names meet objects.

Strings live at the edges: config files and the CLI name a component, a
registry turns the name (plus keyword options) into the object, and everything
past that point works with objects only.

Every registry of the package is created here, empty, with the module that
fills it (``PRIORS`` is filled by :mod:`pyro_vae.priors`). That module is
imported on the first look-up, so :mod:`pyro_vae.config` checks names and
options through these tables without importing a single component module, and
plugins (:mod:`pyro_vae.plugins`) register into the same tables before any name
is resolved.

Each table also declares the names of its built-in entries (``builtin``), so the
command line lists them in its help without importing that module, and with it
torch and Pyro (``tests/test_startup.py`` checks the declared names against the
registered ones).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Registry", "Entry", "ComponentError", "did_you_mean", "spec_name", "PRIORS", "POSTERIORS", "LIKELIHOODS", "NETS", "MODELS",
           "OBJECTIVES", "KL_SCHEDULES", "OPTIMIZERS", "LR_SCHEDULES", "PREPROCESSINGS"]


def did_you_mean(word: str, choices) -> str:
    """`` Did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def spec_name(spec) -> str | None:
    """The name of a component spec: ``"mog"`` for ``"mog"`` and ``{"name": "mog", ...}``; ``None`` for an object."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return spec.get("name")
    return None


class ComponentError(ValueError):
    """A component refused its options while being built; ``kind`` names its registry (``"prior"``, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    doc: str
    target: Any  # the class (or callable) whose keyword options the name accepts
    skip: frozenset = field(default_factory=frozenset)  # keyword arguments the builder supplies itself
    check: Callable[..., None] | None = None  # validates options (values too) without building anything

    def options(self) -> dict[str, Any]:
        """Keyword options a user may set, with their defaults."""
        if self.target is None:
            return {}
        call = self.target.__init__ if inspect.isclass(self.target) else self.target
        sig = inspect.signature(call)
        return {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in sig.parameters.items()
            if k not in self.skip and k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }


class Registry:
    """Names -> factories for one kind of component (``"prior"``, ``"likelihood"``, ...).

    Args:
        kind: what the entries are, for messages (``"prior"``).
        source: the module registering the built-in entries, imported on the first look-up.
        skip: keyword arguments every builder of this kind receives from the caller
            (``latent_dim``, ``data_shape``, ...), so they are not user options.
        builtin: the names ``source`` registers, in its order, for listings that must not
            import it (``names(load=False)``).
    """

    def __init__(self, kind: str, source: str | None = None, skip=("self", "latent_dim", "data_shape", "n_params"),
                 builtin=()):
        self.kind = kind
        self.source = source
        self.builtin = tuple(builtin)
        self._source = source  # None once imported
        self._skip = frozenset(skip)
        self._entries: dict[str, Entry] = {}

    # ----------------------------------------------------------------- filling
    def register(self, name: str, factory: Callable[..., Any], doc: str = "", target=None, *, skip=(),
                 check: Callable[..., None] | None = None) -> None:
        self._import_source()  # the built-in entries first, so one registered under the same name replaces them
        self._entries[name] = Entry(name, factory, doc, target, self._skip | frozenset(skip), check)

    def unregister(self, name: str) -> None:
        self._import_source()
        self._entries.pop(name, None)

    def _import_source(self) -> None:
        if self._source is not None:
            source, self._source = self._source, None  # first, so the module's own registrations do not recurse
            importlib.import_module(source)

    def _load(self) -> None:
        self._import_source()
        from . import plugins

        plugins.load_entry_points()

    # ----------------------------------------------------------------- look-ups
    def names(self, load: bool = True) -> list[str]:
        """The registered names; with ``load=False`` nothing is imported (for help texts): the declared built-in
        names while the source module is not imported yet (installed plugins not included), else those
        registered so far."""
        if not load:
            return list(self.builtin) if self._source is not None else list(self._entries)
        self._load()
        return list(self._entries)

    def __contains__(self, name) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self):
        self._load()
        return iter(list(self._entries.values()))

    def __getitem__(self, name: str) -> Entry:
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = ", ".join(repr(n) for n in self._entries)
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self.kind} names are {valid}.{did_you_mean(name, self._entries)}"
            ) from None

    def split_spec(self, spec) -> tuple[str, dict]:
        """``"mog"`` or ``{"name": "mog", "n_components": 5}`` -> ``("mog", {"n_components": 5})``."""
        if isinstance(spec, str):
            return spec, {}
        if isinstance(spec, dict):
            if "name" not in spec:
                raise ValueError(f"a {self.kind} given as a table needs a 'name' key, got keys {sorted(spec)}")
            options = {k: v for k, v in spec.items() if k != "name"}
            return spec["name"], options
        raise TypeError(f"a {self.kind} is given by name, by a {{'name': ..., **options}} dict, or as an object; "
                        f"got {type(spec).__name__}")

    def check_options(self, name: str, options: dict) -> None:
        """Refuse option names the entry does not take, naming the closest one."""
        entry = self[name]
        valid = entry.options()
        for key in options:
            if key not in valid:
                listed = ", ".join(valid) or "none"
                raise ValueError(
                    f"unknown option {key!r} for {self.kind} {name!r}; its options are: {listed}."
                    f"{did_you_mean(key, valid)}"
                )

    def check(self, spec) -> None:
        """Validate a spec (name and options; values too where the entry has a checker) without building it."""
        name, options = self.split_spec(spec)
        self.check_options(name, options)
        entry = self[name]
        if entry.check is not None:
            entry.check(**options)

    def build(self, spec, **context):
        """The object a spec names, built with ``context`` (``latent_dim=...``) and the spec's options.

        A ``ValueError`` or ``TypeError`` of the factory comes out as a :class:`ComponentError`
        of this kind, so a config can name the key that caused it.
        """
        name, options = self.split_spec(spec)
        self.check_options(name, options)
        return self.call(self[name].factory, **context, **options)

    def call(self, factory, *args, **kwargs):
        """``factory(*args, **kwargs)``, its ``ValueError``/``TypeError`` as a :class:`ComponentError` of this kind."""
        try:
            return factory(*args, **kwargs)
        except ComponentError:
            raise
        except (ValueError, TypeError) as err:
            raise ComponentError(self.kind, str(err)) from err


# The package's tables; each is filled by its module on first use. `builtin` repeats the names that module
# registers, in its order (tests/test_startup.py checks them): a help text lists them without importing it.
PRIORS = Registry("prior", "pyro_vae.priors", builtin=("normal", "laplace", "student-t", "mog", "vamp", "flow"))
POSTERIORS = Registry("posterior", "pyro_vae.posteriors", builtin=(
    "normal", "student-t", "lowrank", "fullrank", "iaf", "planar", "householder", "sylvester", "spline"))
LIKELIHOODS = Registry("likelihood", "pyro_vae.likelihoods", builtin=(
    "bernoulli", "continuous-bernoulli", "normal", "laplace", "poisson", "negative-binomial", "zinb", "categorical"))
NETS = Registry("net", "pyro_vae.nets", builtin=("mlp", "conv", "linear"))
MODELS = Registry("model", "pyro_vae.models", skip=("self", "data_shape", "name"),
                  builtin=("vae", "stacked", "m2", "cvae", "grouped"))
OBJECTIVES = Registry("objective", "pyro_vae.objectives",
                      builtin=("elbo", "meanfield", "iwae", "renyi", "tracegraph", "enum"))
KL_SCHEDULES = Registry("kl schedule", "pyro_vae.objectives", builtin=("constant", "linear", "cyclical"))
OPTIMIZERS = Registry("optimizer", "pyro_vae.optim", skip=("self", "params"), builtin=("adam", "clipped-adam", "adamw"))
LR_SCHEDULES = Registry("lr schedule", "pyro_vae.optim", skip=("self", "optimizer", "last_epoch", "verbose"),
                        builtin=("exponential", "step", "cosine", "plateau"))
PREPROCESSINGS = Registry("preprocess", "pyro_vae.data",
                          builtin=("none", "scale", "binarize", "dynamic-binarize", "standardize"))
