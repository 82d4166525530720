"""TensorBoard logging of training: a :class:`~pyro_vae.train.Callback` that writes event files.

``pyro-vae train --tensorboard`` (``output.tensorboard = true``) logs to ``RUN_DIR/tensorboard/``;
from Python, ``fit(..., callbacks=[TensorBoardLogger("logs/run")])``. What it writes::

    elbo/train, elbo/val, kl/val, recon/val, active_units/val   each epoch: the numbers of metrics.jsonl, in the
    schedule/kl_weight, schedule/lr, time/epoch_seconds, epoch  data's units (``log_jacobian`` added)
    loss/step                                                  every ``every`` steps: -ELBO per data point
    images/reconstructions, images/samples                     at each validation, for image data
    config/text_summary, hparams                               the resolved config: its TOML at each start, and
                                                               the keys defining the run, flattened (model.net.hidden)

Every value sits on one axis, the optimisation step: the steps whose update was applied, so the
``k``-th loss of ``TrainState.step_losses`` is step ``k`` (steps that ``on_nonfinite = "skip"`` dropped are
not counted), and an epoch's values sit at its last step. One axis is what lets a resumed run continue the
curves without duplicates: its writer purges (``purge_step``) whatever an interrupted process had logged
after the checkpoint it resumes from. TensorBoard stores scalars as float32.

Drawing the grids happens in :meth:`TensorBoardLogger.on_validation`, where ``fit`` has forked the RNG,
with a fixed seed for the samples: logging changes nothing the run computes, and the sample grid shows
the same latent draws at every validation. ``tensorboard`` is an optional dependency: without it,
:func:`require` (and the logger) raise :class:`TensorBoardMissing` naming the install command.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .config import _NOT_IDENTITY, Config, ConfigError, _toml_value
from .models.base import Unsupported
from .train import Callback, TrainState

__all__ = ["TensorBoardLogger", "TensorBoardMissing", "require", "LOG_DIR", "INSTALL", "SCALAR_TAGS"]

LOG_DIR = "tensorboard"  # a run's event files: RUN_DIR/tensorboard/
INSTALL = 'pip install "pyro-vae[tensorboard]"'
# metrics-line key -> tag; other numbers an epoch's record holds are logged as metrics/KEY
SCALAR_TAGS = {"train_elbo": "elbo/train", "val_elbo": "elbo/val", "kl": "kl/val", "recon": "recon/val",
               "active_units": "active_units/val", "kl_weight": "schedule/kl_weight", "lr": "schedule/lr",
               "seconds": "time/epoch_seconds", "skipped_steps": "steps/skipped", "epoch": "epoch"}
_LOG_DENSITIES = ("train_elbo", "val_elbo", "recon")  # as artifacts.LOG_DENSITY_KEYS: shifted to the data's units
_MIN_TILE = 32  # tiles under this many pixels are enlarged, as in the run's figures


class TensorBoardMissing(ConfigError, ImportError):
    """TensorBoard logging was asked for but the ``tensorboard`` package is not installed."""


def require():
    """torch's ``SummaryWriter`` class; :class:`TensorBoardMissing` (one line, the install command) without
    the ``tensorboard`` package. A run calls it before it writes anything."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardMissing(f"TensorBoard logging (--tensorboard, output.tensorboard) needs the tensorboard "
                                 f"package, which is not installed: {INSTALL} (or pip install tensorboard)") from None
    return SummaryWriter


def _on_cpu(value):
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def flat_config(config) -> dict:
    """A config (:class:`~pyro_vae.config.Config` or nested dict) as ``{"model.net.hidden": "[16]", ...}``:
    numbers and strings as they are, booleans and lists in TOML spelling (what HParams shows).

    Of a ``Config``, the keys a resume may change (``train.epochs``, ``output``, where the data are: what
    its identity hash leaves out) are left out, as TensorBoard keeps a run's first hyperparameters; its
    ``[run]`` identity stays.
    """
    raw = config.to_dict() if isinstance(config, Config) else dict(config)
    if isinstance(config, Config):
        for section, keys in _NOT_IDENTITY.items():
            if section != "run":
                for key in keys or list(raw.get(section, {})):
                    raw.get(section, {}).pop(key, None)
        raw = {section: table for section, table in raw.items() if table != {}}
    flat = {}

    def walk(prefix, node):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}.", value)
            elif value is not None:
                plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
                flat[name] = value if plain else _toml_value(value)

    walk("", raw)
    return flat


