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
from ._io import RunInUse, RunLock, atomic_write_text
from .checkpoint import BEST, CHECKPOINT, CONFIG, save_checkpoint
from .config import Config
from .evaluate import elbo_decomposition
from .importance import Evaluator
from .models.base import Unsupported
from .sources import is_source
from .train import Callback, TrainingDivergedError, TrainState

__all__ = ["RunRecorder", "ElboTerms", "TrainingInterrupted", "write_figures", "plan_figures", "FigurePlan",
           "FIGURES", "METRICS", "METRIC_KEYS", "LOG_DENSITY_KEYS"]

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
            config with the run's identity in its ``[run]``, preprocess, versions).
        checkpoint_every: epochs between ``checkpoint.pt`` writes (0: only at the end).
        log_jacobian: added to the log-densities written (the user's units).
        saved_epoch: the epoch ``checkpoint.pt`` holds already (a resumed run), or ``None``.
        epochs: the run's total, for the progress bar; ``progress``: show one.
    """

    def __init__(self, run_dir, info: dict, *, checkpoint_every: int, log_jacobian: float = 0.0,
                 saved_epoch: int | None = None, epochs: int = 0, progress: bool = False):
        self.run_dir, self.info, self.every = Path(run_dir), info, int(checkpoint_every)
        self.log_jacobian, self.saved_epoch = float(log_jacobian), saved_epoch
        self.run_id = info.get("config", {}).get("run", {}).get("id")
        self.kept: _Kept | None = None
        self._lines = tuple(_kept_lines(self.run_dir / METRICS, saved_epoch or 0, self.run_id))
        self._lock = RunLock(self.run_dir)
        self._bar = tqdm(total=epochs, initial=saved_epoch or 0, desc="epochs", unit="epoch", leave=False,
                         disable=not progress)

    # ----------------------------------------------------------------- the run directory
    def open(self, config: Config, command: str = "pyro-vae train") -> None:
        """Lock the run directory for this process (:class:`~pyro_vae._io.RunLock`; another process training
        into it is refused, naming it), then write ``config.toml`` (and the metrics a resumed run keeps).
        :meth:`close` releases the lock."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(command)
        except RunInUse:
            raise
        except OSError as err:
            raise OSError(f"cannot write the run directory {str(self.run_dir)!r} ({err.strerror or err}); choose "
                          "a writable place with --out (output.run_dir)") from err
        if self.saved_epoch is None and (self.run_dir / CHECKPOINT).exists():  # a run finished there meanwhile
            self.close()
            raise FileExistsError(f"{self.run_dir} already holds a run ({CHECKPOINT}); choose another directory "
                                  "with --out (or output.run_dir) so it is not overwritten")
        config.save(self.run_dir / CONFIG)
        if self.saved_epoch is not None:
            atomic_write_text(self.run_dir / METRICS, "".join(self._lines))

    def close(self) -> None:
        """Release the run directory (however training ended)."""
        self._bar.close()
        self._lock.release()

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
        if self.run_id is not None:
            line["run_id"] = self.run_id
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

    def finish(self, model, splits, inputs: dict, figures: FigurePlan | None = None) -> dict:
        """The final epoch saved, then the figures (``figures``: the plan made before training, default
        :func:`plan_figures` of the data's shape) and the model's own artefacts; returns ``{name: path}``."""
        self._bar.close()
        self.save_latest()
        files = {"config": self.run_dir / CONFIG, "metrics": self.run_dir / METRICS,
                 "checkpoint": self.run_dir / CHECKPOINT}
        if (self.run_dir / BEST).exists():
            files["best"] = self.run_dir / BEST
        files.update(write_figures(model, splits, self.records, self.run_dir, figures))
        files.update(model.artifacts(self.run_dir, splits, inputs))
        return files


def _kept_lines(path: Path, epoch: int, run_id: str | None = None) -> list[str]:
    """The metrics lines up to ``epoch`` (a resumed run's checkpoint); a line cut short by a kill is dropped,
    and lines written by another run (a different ``run_id``) are refused."""
    if not epoch or not path.exists():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the process died while writing this line
            continue
        other = record.get("run_id")
        if run_id is not None and other is not None and other != run_id:
            raise ValueError(f"{path}: its lines belong to run {other}, but {path.parent / CHECKPOINT} to run "
                             f"{run_id}: the files of two runs were mixed; put back this run's own metrics.jsonl "
                             "(or remove it) to resume")
        if record.get("epoch", epoch + 1) <= epoch:
            kept.append(line + "\n")
    return kept


# --------------------------------------------------------------------------- figures

FIGURES = ("elbo", "reconstructions", "samples", "latent", "interpolation")  # each written as NAME.png
FIGURE_NOTE = "figures.txt"  # the figures left out of a run, and why (written only when some were)
_PICTURES = ("reconstructions", "samples", "interpolation")  # figures that draw data points


@dataclass(frozen=True)
class FigurePlan:
    """The figures a run writes, chosen from the shape of one data point before training (:func:`plan_figures`).

    ``kind``: how a data point is drawn (:func:`pyro_vae.plots.figure_kind`): ``"image"`` grids, ``"features"``
    heat maps, or ``None`` (no picture: only the ELBO curves and the latent map); ``figures``: the names
    written (``NAME.png``), in order; ``skipped``: ``(name, reason)`` for each figure left out. A figure whose
    operation the model type does not define (:class:`Unsupported`) is left out when it is drawn, with its reason.
    """

    data_shape: tuple[int, ...]
    kind: str | None
    figures: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def note(self, skipped=None) -> str:
        """The text of ``figures.txt``: the figures written, then those left out (default ``skipped``) and why."""
        skipped = list(self.skipped if skipped is None else skipped)
        left_out = {name for name, _ in skipped}
        written = [f"{name}.png" for name in self.figures if name not in left_out]
        lines = [f"figures of data points of shape {list(self.data_shape)}",
                 f"written: {', '.join(written) or 'none'}"]
        by_reason: dict = {}
        for name, reason in skipped:
            by_reason.setdefault(reason, []).append(f"{name}.png")
        lines += [f"left out: {', '.join(names)}: {reason}" for reason, names in by_reason.items()]
        return "\n".join(lines) + "\n"


def plan_figures(data_shape) -> FigurePlan:
    """Which figures a run on data points of shape ``data_shape`` writes; needs nothing but the shape, so a
    run decides it before training and a finished run never fails on a figure its data cannot show.

    ``[C, H, W]`` with C in {1, 3} and ``[H, W]``: image grids; ``[D]``: per-feature heat maps; any other
    shape: ``elbo.png`` and ``latent.png`` only, the others named in the note with the reason.
    """
    shape = tuple(int(s) for s in data_shape)
    kind = plots.figure_kind(shape)
    if kind is not None:
        return FigurePlan(shape, kind, FIGURES)
    reason = (f"data points of shape {list(shape)} are neither images ({plots.IMAGE_SHAPES}) nor vectors [D], "
              "so there is no picture of one to draw (`pyro-vae sample RUN --out FILE.npy` writes samples as an "
              "array)")
    return FigurePlan(shape, None, tuple(f for f in FIGURES if f not in _PICTURES),
                      tuple((f, reason) for f in _PICTURES))


def write_figures(model, splits, history: list, run_dir, plan: FigurePlan | None = None) -> dict:
    """ELBO curves, then what the plan and the model define of: reconstructions, samples, latent map, interpolations.

    ``plan``: the figures chosen before training (default: :func:`plan_figures` of the data's shape).
    Held-out data (test, else validation, else training) with their labels. Images are enlarged to be
    legible and framed by a title and a label per row (data or reconstruction, the class of a row of
    samples, the endpoints of an interpolation); vectors are heat maps with labelled blocks of rows, on a
    log colour scale for counts. Each figure left out, by the plan or because the model type does not
    define its operation (:class:`Unsupported`), is named with the reason in ``figures.txt``.
    """
    run_dir = Path(run_dir)
    plan = plan_figures(splits.data_shape) if plan is None else plan
    split, x, labels = held_out(splits)
    files = {"elbo": plots.plot_history(history, run_dir / "elbo.png")}
    skipped = list(plan.skipped)
    counts = plan.kind == "features" and plots.looks_like_counts(x)

    def draw(images, name, nrow, title, row_labels):
        path, images = run_dir / f"{name}.png", images.cpu()
        if plan.kind == "image":
            return plots.save_image_grid(images, path, nrow=nrow, min_size=32, title=title, row_labels=row_labels)
        return plots.plot_feature_rows(images.reshape(len(images), -1), path, block=nrow, block_labels=row_labels,
                                       title=title, log=counts)

    def figure(name, make):
        if name not in plan.figures:
            return
        try:
            files[name] = make()
        except Unsupported as err:
            skipped.append((name, f"not defined for this model type: {err}"))

    def reconstructions():
        images, width, rows = reconstruction_rows(model, x, labels)
        return draw(images, "reconstructions", width, f"{split} data and their reconstructions", rows)

    def samples():
        grid = model.sample_grid(64)
        title = "samples: E[x | z], z ~ p(z)" if grid.row_labels is None else "samples, a row per label"
        return draw(grid.images, "samples", grid.nrow, title, grid.row_labels)

    figure("reconstructions", reconstructions)
    figure("samples", samples)
    n = min(len(x), 2000)
    shown = None if labels is None else labels[:n]
    try:
        z = model.posterior_mean(x[:n], shown).cpu()
    except Unsupported as err:
        skipped += [(f, f"not defined for this model type: {err}") for f in ("latent", "interpolation")
                    if f in plan.figures]
        return _noted(files, plan, skipped, run_dir)
    if "latent" in plan.figures:
        files["latent"] = plots.plot_latent_map(z, shown, run_dir / "latent.png")

    def interpolation():
        by_label = _decoder_takes_labels(model)
        if by_label and shown is None:
            raise Unsupported("its decoder takes each point's label, and these data have none")
        pairs = _interpolation_pairs(n, shown if by_label else None)
        if pairs is None:  # a single point (or no class with two): sweep each latent dimension around it
            decode = model.decode
            if by_label:
                decode = lambda codes: model.decode(codes, shown[:1].expand(len(codes)))  # noqa: E731
            rows = [f"z{i + 1}" for i in range(min(z.shape[1], 10))]  # traversal_grid's default dims
            return draw(plots.traversal_grid(decode, z[0], steps=9), "interpolation", 9,
                        f"each z_i from -3 to 3 around a {split} point's E_q[z | x]", rows)
        starts, ends = pairs
        if by_label:
            row_context = shown[starts]
            decode = lambda codes: model.decode(codes, row_context.repeat_interleave(10))  # noqa: E731
            rows = [f"class {int(c)}" for c in row_context]
        else:
            decode = model.decode
            rows = [f"{int(shown[i])} \u2192 {int(shown[j])}" if shown is not None else f"#{i} \u2192 #{j}"
                    for i, j in zip(starts, ends)]
        ends_at = "(left) to another's (right)" if plan.kind == "image" else "(top row) to another's (bottom row)"
        title = f"from one {split} point's E_q[z | x] {ends_at}"
        if by_label:
            title += "\nof its class, decoded with it"
        return draw(plots.interpolation_grid(decode, z[starts], z[ends], steps=10), "interpolation", 10, title, rows)

    figure("interpolation", interpolation)
    return _noted(files, plan, skipped, run_dir)


def held_out(splits) -> tuple:
    """``(split, x, labels)``: the data figures show, the test split, else the validation, else the training one
    (of a streamed split, its first 2000 points, the most a figure shows, read once as a tensor)."""
    split, x, labels = next(((s, getattr(splits, s), getattr(splits, f"{s}_labels")) for s in ("test", "val", "train")
                             if len(getattr(splits, s))))
    if is_source(x):
        x = x[:min(len(x), 2000)]
        labels = None if labels is None else labels[:len(x)]
    return split, x, labels


def reconstruction_rows(model, x, labels=None, most: int = 32) -> tuple[torch.Tensor, int, list[str]]:
    """``(images, width, row_labels)``: up to ``most`` points of ``x`` in whole rows of 8 (fewer for fewer
    points), each row followed by its reconstructions (``model.reconstruct``), as ``reconstructions.png``
    and the TensorBoard log show them."""
    width = min(8, len(x))
    originals = x[:min(most, len(x)) // width * width]  # whole rows only, so pairs line up
    shown = None if labels is None else labels[:len(originals)]
    rows = []
    for start in range(0, len(originals), width):
        items = f"{start + 1}-{start + width}" if width > 1 else f"{start + 1}"
        rows += [f"data {items}", f"reconstruction {items}"]
    return _interleave_rows(originals, model.reconstruct(originals, shown).cpu(), width), width, rows


def _noted(files: dict, plan: FigurePlan, skipped: list, run_dir: Path) -> dict:
    """``figures.txt`` naming the figures left out and why, where any were (a stale one removed)."""
    note = run_dir / FIGURE_NOTE
    if skipped:
        files["figures"] = atomic_write_text(note, plan.note(skipped))
    else:
        note.unlink(missing_ok=True)
    return files


def _decoder_takes_labels(model) -> bool:
    """Whether the model decodes ``z`` together with a label (M2's ``y``, the CVAE's ``c``): its
    ``decoder_context`` refuses to go without one."""
    try:
        model.decoder_context()
    except Unsupported:
        return True
    return False


def _interpolation_pairs(n: int, labels: torch.Tensor | None, k: int = 6):
    """``(starts, ends)``: indices of up to ``k`` pairs of points to interpolate between, or ``None`` if
    there is no pair. With ``labels`` (a decoder that takes the label), both points of a pair share a class:
    the first two points of each class."""
    if labels is None:
        k = min(k, n // 2)
        return (list(range(k)), list(range(k, 2 * k))) if k else None
    starts, ends = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero()[:, 0].tolist()
        if len(idx) >= 2 and len(starts) < k:
            starts.append(idx[0])
            ends.append(idx[1])
    return (starts, ends) if starts else None


def _interleave_rows(a: torch.Tensor, b: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of ``width`` items alternating between ``a`` and ``b``: a[0:w], b[0:w], a[w:2w], ..."""
    out = []
    for start in range(0, len(a), width):
        out += [a[start:start + width], b[start:start + width]]
    return torch.cat(out)
