"""The declarative run configuration: one dataclass tree, read from and written to TOML.

::

    plugins     modules that register components, imported before anything is checked
    [data]      source, data_dir, download, preprocess, val_fraction, test_fraction, batch_size, labelled,
                mmap, backed, layer, var_subset, labels, groups, image_size, channels, chunk
    [model]     latent_dim, prior, likelihood, net     (component = name or {name = ..., options})
    [objective] name, num_particles, kl_weight, kl_schedule, kl_warmup, kl_cycles, kl_ratio,
                and the objective's own options (alpha = 0.5 for renyi, free_bits = 0.1 for elbo, ...)
    [optim]     name, lr, clip_norm, lr_schedule
    [train]     epochs, seed, device, val_every, checkpoint_every, early_stopping, min_delta, on_nonfinite,
                divergence
    [output]    run_dir, tensorboard, tensorboard_every
    [run]       id, config_hash: the identity of a run, written by the run itself (never a setting)

``load_config(path)`` / ``Config.from_dict(d)`` validate into typed objects and
raise :class:`ConfigError` (a ``ValueError``) naming the full key, e.g.
``model.laten_dim``, with the closest valid key. ``Config.to_toml()`` writes a
file that loads back into an equal ``Config``; ``apply_overrides(config,
{"model.latent_dim": 4})`` applies dotted overrides with the same checks.

Names and options are checked through each registry's own checker
(:mod:`pyro_vae._registry`), which imports the component modules on first use;
nothing is built here. :mod:`pyro_vae.build` turns a config into objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import sys
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import plugins as _plugins
from ._io import atomic_write_text
from ._registry import (KL_SCHEDULES, LR_SCHEDULES, MODELS, OBJECTIVES, OPTIMIZERS, PREPROCESSINGS, did_you_mean,
                        spec_name)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "Config", "DataConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig", "TrainConfig", "OutputConfig", "RunInfo",
    "ConfigError", "load_config", "apply_overrides", "config_key",
]

Spec = typing.Union[str, dict]  # a component: "mog" or {"name": "mog", "n_components": 10}


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the offending key."""


