"""A training run end to end: config -> data -> VAE -> fit -> run directory.

``train_run(config)`` writes into ``config.output.run_dir`` (default
``runs/<source>-<prior>-<likelihood>-<timestamp>``)::

    config.toml     the resolved config; `pyro-vae train --config` on it repeats the run
    checkpoint.pt   weights, optimiser and RNG state, history (see pyro_vae.checkpoint): the last saved epoch
    best.pt         the same at the best validation ELBO (with early stopping)
    metrics.jsonl   one JSON object per epoch: epoch, train_elbo, val_elbo, kl, recon, seconds (+ lr, ...)
    elbo.png, reconstructions.png, samples.png, latent.png, interpolation.png

The CLI (``pyro_vae.cli``) only parses flags and prints; everything it runs is here.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import pyro
import torch

from . import distributed, plots
from ._io import atomic_write_text
from .checkpoint import BEST, CHECKPOINT, CONFIG, FORMAT, load_run, save_checkpoint, versions
from .config import Config, DataConfig, OutputConfig, apply_overrides, config_key
from .hierarchical import SSVAE
from .hierarchical.registry import complete_options, model_data, sample_grid
from .model import VAE
from .data import DataSplits, load_dataset, load_file
from .evaluate import elbo, elbo_decomposition
from .objectives import objective_for
from .train import EarlyStopping, TrainingDivergedError, fit, rng_state

__all__ = ["RunResult", "TrainingInterrupted", "train_run", "resume_run", "evaluate_run", "load_splits",
           "Preprocessing", "fit_preprocessing", "load_data_file", "write_figures", "default_run_dir",
           "resolve_device", "METRICS", "METRIC_KEYS"]

METRICS = "metrics.jsonl"
METRIC_KEYS = ("epoch", "train_elbo", "val_elbo", "kl", "recon", "seconds")


class RunResult(NamedTuple):
    """What :func:`train_run` returns: the run directory, resolved config, fitted VAE, data, history, files."""

    run_dir: Path
    config: Config
    vae: torch.nn.Module
    splits: DataSplits
    history: list
    files: dict  # artefact name -> Path


# --------------------------------------------------------------------------- data

def load_splits(data: DataConfig, seed: int, preprocess: str | None = None) -> DataSplits:
    """The train/val/test splits a run uses (the split permutation is seeded by ``train.seed``)."""
    return load_dataset(data.source, data_dir=data.data_dir, download=data.download,
                        preprocess=data.preprocess if preprocess is None else preprocess,
                        val_fraction=data.val_fraction, test_fraction=data.test_fraction, seed=seed)


@dataclass
class Preprocessing:
    """Raw data -> model input: ``(x - shift) / scale``, then clamped to [0, 1] and constant features zeroed.

    Fitted on the raw training split (the statistics ``pyro_vae.data`` uses) and
    saved in the checkpoint, so ``encode``/``evaluate`` map a new raw file as
    the training data was mapped. Binarisation is not repeated: new data
    enters as [0, 1] intensities.
    """

    shift: torch.Tensor  # [] or [*data_shape]
    scale: torch.Tensor
    clamp: bool = False
    constant: torch.Tensor | None = None  # bool mask of features with no spread in training

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.shift) / self.scale
        if self.clamp:
            x = x.clamp(0.0, 1.0)
        if self.constant is not None:
            x = x.masked_fill(self.constant, 0.0)
        return x

    def state(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_state(cls, state: dict) -> "Preprocessing":
        return cls(**state)


def _identity(raw):
    return Preprocessing(torch.zeros(()), torch.ones(()))


def _unit_range(raw):
    lo, hi = raw.min(), raw.max()
    if lo < 0 or hi > 1:  # as pyro_vae.data: min-max of the training split (for built-in sets, 0..raw max)
        return Preprocessing(lo, torch.clamp(hi - lo, min=torch.finfo(torch.float32).tiny), clamp=True)
    return Preprocessing(torch.zeros(()), torch.ones(()), clamp=True)


def _standard(raw):
    std, mean = torch.std_mean(raw, dim=0, correction=0)
    return Preprocessing(mean, std.clamp_min(1e-6), constant=std < 1e-6)


# preprocess name -> (fit from the raw training split, does the result reproduce the training split exactly?)
_PREPROCESSING: dict[str, tuple[Callable, bool]] = {
    "none": (_identity, True),
    "scale": (_unit_range, True),
    "dynamic-binarize": (_unit_range, True),
    "binarize": (_unit_range, False),
    "standardize": (_standard, True),
}


def fit_preprocessing(data: DataConfig, splits: DataSplits, seed: int) -> Preprocessing:
    """The map from raw data to the model's input, fitted on the run's raw training split."""
    fitter, exact = _PREPROCESSING[data.preprocess]
    if data.preprocess == "none":
        return fitter(splits.train)
    raw = load_splits(data, seed, preprocess="none").train
    pre = fitter(raw)
    if exact and not torch.allclose(pre(raw), splits.train, atol=1e-5):
        warnings.warn(f"the saved {data.preprocess!r} statistics do not reproduce the training data exactly; "
                      "`encode` of new files may be scaled differently", RuntimeWarning, stacklevel=2)
    return pre


def load_data_file(path, data_shape, preprocessing: Preprocessing | None = None) -> tuple:
    """A raw user file (``pyro_vae.data.load_file``) mapped like the training data: ``(x, labels | None)``.

    Rows holding the right number of values are reshaped to ``data_shape``.
    """
    x, labels = load_file(path)
    data_shape = tuple(data_shape)
    if x.shape[1:] != data_shape:
        if x[0].numel() != torch.Size(data_shape).numel():
            raise ValueError(f"{path}: rows of shape {tuple(x.shape[1:])} do not fit the model, which was trained on "
                             f"data points of shape {data_shape} ({torch.Size(data_shape).numel()} values each); "
                             "pass data with the training data's features, or train a run on this data")
        x = x.reshape(-1, *data_shape)
    return (x if preprocessing is None else preprocessing(x)), labels


# --------------------------------------------------------------------------- the run

def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device, failing early when it does not exist here.

    ``auto`` is ``cuda`` where CUDA is available, else ``cpu``; under torchrun
    ``cuda`` is each process's own GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"train.device is {name!r} but MPS is not available here; use --device cpu")
    return distributed.local_device(device)


def default_run_dir(config: Config, root="runs") -> Path:
    """``runs/<source>-<prior>-<likelihood>-<YYYYmmdd-HHMMSS>``, with a ``-2``, ``-3`` ... suffix if taken."""
    source = Path(config.data.source).stem or "data"
    base = f"{source}-{config.model.label('prior')}-{config.model.label('likelihood')}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = Path(root) / base, 1
    while path.exists():
        k += 1
        path = Path(root) / f"{base}-{k}"
    return path


def _run_dir(config: Config) -> Path:
    """Where the run goes; refuses a directory that already holds a run (nothing is created yet)."""
    run_dir = Path(config.output.run_dir) if config.output.run_dir else default_run_dir(config)
    if (run_dir / CHECKPOINT).exists():
        raise FileExistsError(f"{run_dir} already holds a run ({CHECKPOINT}); choose another directory with "
                              "--out (or output.run_dir) so it is not overwritten")
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run directory {run_dir} exists and is not a directory")
    return run_dir


def _epoch_transform(splits: DataSplits):
    """fit's ``train_transform``: a fresh per-epoch training tensor where the splits draw one
    (dynamic binarisation), else None. Probed with a private generator to leave the global RNG alone."""
    if splits.train_epoch(torch.Generator().manual_seed(0)) is splits.train:
        return None
    return lambda x: splits.train_epoch().to(x.device)


def train_run(config: Config, *, progress: bool = True) -> RunResult:
    """Train the VAE described by ``config`` and write the run directory (see module docstring)."""
    device = resolve_device(config.train.device)
    run_dir = distributed.on_main(lambda: _run_dir(config))  # rank 0's choice (a timestamp) for every rank
    config = dataclasses.replace(config, output=OutputConfig(run_dir=str(run_dir)))
    seed = config.train.seed
    pyro.set_rng_seed(seed)  # before the weights are drawn; fit(seed=None) then leaves the RNG alone

    splits = load_splits(config.data, seed)
    preprocessing = fit_preprocessing(config.data, splits, seed)
    with config_key("model"):  # label counts of labelled model types come from the data, and are saved
        options = complete_options(config.model.type, config.model.options, splits.train_labels)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, options=options))
    vae = config.model.build(splits.data_shape).to(device)
    init_from = getattr(vae.prior, "init_from", None)
    if init_from is not None:  # pseudo-inputs start at training points (Tomczak & Welling 2018)
        init_from(splits.train.to(device))
    config.optim.build(config.train.epochs)  # fail on bad optimiser or objective options before any work
    config.objective.build()
    with config_key("objective.name"):
        objective_for(vae, config.objective.spec())
    config.data.batch(len(splits.train))  # an explicit batch larger than the data fails before any work
    for split in (splits.train, splits.val):
        if len(split):
            vae.check_data(split)  # NaN, shape, the likelihood's support: refused before the run directory exists
    try:  # only now: a run that cannot start leaves nothing behind
        if distributed.is_main():  # other processes of a multi-process run write nothing
            run_dir.mkdir(parents=True, exist_ok=True)
            config.save(run_dir / CONFIG)
    except OSError as err:
        raise OSError(f"cannot write the run directory {str(run_dir)!r} ({err.strerror or err}); choose a "
                      "writable place with --out (output.run_dir)") from err
    extra = {"format": FORMAT, "data_shape": list(splits.data_shape), "config": config.to_dict(),
             "preprocess": preprocessing.state(), "versions": versions()}
    return _fit_run(config, run_dir, splits, vae, extra, resume=None, progress=progress)


def resume_run(run_dir, *, epochs: int | None = None, progress: bool = True) -> RunResult:
    """Continue a run from its ``checkpoint.pt``, to ``epochs`` in total (default: the run's own).

    Everything comes back from the checkpoint (weights, optimiser and scheduler
    state, RNG states, KL-schedule position, early-stopping state), so the
    continued run matches an uninterrupted one exactly on CPU. Metrics of
    epochs after the checkpoint (written before an interruption) are replaced.
    """
    run_dir = Path(run_dir)
    vae, config, payload = load_run(run_dir)  # refuses a damaged, foreign or mismatched checkpoint up front
    if epochs is not None:
        config = apply_overrides(config, {"train.epochs": int(epochs)})
    if payload["epoch"] >= config.train.epochs:
        raise ValueError(f"{run_dir} has already trained {payload['epoch']} of {config.train.epochs} epochs; "
                         f"pass --epochs N with N > {payload['epoch']} to train further")
    device = resolve_device(config.train.device)
    splits = load_splits(config.data, config.train.seed)
    vae.to(device)
    if distributed.is_main():
        config.save(run_dir / CONFIG)
        _truncate_metrics(run_dir / METRICS, payload["epoch"])
    extra = {k: payload[k] for k in ("format", "data_shape", "preprocess")}
    extra.update(config=config.to_dict(), versions=versions())
    return _fit_run(config, run_dir, splits, vae, extra, resume=payload, progress=progress)


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Keep the metrics lines up to ``epoch`` (the checkpoint's), atomically; a line cut short by a kill is dropped."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the process died while writing this line
            continue
        if record.get("epoch", epoch + 1) <= epoch:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


# Set by the pyro-vae command's SIGINT/SIGTERM handler as it raises KeyboardInterrupt. CPython can lose that
# exception (C code that calls back into Python and clears any error, e.g. a dict lookup running a Python
# __eq__ or __hash__, drops it silently); the run then still stops at the end of the epoch in flight.
STOP_REQUESTED = threading.Event()


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


def _fit_run(config: Config, run_dir: Path, splits: DataSplits, vae, extra: dict, *, resume, progress) -> RunResult:
    """The training loop of a run: metrics lines, checkpoint.pt every few epochs, best.pt on improvement."""
    seed = config.train.seed
    labelled = dict(labelled=config.data.labelled, seed=seed)
    train = model_data(vae, splits.train, splits.train_labels, split="train", **labelled)
    val = model_data(vae, splits.val, splits.val_labels, split="val", **labelled) if len(splits.val) else None
    every, last = config.train.checkpoint_every, {}
    patience = config.train.early_stopping
    early = EarlyStopping(patience, config.train.min_delta) if patience else None

    def on_epoch_end(record: dict, snapshot) -> None:
        if "val_elbo" in record and isinstance(vae, VAE):  # the KL/reconstruction split of the one-layer VAE
            terms = elbo_decomposition(vae, val, num_samples=1, seed=seed)
            record.update(kl=terms.kl, recon=terms.recon, active_units=terms.active_units)
        lines.append(json.dumps(_metrics_line(record)) + "\n")
        atomic_write_text(metrics, "".join(lines))  # whole lines only, even if killed mid-write
        # This epoch's state replaces the last one only once it is complete, and stays in memory until it is
        # on disk: an interrupt at any moment here saves this epoch or the previous one, never nothing.
        state = snapshot()
        last.update(snapshot=snapshot, saved=False, state=state)
        if record.get("best"):
            save_checkpoint(run_dir / BEST, {**state, **extra})
        if every and record["epoch"] % every == 0:
            save_checkpoint(run_dir / CHECKPOINT, {**state, **extra})
            last.update(saved=True, saved_epoch=record["epoch"], state=None)
        if STOP_REQUESTED.is_set():  # the signal's own KeyboardInterrupt was lost: stop now, this epoch kept
            raise KeyboardInterrupt

    epochs = config.train.epochs
    last["saved_epoch"] = resume["epoch"] if resume is not None else None
    metrics = run_dir / METRICS  # rewritten whole and atomically each epoch (a few kB), never appended to
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True) if metrics.exists() else []
    try:
        result = fit(vae, train, epochs=epochs, batch_size=config.data.batch(len(splits.train)),
                     optimizer=config.optim.build(epochs), objective=config.objective.spec(),
                     num_particles=config.objective.num_particles, kl_weight=config.objective.kl(epochs),
                     seed=None, val_data=val, val_every=config.train.val_every, early_stopping=early,
                     resume=resume, train_transform=_epoch_transform(splits), on_epoch_end=on_epoch_end,
                     on_nonfinite=config.train.on_nonfinite, progress=progress)
    except KeyboardInterrupt:
        if last.get("state") is not None:
            save_checkpoint(run_dir / CHECKPOINT, {**last["state"], **extra})
            last["saved_epoch"] = last["state"]["epoch"]
        raise TrainingInterrupted(run_dir, last["saved_epoch"]) from None
    except TrainingDivergedError as err:
        kept = (f"{run_dir / CHECKPOINT} still holds epoch {last['saved_epoch']}"
                if last["saved_epoch"] is not None else "no checkpoint had been written yet")
        raise TrainingDivergedError(f"{err} Nothing was saved from the diverged step: {kept}.",
                                    err.epoch, err.step) from err
    if not distributed.is_main():  # rank 0 saves, plots and reports
        return RunResult(run_dir, config, vae, splits, result.history, {})
    if not last.get("saved", False) and (last or resume is None):  # the final epoch is always saved
        state = last["snapshot"]() if last else {"epoch": 0, "step": 0, "model": vae.state_dict(), "optim": {},
                                                 "rng": rng_state(), "history": [], "step_losses": []}
        save_checkpoint(run_dir / CHECKPOINT, {**state, **extra})
    files = {"config": run_dir / CONFIG, "metrics": run_dir / METRICS, "checkpoint": run_dir / CHECKPOINT}
    if (run_dir / BEST).exists():
        files["best"] = run_dir / BEST
    files.update(write_figures(vae, splits, result.history, run_dir))
    if isinstance(vae, SSVAE) and splits.test_labels is not None and len(splits.test):
        accuracy = vae.accuracy(splits.test, splits.test_labels)
        atomic_write_text(run_dir / "accuracy.json", json.dumps({"test_accuracy": accuracy, "n": len(splits.test),
                                                                 "labelled": config.data.labelled}, indent=2))
        files["accuracy"] = run_dir / "accuracy.json"
    return RunResult(run_dir, config, vae, splits, result.history, files)


def _metrics_line(record: dict) -> dict:
    """The record's numbers: METRIC_KEYS always (None when not computed this epoch), then any others."""
    line = {k: record.get(k) for k in METRIC_KEYS}
    line.update((k, v) for k, v in record.items() if k not in line and isinstance(v, (int, float)))
    return line


# --------------------------------------------------------------------------- evaluation of a saved run

def evaluate_run(run_dir, *, split: str = "test", data_file=None, num_particles: int = 1, seed: int | None = None,
                 device="cpu", iwae_samples: int | None = None, psis: bool = False) -> dict:
    """ELBO per data point (nats) of a saved run on one split of its data, or on a raw data file.

    Returns ``{"run_dir", "split", "n", "elbo", "num_particles", "seed", "epoch"}`` (plus ``"data"`` for a
    file); ``split`` is ``"file"`` then. ``seed`` defaults to the run's ``train.seed``.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    vae, config, payload = load_run(run_dir, map_location=device)
    report = {"run_dir": str(run_dir)}
    if data_file is None:
        splits = load_splits(config.data, config.train.seed)
        x, labels = getattr(splits, split), getattr(splits, f"{split}_labels")
    else:
        x, labels = load_data_file(data_file, vae.data_shape, Preprocessing.from_state(payload["preprocess"]))
        split, report["data"] = "file", str(data_file)
    if (iwae_samples or psis) and not isinstance(vae, VAE):
        raise ValueError(f"--iwae-samples and --psis evaluate the one-layer VAE; this run is model type "
                         f"{config.model.type!r} (its ELBO is reported without them)")
    if len(x) == 0:
        raise ValueError(f"the {split} split of {run_dir} is empty (its fraction is 0 in the config); "
                         "choose another --split")
    seed = config.train.seed if seed is None else int(seed)
    pyro.set_rng_seed(seed)
    data = model_data(vae, x, labels, split=split)  # held-out M2 labels hidden: the bound on log p(x)
    report.update(split=split, n=len(x), elbo=elbo(vae, data, num_particles=num_particles),
                  num_particles=num_particles, seed=seed, epoch=payload["epoch"])
    if iwae_samples:
        from .evaluate import iwae_log_likelihood

        iw = iwae_log_likelihood(vae, x, num_samples=int(iwae_samples), seed=seed)
        report.update(iwae_log_likelihood=iw.mean, iwae_stderr=iw.stderr, iwae_samples=int(iwae_samples))
    if psis:
        from .diagnostics import psis_diagnostic

        k = int(iwae_samples or 1000)
        result = psis_diagnostic(vae, x, num_samples=k, plot_path=Path(run_dir) / f"khat-{split}.png", seed=seed)
        finite = result.khat[torch.isfinite(result.khat)]
        report.update(psis_samples=k, khat_fraction_above_0_7=result.fraction_above_07,
                      khat_median=float(finite.median()) if len(finite) else None,
                      khat_plot=str(Path(run_dir) / f"khat-{split}.png"))
    if iwae_samples or psis:
        atomic_write_text(Path(run_dir, f"evaluation-{split}.json"), json.dumps(report, indent=2))
    return report


# --------------------------------------------------------------------------- figures

def write_figures(vae, splits: DataSplits, history: list, run_dir) -> dict:
    """ELBO curves, reconstructions, samples, latent map and interpolations of held-out data, as PNGs."""
    run_dir = Path(run_dir)
    x, labels = next(((getattr(splits, s), getattr(splits, f"{s}_labels")) for s in ("test", "val", "train")
                      if len(getattr(splits, s))))
    files = {"elbo": plots.plot_history(history, run_dir / "elbo.png")}
    if not isinstance(vae, VAE):  # other model types: what they generate (by class where they take labels)
        files["samples"] = plots.save_image_grid(_viewable(sample_grid(vae).cpu()), run_dir / "samples.png",
                                                 nrow=10 if getattr(vae, "n_classes", None) else 8)
        return files

    width = min(8, len(x))
    originals = x[:min(32, len(x)) // width * width]  # whole rows only, so pairs line up
    rows = _interleave_rows(originals, vae.reconstruct(originals).cpu(), width)
    files["reconstructions"] = plots.save_image_grid(_viewable(rows), run_dir / "reconstructions.png", nrow=width)
    files["samples"] = plots.save_image_grid(_viewable(vae.sample(64).cpu()), run_dir / "samples.png", nrow=8)

    n = min(len(x), 2000)
    z = vae.encode(x[:n])[0].cpu()
    files["latent"] = plots.plot_latent_map(z, None if labels is None else labels[:n], run_dir / "latent.png")
    if n >= 2:
        k = min(6, n // 2)
        images = plots.interpolation_grid(vae.decode, z[:k], z[k:2 * k], steps=10)
    else:
        images = plots.traversal_grid(vae.decode, z[0])
    files["interpolation"] = plots.save_image_grid(_viewable(images.cpu()), run_dir / "interpolation.png", nrow=10)
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