class TensorBoardLogger(Callback):
    """Logs a run to TensorBoard event files in ``log_dir`` (see the module docstring for what and where).

    Args:
        log_dir: the directory of the event files (created on the first completed epoch).
        every: steps between logged training losses (``loss/step``).
        log_jacobian: added to the log-densities (``elbo/*``, ``recon/val``) and subtracted from the loss,
            so the numbers are those of ``metrics.jsonl`` (a run's :func:`~pyro_vae.evaluate.data_units`).
        config: a :class:`~pyro_vae.config.Config` or nested dict, logged as text and as hyperparameters.
        images, labels: data points ``[N, *data_shape]`` (and their labels, for models whose decoder takes
            one) whose reconstructions are shown at each validation: the first up to 32, in rows of 8.
        samples: a grid of this many draws (``model.sample_grid``) at each validation; 0: none. Grids are
            drawn only for image-shaped data (``[C, H, W]`` with C in {1, 3}, or ``[H, W]``).
        seed: the seed of the sample draws, the same at every validation.
        resume_from: the :class:`~pyro_vae.train.TrainState` that ``fit`` resumes from, so the step numbering
            continues and events logged after it (by an interrupted process) are purged.

    Call :meth:`close` when training ends (or use the logger as a context manager); every epoch is flushed.
    """

    def __init__(self, log_dir, *, every: int = 50, log_jacobian: float = 0.0, config=None, images=None,
                 labels=None, samples: int = 64, seed: int = 0, resume_from: TrainState | None = None):
        if int(every) < 1:
            raise ValueError(f"every must be >= 1 (steps between logged losses), got {every}")
        if int(samples) < 0:
            raise ValueError(f"samples must be >= 0 (0: no sample grid), got {samples}")
        self._writer_class = require()  # refused here, before anything is written
        self.log_dir, self.every, self.log_jacobian = Path(log_dir), int(every), float(log_jacobian)
        self.config, self.images, self.labels = config, _on_cpu(images), _on_cpu(labels)  # as the figures' are
        self.samples, self.seed = int(samples), int(seed)
        self._logged = len(resume_from.step_losses) if resume_from is not None else 0  # losses seen so far
        self._purge = self._logged + 1 if resume_from is not None else None
        self._writer = None
        self._grids: dict = {}  # tag -> uint8 [C, H, W], drawn at validation, written with the epoch
        self._off: set = set()  # grids the model type does not define

    # ----------------------------------------------------------------- fit's callback
    def on_validation(self, model, record: dict) -> None:
        from .artifacts import reconstruction_rows
        from .plots import figure_kind, image_grid

        if figure_kind(model.data_shape) != "image":
            return
        with torch.no_grad():
            if self.images is not None and len(self.images) and "reconstructions" not in self._off:
                grid = self._grid("reconstructions", lambda: reconstruction_rows(model, self.images, self.labels))
                if grid is not None:
                    self._grids["images/reconstructions"] = image_grid(grid[0], grid[1], min_size=_MIN_TILE)
            if self.samples and "samples" not in self._off:
                device = model.device  # fit forks the RNG around this hook already; the fork keeps the seed here
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(self.seed)
                    grid = self._grid("samples", lambda: model.sample_grid(self.samples))
                if grid is not None:
                    self._grids["images/samples"] = image_grid(grid.images.cpu(), grid.nrow, min_size=_MIN_TILE)

    def on_epoch_end(self, state: TrainState, record: dict) -> None:
        writer = self._open()
        losses, step = state.step_losses, len(state.step_losses)
        first = (self._logged // self.every + 1) * self.every  # the first multiple of every not logged yet
        for k in range(first, step + 1, self.every):
            writer.add_scalar("loss/step", losses[k - 1] - self.log_jacobian, k)
        self._logged = step
        for key, value in record.items():
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key in _LOG_DENSITIES:
                value = value + self.log_jacobian
            writer.add_scalar(SCALAR_TAGS.get(key, f"metrics/{key}"), value, step)
        for tag, pixels in self._grids.items():
            writer.add_image(tag, pixels, step, dataformats="CHW")
        self._grids.clear()
        writer.flush()

    # ----------------------------------------------------------------- the event files
    def close(self) -> None:
        """Flush and close the event file (nothing to do if no epoch was logged)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self):
        """The writer, opened on the first completed epoch: the purge of a resumed run's later events, the
        train/val ELBO chart, and the config (text at this process's first step; hyperparameters once per
        log directory, as TensorBoard shows only the first)."""
        if self._writer is not None:
            return self._writer
        fresh = not any(self.log_dir.glob("events.out.tfevents.*"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        writer = self._writer = self._writer_class(str(self.log_dir), purge_step=self._purge)
        from torch.utils.tensorboard.summary import custom_scalars, hparams

        writer.file_writer.add_summary(custom_scalars(
            {"ELBO": {"train and validation (nats per data point)": ["Multiline", ["elbo/train", "elbo/val"]]}}))
        if self.config is not None:
            flat = flat_config(self.config)
            text = self.config.to_toml() if isinstance(self.config, Config) else "\n".join(
                f"{k} = {json.dumps(v) if isinstance(v, str) else v}" for k, v in flat.items())
            writer.add_text("config", f"```toml\n{text}\n```", self._purge or 0)
            if fresh:
                for summary in hparams(flat, {"elbo/val": None, "elbo/train": None}):
                    writer.file_writer.add_summary(summary)
        return writer

    def _grid(self, name: str, make):
        """``make()``, or ``None`` (with one warning, and never again) where the model type does not define it."""
        try:
            return make()
        except Unsupported as err:
            self._off.add(name)
            warnings.warn(f"TensorBoard: no {name} grid: not defined for this model type: {err}", UserWarning,
                          stacklevel=3)
            return None