@contextmanager
def config_key(key: str):
    """Re-raise ``ValueError``/``TypeError`` from inside the block as a :class:`ConfigError` naming ``key``."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{key}: {err}") from err


# --------------------------------------------------------------------------- the schema

@dataclass
class DataConfig:
    # a name in pyro_vae.data.DATASETS, or a path to a .npy/.npz/.csv/.pt/.h5ad file or a folder of images
    source: str = "digits"
    # a file source's absolute path, stored by the run beside the path as given (found again from anywhere)
    source_path: str | None = None
    data_dir: str | None = None  # torchvision datasets live here (unset: $PYRO_VAE_DATA_DIR or ~/.cache/pyro_vae)
    download: bool = False  # let torchvision fetch missing datasets
    # none | scale ([0, 1]) | binarize | dynamic-binarize | standardize; unset: the likelihood's own default
    # (bernoulli: scale, normal/laplace: standardize, counts: none), printed when a run starts
    preprocess: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # unused by torchvision datasets, which keep their official test set
    batch_size: int | None = None  # unset: 128, or every training point if there are fewer; set: exactly this
    labelled: int | None = None  # model type m2: training points that keep their label (balanced over classes)
    # how a file is read (pyro_vae.data.open_source); unset: the format's own way. A streamed file's splits are
    # read a minibatch at a time, each split's rows in increasing order
    mmap: bool | None = None  # a .npy memory-mapped (unset: when larger than pyro_vae.data.MMAP_THRESHOLD, 2 GiB)
    backed: bool | None = None  # an .h5ad's X read from disk (anndata backed="r") instead of into memory
    layer: str | None = None  # an .h5ad layer instead of X
    var_subset: str | None = None  # an .h5ad boolean var column: only the variables where it is true
    labels: str | None = None  # an .h5ad obs column: the labels (m2, cvae; colours of the latent map)
    groups: str | None = None  # an .h5ad obs column: the groups of model type grouped (unset: labels)
    image_size: int | list | None = None  # a folder of images resized to S x S or [H, W] (needed for mixed sizes)
    channels: int | None = None  # a folder of images as 1 (grayscale) or 3 (RGB) channels; unset: the first image's
    chunk: int | None = None  # streamed data: rows shuffled together (a backed .h5ad: 4096 unless set)

    def batch(self, n_train: int) -> int:
        """The minibatch size for ``n_train`` training points; an explicit size larger than that is an error."""
        if self.batch_size is None:
            return min(128, n_train)
        if self.batch_size > n_train:
            raise ConfigError(f"data.batch_size: {self.batch_size} is larger than the {n_train} training points; "
                              f"set --batch-size {n_train} or less, or use more data")
        return self.batch_size

    def check(self) -> None:
        _require(self.labelled is None or self.labelled >= 1, "data.labelled",
                 f"must be >= 1 (labelled training points for model type m2), got {self.labelled}")
        if self.preprocess is not None:
            names = PREPROCESSINGS.names()
            _require(self.preprocess in names, "data.preprocess",
                     f"unknown preprocess {self.preprocess!r}; valid: {', '.join(names)}."
                     + did_you_mean(self.preprocess, names))
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"data.{name}", f"must be in [0, 1), got {value}")
        if self.batch_size is not None:
            _require(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        if self.image_size is not None:
            size = [self.image_size] if isinstance(self.image_size, int) else self.image_size
            _require(len(size) in (1, 2) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                                  for s in size), "data.image_size",
                     f"must be a size S >= 1 or [height, width], got {self.image_size!r}")
        _require(self.channels in (None, 1, 3), "data.channels",
                 f"must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        _require(self.chunk is None or self.chunk >= 1, "data.chunk", f"must be >= 1 rows, got {self.chunk}")


def _default_net() -> dict:
    return {"name": "mlp", "hidden": [256]}


_MODEL_KEYS = ("type", "latent_dim", "prior", "posterior", "likelihood", "net")


@dataclass
class ModelConfig:
    type: str = "vae"  # a name in pyro_vae.hierarchical.MODELS: vae, stacked, m2, cvae, grouped
    latent_dim: int = 8
    prior: Spec = "normal"  # or a table, e.g. [model.prior] name = "mog"  n_components = 10
    posterior: Spec = "normal"  # q(z | x): normal, lowrank, fullrank, iaf, planar, ... or a table with options
    likelihood: Spec = "bernoulli"
    net: Spec = field(default_factory=_default_net)  # encoder and decoder family with options (hidden, activation)
    # The model type's own options (latent_dims for stacked, alpha for m2, num_groups for grouped, ...),
    # written as further keys of [model]: `type = "stacked"  latent_dims = [32, 16]`.
    options: dict = field(default_factory=dict)

    _extra = "options"

    def check(self) -> None:
        _require(self.latent_dim >= 1, "model.latent_dim", f"must be >= 1, got {self.latent_dim}")
        with config_key("model.type"):
            entry = MODELS[self.type]
        default = ModelConfig()
        for key in ("prior", "posterior", "likelihood", "net"):
            spec = getattr(self, key)
            if not entry.target.takes(key):
                _require(spec == getattr(default, key), f"model.{key}",
                         f"model type {self.type!r} takes no {key}; remove the key (its model declares its own)")
                continue
            with config_key(f"model.{key}"):
                entry.target.check_component(key, spec)
        valid = self.type_options(entry)
        for key in self.options:
            if key not in valid:
                raise ConfigError(f"unknown key 'model.{key}'; [model] takes {', '.join(_MODEL_KEYS)} and the "
                                  f"options of model type {self.type!r} ({', '.join(valid) or 'none'})."
                                  + _suggest("model", key, [*_MODEL_KEYS, *valid]))

    @staticmethod
    def type_options(entry) -> list[str]:
        """The model type's own keys of ``[model]``: its keyword options less those ``[model]`` sets itself.

        ``context_shape`` comes from the data, so it is not a config key.
        """
        return [k for k in entry.options() if k not in _MODEL_KEYS and k != "context_shape"]

    def label(self, key: str) -> str:
        """The component's name: ``"mog"`` for both ``"mog"`` and ``{"name": "mog", ...}``."""
        return spec_name(getattr(self, key))


