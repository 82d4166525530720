"""What a training run writes: metrics lines, checkpoint cadence, ``best.pt``, the interrupt save, figures.

One :class:`RunRecorder` per run, a :class:`~pyro_vae.train.Callback` of
``fit``. After each completed epoch it keeps that epoch's state in memory first
(one assignment, together with the metrics lines up to it), then writes
``metrics.jsonl`` (whole, atomically), ``best.pt`` on an improvement and
``checkpoint.pt`` every ``checkpoint_every`` epochs. However training ends
(finished, stopped early, Ctrl-C or SIGTERM at any moment, a stop request,
divergence), the epoch kept in memory is the last completed one, and it is what
``checkpoint.pt`` holds afterwards; ``metrics.jsonl`` then agrees with it, so
``--resume`` continues exactly where an uninterrupted run would be.

Reported log-densities (``train_elbo``, ``val_elbo``, ``recon``) are in the
user's units: the run's ``log_jacobian`` (:func:`~pyro_vae.evaluate.data_units`)
is added to the model's values, and written beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import plots
from ._io import atomic_write_text
from .checkpoint import BEST, CHECKPOINT, CONFIG, save_checkpoint
from .config import Config
from .evaluate import elbo_decomposition
from .importance import Evaluator
from .models.base import Unsupported
from .train import Callback, TrainingDivergedError, TrainState

__all__ = ["RunRecorder", "ElboTerms", "TrainingInterrupted", "write_figures", "METRICS", "METRIC_KEYS",
           "LOG_DENSITY_KEYS"]

METRICS = "metrics.jsonl"
METRIC_KEYS = ("epoch", "train_elbo", "val_elbo", "kl", "recon", "seconds")
LOG_DENSITY_KEYS = ("train_elbo", "val_elbo", "recon")  # log-densities of x: shifted to the user's units


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM from the CLI) during a run, after the last completed epoch was saved.

    Attributes:
        run_dir: the run directory.
        epoch: the epoch now in ``checkpoint.pt`` (``None``: no epoch had completed, nothing to resume).
    """

    def __init__(self, run_dir: Path, epoch: int | None):
        self.run_dir, self.epoch = run_dir, epoch
        if epoch is None:
            text = f"interrupted before the first epoch completed; {run_dir} holds no checkpoint to resume"
        else:
            text = (f"interrupted; {run_dir / CHECKPOINT} holds epoch {epoch}: continue with "
                    f"`pyro-vae train --resume {run_dir}`")
        super().__init__(text)


class ElboTerms(Callback):
    """On validation epochs, the KL and reconstruction split of the validation ELBO and the active units.

    Defined for models whose latent sites are all per data point (importance
    weights per point); for others (the grouped model's shared offsets) it adds nothing.
    Draws come from seeded noise streams, so the values do not depend on the training RNG.
    """

    def __init__(self, model, val_inputs: tuple | None, seed: int):
        self.val, self.seed = val_inputs, seed
        if val_inputs is not None:
            try:
                Evaluator(model, tuple(t[:2] for t in val_inputs), seed)
            except Unsupported:
                self.val = None

    def on_validation(self, model, record: dict) -> None:
        if self.val is None:
            return
        terms = elbo_decomposition(model, self.val, num_samples=1, seed=self.seed)
        record.update(kl=terms.kl, recon=terms.recon, active_units=terms.active_units)


@dataclass(frozen=True)
class _Kept:
    """A completed epoch as the recorder keeps it: its state and the metrics lines up to it."""

    state: TrainState
    lines: tuple