@dataclass
class ObjectiveConfig:
    name: str = "elbo"  # a name in pyro_vae.objectives.OBJECTIVES: elbo, meanfield, iwae, renyi, ...
    num_particles: int = 1  # Monte Carlo samples of z per data point and step (K for iwae / renyi)
    kl_weight: float = 1.0  # beta: weight of the latent sites' log-densities (beta-VAE); the schedule's peak
    kl_schedule: str = "constant"  # constant | linear (warm-up from 0 over kl_warmup epochs) | cyclical
    kl_warmup: float = 10.0  # epochs of the linear warm-up
    kl_cycles: int = 4  # cyclical: number of ramps over the run (Fu et al. 2019)
    kl_ratio: float = 0.5  # cyclical: fraction of each cycle spent ramping up
    # The objective's own options (e.g. alpha for renyi, free_bits for elbo), written
    # as further keys of [objective]: `name = "renyi"  alpha = 0.5`.
    options: dict = field(default_factory=dict)

    _extra = "options"  # the field collecting the section's other keys

    def check(self) -> None:
        with config_key("objective.name"):
            entry = OBJECTIVES[self.name]
        _require(self.num_particles >= 1, "objective.num_particles", f"must be >= 1, got {self.num_particles}")
        with config_key("objective.kl_schedule"):
            KL_SCHEDULES.check(self.kl_spec())
        _require(not (self.options.get("jit") and self.kl_schedule != "constant"), "objective.jit",
                 f"a compiled objective freezes the KL weight, so it cannot follow kl_schedule = "
                 f"{self.kl_schedule!r}; drop jit or use kl_schedule = \"constant\"")
        valid = entry.options()
        for key in self.options:
            if key not in valid:
                keys = ["name", "num_particles", *valid]
                raise ConfigError(f"unknown key 'objective.{key}'; [objective] takes name, num_particles and the "
                                  f"options of objective {self.name!r} ({', '.join(valid) or 'none'})."
                                  + _suggest("objective", key, keys))

    def spec(self) -> dict:
        """``{"name": ..., **options}``, the objective as ``make_objective`` takes it."""
        return {"name": self.name, **self.options}

    def kl_spec(self, epochs: int = 1) -> dict:
        """The KL schedule as ``KL_SCHEDULES`` takes it, over a run of ``epochs`` epochs."""
        return {"name": self.kl_schedule, "beta": self.kl_weight, "warmup": self.kl_warmup, "cycles": self.kl_cycles,
                "ratio": self.kl_ratio, "epochs": max(epochs, 1)}


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | clipped-adam | adamw (pyro_vae.train.OPTIMIZERS)
    lr: float = 1e-3
    clip_norm: float | None = None  # clip each parameter's gradient norm to this (unset: no clipping)
    # learning-rate schedule stepped once per epoch: exponential | step | cosine | plateau, by name or table,
    # e.g. [optim.lr_schedule] name = "exponential"  gamma = 0.99   (unset: constant lr)
    lr_schedule: Spec | None = None

    def check(self) -> None:
        with config_key("optim.name"):
            OPTIMIZERS[self.name]
        _require(self.lr > 0, "optim.lr", f"learning rate must be > 0, got {self.lr}")
        if self.clip_norm is not None:
            _require(self.clip_norm > 0, "optim.clip_norm", f"must be > 0, got {self.clip_norm}")
        if self.lr_schedule is not None:
            with config_key("optim.lr_schedule"):
                LR_SCHEDULES.check(self.lr_schedule)


@dataclass
class TrainConfig:
    epochs: int = 60  # the default digits run takes ~10-20 s on 2 CPU cores; at least 1
    seed: int = 0  # seeds weights, data splits, minibatches and Monte Carlo draws
    device: str = "cpu"  # "cuda", "cuda:1", "mps", "auto" (cuda if available): model and data are moved there
    val_every: int = 1  # epochs between validation ELBO / KL / reconstruction evaluations
    checkpoint_every: int = 5  # epochs between checkpoint.pt writes (0: only at the end); the last epoch always saves
    early_stopping: int | None = None  # patience: validations without improvement before stopping (unset: off)
    min_delta: float = 0.0  # improvement of the validation ELBO (nats) that resets the patience
    on_nonfinite: str = "stop"  # a NaN/Inf loss or gradient: "stop" (keep the last checkpoint) or "skip" the step
    # a finite loss that diverged, handled like a NaN (on_nonfinite): a step whose loss per data point exceeds the
    # best so far by more than this factor x max(|first loss|, |best loss|, values per point); 0 or false: off
    # (pyro_vae.step.Divergence; its default DIVERGENCE_FACTOR)
    divergence: float | bool = 1000.0

    def check(self) -> None:
        _require(self.on_nonfinite in ("stop", "skip"), "train.on_nonfinite",
                 f"must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        _require(self.divergence is not True, "train.divergence",
                 "takes a factor (a number >= 1, default 1000) or 0/false to turn the check off, got true")
        if self.divergence is not False:
            import math

            _require(self.divergence == 0 or (math.isfinite(self.divergence) and self.divergence >= 1),
                     "train.divergence", f"must be 0 or false (off) or a finite factor >= 1 (default 1000: a step "
                     f"whose loss rises 1000x the run's scale above its best is refused), got {self.divergence!r}")
        if self.early_stopping is not None:
            _require(self.early_stopping >= 1, "train.early_stopping",
                     f"patience must be >= 1 validation, got {self.early_stopping}")
        _require(self.epochs >= 1, "train.epochs", f"must be >= 1 (a run trains at least one epoch), got {self.epochs}")
        _require(self.val_every >= 1, "train.val_every", f"must be >= 1, got {self.val_every}")
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        with config_key("train.device"):
            import torch  # only to parse the name; no model or component is touched

            try:
                torch.device("cpu" if self.device == "auto" else self.device)
            except RuntimeError as err:
                raise ValueError(f"not a torch device: {self.device!r} (try 'cpu' or 'cuda')") from err


@dataclass
class OutputConfig:
    run_dir: str | None = None  # unset: runs/<source>-<prior>-<likelihood>-<timestamp>
    # TensorBoard event files in RUN_DIR/tensorboard/ (pyro_vae.tensorboard; needs the tensorboard package)
    tensorboard: bool = False
    tensorboard_every: int = 50  # the training loss is logged every this many steps

    def check(self) -> None:
        _require(self.tensorboard_every >= 1, "output.tensorboard_every",
                 f"must be >= 1 (steps between logged losses), got {self.tensorboard_every}")


@dataclass
class RunInfo:
    """Which run a run directory's files belong to: written by the run into config.toml, the checkpoint and
    each metrics line, and compared when the run is resumed or evaluated. A new run gets a new ``id``."""

    id: str | None = None
    config_hash: str | None = None  # config_hash(config) of the settings the run trained with


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "objective": ObjectiveConfig,
             "optim": OptimConfig, "train": TrainConfig, "output": OutputConfig, "run": RunInfo}
# what a run's identity leaves out: where things are and how long it trains, which a resume may change
_NOT_IDENTITY = {"output": None, "run": None, "train": ("epochs",), "data": ("data_dir", "download", "source_path")}


@dataclass
class Config:
    """A whole run: plugins, then data, model, objective, optimiser, training and output settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunInfo = field(default_factory=RunInfo)
    # modules (or .py paths) that register components, imported before the sections are checked;
    # a run stores them, so evaluate and --resume find a custom prior or model type again
    plugins: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict) -> "Config":
        """Validate a nested dict (as read from TOML); missing keys take their defaults."""
        if not isinstance(raw, dict):
            raise ConfigError(f"a config is a table of sections, got {type(raw).__name__}")
        raw = dict(raw)
        with config_key("plugins"):
            plugins = _plugins.load(raw.pop("plugins", []))  # first: they add the names the sections use
        sections = {}
        for name, value in raw.items():
            if name not in _SECTIONS:
                raise ConfigError(f"unknown section {name!r}; valid sections are {', '.join(_SECTIONS)} (and the "
                                  "top-level key plugins)." + did_you_mean(name, [*_SECTIONS, "plugins"]))
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: must be a table ([{name}]), got {_kind(value)}")
            sections[name] = _section(name, _SECTIONS[name], value)
        config = cls(**sections, plugins=plugins)
        for part in _parts(config):
            check = getattr(part, "check", None)
            if check is not None:
                check()
        return config

    def to_dict(self) -> dict:
        """Nested plain dict; unset (None) values are left out, as TOML has no null."""
        out = {"plugins": list(self.plugins)} if self.plugins else {}
        for name, part in zip(_SECTIONS, _parts(self)):
            table = {k: _plain(v) for k, v in dataclasses.asdict(part).items() if v is not None}
            extra = getattr(part, "_extra", None)
            if extra:
                table.update(table.pop(extra))
            if table or name != "run":  # a config that no run has written has no [run]
                out[name] = table
        return out

    def config_hash(self) -> str:
        """A short hash of the settings that define what the run trains: the same for a resume with more
        epochs or the data in another folder, different for any other setting."""
        raw = self.to_dict()
        for section, keys in _NOT_IDENTITY.items():
            if keys is None:
                raw.pop(section, None)
            else:
                for key in keys:
                    raw.get(section, {}).pop(key, None)
        return hashlib.sha256(json.dumps(raw, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    def to_toml(self) -> str:
        """TOML text that :func:`load_config` reads back into an equal ``Config``."""
        return _toml_document(self.to_dict())

    def save(self, path) -> Path:
        """Write the TOML file atomically (a kill mid-write leaves the previous file)."""
        return atomic_write_text(path, self.to_toml())


def _parts(config: Config) -> list:
    return [getattr(config, name) for name in _SECTIONS]


# --------------------------------------------------------------------------- reading and checking

def load_config(path) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory; pass a .toml file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    try:
        return Config.from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def apply_overrides(config: Config, overrides: dict) -> Config:
    """A new ``Config`` with dotted keys set, e.g. ``{"model.latent_dim": 4, "model.net.hidden": [400]}``.

    A key below a component given by name (``model.prior.n_components`` while
    ``prior = "mog"``) turns it into a table; setting the component itself
    (``model.prior = "vamp"``) replaces its options, and a bare section name with
    a table (``{"objective": {"name": "iwae"}}``) replaces that section. Keys
    apply in order.
    """
    raw = config.to_dict()
    for key, value in overrides.items():
        parts = key.split(".")
        if key == "plugins":
            raw["plugins"] = value
            continue
        if len(parts) < 2 and not isinstance(value, dict):  # a whole section takes a table
            raise ConfigError(f"override {key!r} must be a dotted key such as 'model.latent_dim'")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and depth == 1:  # a component given by name
                child = node[part] = {"name": child}
            elif not isinstance(child, dict):
                raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[:depth + 1])} is {_kind(child)}, not a table")
            node = child
        node[parts[-1]] = value
    return Config.from_dict(raw)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _section(name: str, cls, values: dict):
    extra = getattr(cls, "_extra", None)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != extra]
    kwargs = {extra: {}} if extra else {}
    for key, value in values.items():
        full = f"{name}.{key}"
        if extra and key not in known:  # checked against the chosen component's options later
            kwargs[extra][key] = _plain(value)
            continue
        if key not in hints:
            raise ConfigError(f"unknown key {full!r}; valid keys of [{name}] are {', '.join(known)}."
                              + _suggest(name, key, known))
        kwargs[key] = _coerce(full, value, hints[key])
    return cls(**kwargs)


def _suggest(section: str, key: str, known) -> str:
    """`` Did you mean 'model.latent_dim'?`` (matched on the bare key, shown in full)."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f" Did you mean {section + '.' + close[0]!r}?" if close else ""