class RunRecorder(Callback):
    """Owns a run directory's files while training (see the module docstring).

    Args:
        run_dir: the run directory.
        info: what every checkpoint holds besides the training state (format, data_shape,
            config, preprocess, versions).
        checkpoint_every: epochs between ``checkpoint.pt`` writes (0: only at the end).
        log_jacobian: added to the log-densities written (the user's units).
        saved_epoch: the epoch ``checkpoint.pt`` holds already (a resumed run), or ``None``.
        epochs: the run's total, for the progress bar; ``progress``: show one.
    """

    def __init__(self, run_dir, info: dict, *, checkpoint_every: int, log_jacobian: float = 0.0,
                 saved_epoch: int | None = None, epochs: int = 0, progress: bool = False):
        self.run_dir, self.info, self.every = Path(run_dir), info, int(checkpoint_every)
        self.log_jacobian, self.saved_epoch = float(log_jacobian), saved_epoch
        self.kept: _Kept | None = None
        self._lines = tuple(_kept_lines(self.run_dir / METRICS, saved_epoch or 0))
        self._bar = tqdm(total=epochs, initial=saved_epoch or 0, desc="epochs", unit="epoch", leave=False,
                         disable=not progress)

    # ----------------------------------------------------------------- the run directory
    def open(self, config: Config) -> None:
        """Create the run directory with ``config.toml`` (and the metrics a resumed run keeps)."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.run_dir / CONFIG)
        except OSError as err:
            raise OSError(f"cannot write the run directory {str(self.run_dir)!r} ({err.strerror or err}); choose "
                          "a writable place with --out (output.run_dir)") from err
        if self.saved_epoch is not None:
            atomic_write_text(self.run_dir / METRICS, "".join(self._lines))

    @property
    def records(self) -> list[dict]:
        """The metrics lines written so far (user units), as dicts."""
        lines = self.kept.lines if self.kept is not None else self._lines
        return [json.loads(line) for line in lines]

    # ----------------------------------------------------------------- fit's callback
    def on_epoch_end(self, state: TrainState, record: dict) -> None:
        line = json.dumps(self._line(record)) + "\n"
        previous = self.kept.lines if self.kept is not None else self._lines
        self.kept = _Kept(state, (*previous, line))  # the new epoch replaces the old in one step, complete
        atomic_write_text(self.run_dir / METRICS, "".join(self.kept.lines))  # whole lines, even if killed
        if record.get("best"):
            save_checkpoint(self.run_dir / BEST, self._payload(state))
        if self.every and state.epoch % self.every == 0:
            self._save(self.kept)
        self._bar.update(1)
        self._bar.set_postfix({k: f"{v:.2f}" for k, v in self._line(record).items()
                               if k.endswith("elbo") and v is not None})

    def _line(self, record: dict) -> dict:
        """The record's numbers: METRIC_KEYS always (None when not computed this epoch), then any others."""
        line = {k: record.get(k) for k in METRIC_KEYS}
        line.update((k, v) for k, v in record.items() if k not in line and isinstance(v, (int, float)))
        for key in LOG_DENSITY_KEYS:
            if line.get(key) is not None:
                line[key] += self.log_jacobian
        line["log_jacobian"] = self.log_jacobian
        return line

    def _payload(self, state: TrainState) -> dict:
        return {**state.to_payload(), **self.info}

    def _save(self, kept: _Kept) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, self._payload(kept.state))
        self.saved_epoch = kept.state.epoch

    # ----------------------------------------------------------------- however training ended
    def save_latest(self) -> int | None:
        """Save the last completed epoch if ``checkpoint.pt`` does not hold it yet; returns the epoch saved there."""
        kept = self.kept
        if kept is not None and kept.state.epoch != self.saved_epoch:
            atomic_write_text(self.run_dir / METRICS, "".join(kept.lines))
            self._save(kept)
        return self.saved_epoch

    def interrupted(self) -> TrainingInterrupted:
        """After Ctrl-C, SIGTERM or a stop request: the last completed epoch saved, and the exception to raise."""
        self._bar.close()
        return TrainingInterrupted(self.run_dir, self.save_latest())

    def diverged(self, err: TrainingDivergedError) -> TrainingDivergedError:
        """After a NaN/Inf step: nothing of that step is saved; the message says what the checkpoint holds."""
        self._bar.close()
        kept = (f"{self.run_dir / CHECKPOINT} still holds epoch {self.saved_epoch}"
                if self.saved_epoch is not None else "no checkpoint had been written yet")
        return TrainingDivergedError(f"{err} Nothing was saved from the diverged step: {kept}.", err.epoch, err.step)

    def finish(self, model, splits, inputs: dict) -> dict:
        """The final epoch saved, then the figures and the model's own artefacts; returns ``{name: path}``."""
        self._bar.close()
        self.save_latest()
        files = {"config": self.run_dir / CONFIG, "metrics": self.run_dir / METRICS,
                 "checkpoint": self.run_dir / CHECKPOINT}
        if (self.run_dir / BEST).exists():
            files["best"] = self.run_dir / BEST
        files.update(write_figures(model, splits, self.records, self.run_dir))
        files.update(model.artifacts(self.run_dir, splits, inputs))
        return files