def _coerce(key: str, value, hint):
    """Check ``value`` against a field type (bool, int, float, str, X | None, Spec); ints pass as floats."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    if dict in options and isinstance(value, dict):  # a component table
        if not isinstance(value.get("name"), str):
            raise ConfigError(f"{key}: a table needs a string 'name' key, e.g. {{name = \"mlp\"}}; "
                              f"got keys {sorted(value)}")
        return {k: _plain(v) for k, v in value.items()}
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        if kind is list and isinstance(value, list):
            return _plain(value)
    wanted = " or ".join(_TYPE_NAMES[k] for k in options if k is not type(None))
    raise ConfigError(f"{key}: expected {wanted}, got {_kind(value)} {value!r}")


_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a table {name = ..., options}"}


def _plain(value):
    """Tuples -> lists, recursively, so configs compare equal to what TOML reads back."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- a small TOML writer

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)  # 'inf', 'nan', '1e-05' and '0.001' are all valid TOML floats
        return text if any(c in text for c in ".eEn") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _toml_table(header: str, table: dict) -> list[str]:
    """``[header]`` with its plain keys first, then its sub-tables (TOML requires that order)."""
    lines = [f"[{header}]"]
    subtables = []
    for key, value in table.items():
        if isinstance(value, dict):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        lines += [""] + _toml_table(f"{header}.{_toml_key(key)}", value)
    return lines


def _toml_document(raw: dict) -> str:
    lines = ["# pyro-vae run configuration (see pyro_vae/config.py for every key and default)"]
    top = {k: v for k, v in raw.items() if not isinstance(v, dict)}  # TOML: top-level keys before any table
    if top:
        lines += [""] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in top.items()]
    for name, table in raw.items():
        if isinstance(table, dict):
            lines += [""] + _toml_table(name, table)
    return "\n".join(lines) + "\n"