def _kept_lines(path: Path, epoch: int) -> list[str]:
    """The metrics lines up to ``epoch`` (a resumed run's checkpoint); a line cut short by a kill is dropped."""
    if not epoch or not path.exists():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the process died while writing this line
            continue
        if record.get("epoch", epoch + 1) <= epoch:
            kept.append(line + "\n")
    return kept


# --------------------------------------------------------------------------- figures

def write_figures(model, splits, history: list, run_dir) -> dict:
    """ELBO curves, then what the model defines of: reconstructions, samples, latent map, interpolations.

    Held-out data (test, else validation, else training) with their labels; a
    figure whose operation the model type does not define (:class:`Unsupported`) is left out.
    """
    run_dir = Path(run_dir)
    x, labels = next(((getattr(splits, s), getattr(splits, f"{s}_labels")) for s in ("test", "val", "train")
                      if len(getattr(splits, s))))
    files = {"elbo": plots.plot_history(history, run_dir / "elbo.png")}

    def figure(name, make):
        try:
            files[name] = make()
        except Unsupported:
            pass

    width = min(8, len(x))
    originals = x[:min(32, len(x)) // width * width]  # whole rows only, so pairs line up
    shown_labels = None if labels is None else labels[:len(originals)]
    figure("reconstructions", lambda: plots.save_image_grid(
        _viewable(_interleave_rows(originals, model.reconstruct(originals, shown_labels).cpu(), width)),
        run_dir / "reconstructions.png", nrow=width))

    def samples():
        grid = model.sample_grid(64)
        return plots.save_image_grid(_viewable(grid.images.cpu()), run_dir / "samples.png", nrow=grid.nrow)

    figure("samples", samples)
    n = min(len(x), 2000)
    try:
        z = model.posterior_mean(x[:n], None if labels is None else labels[:n]).cpu()
    except Unsupported:
        return files
    files["latent"] = plots.plot_latent_map(z, None if labels is None else labels[:n], run_dir / "latent.png")

    def interpolation():
        if n >= 2:
            k = min(6, n // 2)
            images = plots.interpolation_grid(model.decode, z[:k], z[k:2 * k], steps=10)
        else:
            images = plots.traversal_grid(model.decode, z[0])
        return plots.save_image_grid(_viewable(images.cpu()), run_dir / "interpolation.png", nrow=10)

    figure("interpolation", interpolation)
    return files


def _viewable(images: torch.Tensor, min_size: int = 32) -> torch.Tensor:
    """Tiny images ``[N, C, H, W]`` (8x8 digits) enlarged by pixel repetition so a grid is legible."""
    if images.dim() != 4 or max(images.shape[-2:]) >= min_size:
        return images
    return torch.nn.functional.interpolate(images, scale_factor=-(-min_size // max(images.shape[-2:])),
                                           mode="nearest")


def _interleave_rows(a: torch.Tensor, b: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of ``width`` items alternating between ``a`` and ``b``: a[0:w], b[0:w], a[w:2w], ..."""
    out = []
    for start in range(0, len(a), width):
        out += [a[start:start + width], b[start:start + width]]
    return torch.cat(out)
