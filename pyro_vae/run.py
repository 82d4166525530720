"""A run directory end to end: train, resume, evaluate, sample and encode.

``train_run(config)``: config -> data (one fitted preprocessing) -> built objects
(:mod:`pyro_vae.build`) -> :func:`~pyro_vae.train.fit` with a
:class:`~pyro_vae.artifacts.RunRecorder` -> ``config.output.run_dir``
(default ``runs/<source>-<prior>-<likelihood>-<timestamp>``)::

    config.toml     the resolved config; `pyro-vae train --config` on it repeats the run
    checkpoint.pt   weights, optimiser and RNG state, history (pyro_vae.checkpoint): the last saved epoch
    best.pt         the same at the best validation ELBO (with early stopping)
    metrics.jsonl   one JSON object per epoch: epoch, train_elbo, val_elbo, kl, recon, seconds (+ lr, ...)
    elbo.png, reconstructions.png, samples.png, latent.png, interpolation.png (those the model defines)
    tensorboard/    TensorBoard event files, with output.tensorboard (pyro_vae.tensorboard)

Everything is checked (config, data, the built objects) before the run
directory exists, so a run that cannot start leaves nothing behind. Reported
ELBOs and log-likelihoods are in the user's units (:func:`~pyro_vae.evaluate.data_units`).
The CLI (:mod:`pyro_vae.cli`) parses flags and prints; what it runs is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import pyro
import torch

from . import build, distributed
from ._registry import MODELS
from ._io import atomic_write_text
from .artifacts import (METRIC_KEYS, METRICS, ElboTerms, FigurePlan, RunRecorder, TrainingInterrupted, plan_figures,
                        write_figures)
from .checkpoint import CHECKPOINT, FORMAT, load_preprocessing, load_run, versions
from .config import Config, ConfigError, DataConfig, RunInfo, apply_overrides
from .data import DataSplits, Preprocessing, load_data_file, load_dataset, source_file
from .evaluate import Units, data_units, elbo, iwae_log_likelihood
from .importance import Evaluator
from .models.base import SampleGrid, Unsupported
from .sources import is_source
from .train import TrainingDivergedError, TrainState, fit

__all__ = ["RunResult", "TrainingInterrupted", "train_run", "resume_run", "evaluate_run", "sample_run",
           "encode_run", "resolve_config", "load_splits", "load_data_file", "Preprocessing", "write_figures",
           "default_run_dir", "resolve_device", "file_options", "METRICS", "METRIC_KEYS"]


class RunResult(NamedTuple):
    """What :func:`train_run` and :func:`resume_run` return.

    ``history``: the metrics lines as written (in the user's units, see ``units``);
    ``files``: artefact name -> path.
    """

    run_dir: Path
    config: Config
    vae: torch.nn.Module
    splits: DataSplits
    history: list
    files: dict
    units: Units | None = None


# --------------------------------------------------------------------------- settings

def resolve_config(config: Config) -> tuple[Config, list[str]]:
    """The config as a run uses it, and a note for each default it chose: ``data.preprocess`` unset
    means the likelihood's own (:func:`~pyro_vae.build.default_preprocess`)."""
    notes = []
    if config.data.preprocess is None:
        name, reason = build.default_preprocess(config.model), "the data as given"
        if MODELS[config.model.type].target.takes("likelihood"):
            reason = f"the default for the {config.model.label('likelihood')!r} likelihood"
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, preprocess=name))
        notes.append(f"preprocess {name!r}: {reason} (choose another with --preprocess / data.preprocess)")
    return config, notes


def locate_source(data: DataConfig, run_dir) -> tuple[DataConfig, str | None]:
    """Where a saved run's data file is now: the absolute path the run stored, else the path as given
    relative to the run directory, else relative to the current one. Returns the data config to load
    from and a note when it was not the stored path (``None`` for a built-in data set, or found there)."""
    if data.source_path is None:  # a built-in data set, or a run of 0.1.0: as given
        return data, None
    stored, given = Path(data.source_path), Path(data.source).expanduser()
    if stored.exists():  # a file, or a folder of images
        return dataclasses.replace(data, source=str(stored)), None
    places = ([] if given.is_absolute() else [("relative to the run directory", Path(run_dir) / given)]) + [
        ("relative to the current directory", given)]
    for where, path in places:
        if path.exists():
            return dataclasses.replace(data, source=str(path)), (
                f"data: {path} ({where}; the path the run stored, {stored}, does not exist)")
    tried = ", ".join(str(p) for _, p in places)
    raise FileNotFoundError(f"{data.source}: no such data file: not at {stored}, where the run found it, nor at "
                            f"{tried}; put it back, or give a file with --data")


def load_splits(data: DataConfig, seed: int, preprocessing: Preprocessing | None = None, *,
                model_type: str | None = None) -> DataSplits:
    """The train/val/test splits a run uses (the split permutation is seeded by ``train.seed``);
    ``preprocessing``: a saved run's, applied unchanged instead of fitted again; ``model_type``: the run's,
    which decides whether ``data.groups`` (model type ``grouped``) or ``data.labels`` gives the labels."""
    if data.preprocess is None and preprocessing is None:
        raise ValueError("data.preprocess is unset, so the likelihood chooses it: pass the config through "
                         "pyro_vae.run.resolve_config(config) first (a run's saved config is resolved)")
    preprocess = preprocessing.name if preprocessing is not None else data.preprocess
    return load_dataset(data.source, data_dir=data.data_dir, download=data.download, preprocess=preprocess,
                        val_fraction=data.val_fraction, test_fraction=data.test_fraction, seed=seed,
                        preprocessing=preprocessing, **file_options(data, model_type))


def file_options(data: DataConfig, model_type: str | None = None) -> dict:
    """How the run reads its data file (:func:`pyro_vae.data.open_source`): the ``[data]`` keys of the format.
    ``data.groups`` is for model type ``grouped`` only (refused with another type)."""
    groups = data.groups
    if groups is not None and model_type is not None and model_type != "grouped":
        raise ConfigError(f"data.groups: only model type 'grouped' takes groups, and model.type is {model_type!r}; "
                          "unset data.groups (data.labels names the labels of other types)")
    return {"mmap": data.mmap, "backed": data.backed, "layer": data.layer, "var_subset": data.var_subset,
            "labels": data.labels, "groups": groups, "image_size": data.image_size, "channels": data.channels,
            "chunk": data.chunk}


def _data_changed(payload: dict, splits: DataSplits) -> bool:
    """Whether a streamed file differs from the one the checkpoint's run read (its ``data_fingerprint``), by size
    or modification time (not by path: the file may have moved)."""
    saved, now = payload.get("data_fingerprint"), splits.fingerprint
    return bool(saved and now) and (saved["size"], saved["mtime_ns"]) != (now["size"], now["mtime_ns"])


def _check_fingerprint(payload: dict, splits: DataSplits, run_dir) -> None:
    """Refuse to resume on a streamed file that changed since the run trained on it: its minibatches would be
    other data than the checkpoint's."""
    if _data_changed(payload, splits):
        now = splits.fingerprint
        raise ValueError(f"{now['path']}: the data file changed since {run_dir} trained on it (its size or "
                         f"modification time differs: {payload['data_fingerprint']['size']} bytes then, "
                         f"{now['size']} now), so a resume would read other data; put back the file it trained on, "
                         f"or start a new run with --config {Path(run_dir) / 'config.toml'} --out NEW_DIR")


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


_BYTES_PER_PARAMETER = 16  # a float32 weight, its gradient and Adam's two moments


def _available_memory(device: torch.device) -> int | None:
    """Bytes free for a new model on ``device`` now, where that can be read (Linux, CUDA), else ``None``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _check_size(config: Config, splits: DataSplits, device: torch.device, say: Callable[[str], None]) -> None:
    """Refuse a model too large for the device before any of it is allocated, and note a latent space larger
    than the data. The model is built on torch's meta device (shapes, no memory) to count its parameters."""
    d, latent = math.prod(splits.data_shape), config.model.latent_dim
    if latent > d:
        say(f"note: model.latent_dim {latent} exceeds the data's {d} values per point: the extra latent "
            f"dimensions cannot carry information and slow training; a latent_dim below {d} is usual")
    try:
        with torch.device("meta"):
            meta, _ = build.model(config.model, splits.data_shape, splits.train_labels)
    except (ConfigError, Unsupported):
        raise
    except Exception:  # a model type that cannot be built without memory: its own build decides
        return
    count = sum(p.numel() for p in meta.parameters())
    need, free = count * _BYTES_PER_PARAMETER, _available_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"model: {count:,} parameters need about {need / 2 ** 30:,.1f} GiB with their gradients "
                          f"and Adam's state, and {device} has {free / 2 ** 30:,.1f} GiB free; lower "
                          f"model.latent_dim ({latent}) or the hidden sizes of model.net")


@contextlib.contextmanager
def _model_type(config: Config):
    """An :class:`Unsupported` operation names the run's model type."""
    try:
        yield
    except Unsupported as err:
        raise Unsupported(f"model type {config.model.type!r}: {err}") from None


# --------------------------------------------------------------------------- training

@dataclass
class _Run:
    """A run ready to train: everything built and checked, nothing written yet."""

    config: Config
    splits: DataSplits
    model: torch.nn.Module
    training: build.Training
    inputs: dict  # split -> the tensors model and guide take (None for an empty split)
    batch_size: int
    units: Units
    figures: FigurePlan  # chosen from the data's shape before training: no finished run fails on a figure


def _prepare(config: Config, splits: DataSplits, model) -> _Run:
    seed, labelled = config.train.seed, config.data.labelled
    inputs = {}
    with _model_type(config):
        for split in ("train", "val", "test"):
            x, labels = getattr(splits, split), getattr(splits, f"{split}_labels")
            inputs[split] = model.split_inputs(x, labels, split=split, labelled=labelled, seed=seed) if len(x) \
                else None
    batch_size = config.data.batch(len(splits.train))  # an explicit batch larger than the data fails here
    for split in ("train", "val"):
        if inputs[split] is not None:
            model.check_data(inputs[split][0])  # NaN, shape, the likelihood's support
    return _Run(config, splits, model, build.training(config, model), inputs, batch_size,
                data_units(model, inputs["train"], splits.preprocessing), plan_figures(splits.data_shape))


def _info(run: _Run) -> dict:
    """What every checkpoint of the run holds besides the training state (and a streamed file's fingerprint)."""
    info = {"format": FORMAT, "data_shape": list(run.splits.data_shape), "config": run.config.to_dict(),
            "preprocess": run.splits.preprocessing.state(), "versions": versions()}
    if run.splits.fingerprint is not None:
        info["data_fingerprint"] = dict(run.splits.fingerprint)
    return info


def train_run(config: Config, *, progress: bool = True, stop: threading.Event | None = None,
              say: Callable[[str], None] | None = None) -> RunResult:
    """Train the model ``config`` describes and write its run directory (see the module docstring).

    ``stop``: an event that, once set, ends training after the epoch in flight (as Ctrl-C does).
    ``say``: where notes about the settings go (the CLI prints them; default: ``warnings.warn``).
    """
    config, _ = resolve_config(config)
    if config.output.tensorboard:
        from .tensorboard import require

        require()  # refused before anything is written
    device = resolve_device(config.train.device)
    run_dir = distributed.on_main(lambda: _run_dir(config))  # rank 0's choice (a timestamp) for every rank
    config = dataclasses.replace(config, output=dataclasses.replace(config.output, run_dir=str(run_dir)))
    file = source_file(config.data.source)
    if file is not None:  # found again from any directory (locate_source)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, source_path=str(file.resolve())))
    pyro.set_rng_seed(config.train.seed)  # before the weights are drawn; fit(seed=None) leaves the RNG alone
    splits = load_splits(config.data, config.train.seed, model_type=config.model.type)
    say = say or (lambda text: warnings.warn(text, UserWarning, stacklevel=3))
    for note in splits.notes:
        say(note)
    if config.data.mmap is None and file is not None and file.suffix.lower() == ".npy" and is_source(splits.train):
        # memory-mapped for its size: the saved config says so, and so reads it the same way whatever the threshold
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, mmap=True))
    _check_size(config, splits, device, say)
    model, model_config = build.model(config.model, splits.data_shape, splits.train_labels)
    config = dataclasses.replace(config, model=model_config)  # label counts from the data, saved with the run
    run_id = distributed.on_main(lambda: uuid.uuid4().hex[:12])  # a new run: a new identity, whatever the config
    config = dataclasses.replace(config, run=RunInfo(id=run_id, config_hash=config.config_hash()))
    model.to(device)
    run = _prepare(config, splits, model)
    if run.figures.skipped:
        say("note: " + run.figures.note().splitlines()[-1])
    model.init_from_data(splits.train)
    recorder = RunRecorder(run_dir, _info(run), checkpoint_every=config.train.checkpoint_every,
                           log_jacobian=run.units.log_jacobian, epochs=config.train.epochs, progress=progress)
    return _train(run, recorder, resume=None, stop=stop)


def resume_run(run_dir, *, epochs: int | None = None, progress: bool = True,
               stop: threading.Event | None = None, say: Callable[[str], None] | None = None,
               tensorboard: bool | None = None) -> RunResult:
    """Continue a run from its ``checkpoint.pt``, to ``epochs`` in total (default: the run's own).

    ``tensorboard``: log to ``RUN_DIR/tensorboard/`` from now on even if the run did not
    (``output.tensorboard``, which is no part of the run's identity); a run that logged continues to.

    Everything comes back from the checkpoint (weights, optimiser and scheduler
    state, RNG states, KL-schedule position, early-stopping state, the fitted
    preprocessing), so the continued run matches an uninterrupted one exactly on
    CPU. Metrics of epochs after the checkpoint (written before an interruption) are replaced.
    """
    run_dir = Path(run_dir)
    model, config, payload = load_run(run_dir)  # refuses a damaged, foreign or mismatched checkpoint up front
    if epochs is not None:
        config = apply_overrides(config, {"train.epochs": int(epochs)})
    if tensorboard:
        config = apply_overrides(config, {"output.tensorboard": True})
    if config.output.tensorboard:
        from .tensorboard import require

        require()  # refused before anything is written
    if payload["epoch"] >= config.train.epochs:
        raise ValueError(f"{run_dir} has already trained {payload['epoch']} of {config.train.epochs} epochs; "
                         f"pass --epochs N with N > {payload['epoch']} to train further")
    model.to(resolve_device(config.train.device))
    data, note = locate_source(config.data, run_dir)
    if note:
        (say or (lambda text: warnings.warn(text, UserWarning, stacklevel=2)))(note)
    splits = load_splits(data, config.train.seed, load_preprocessing(payload, config), model_type=config.model.type)
    _check_fingerprint(payload, splits, run_dir)
    for text in splits.notes:
        (say or (lambda text: warnings.warn(text, UserWarning, stacklevel=2)))(text)
    run = _prepare(config, splits, model)
    info = {**_info(run), "format": payload["format"], "data_shape": payload["data_shape"]}
    recorder = RunRecorder(run_dir, info, checkpoint_every=config.train.checkpoint_every,
                           log_jacobian=run.units.log_jacobian, saved_epoch=payload["epoch"],
                           epochs=config.train.epochs, progress=progress)
    return _train(run, recorder, resume=TrainState.from_payload(payload), stop=stop)


def _train(run: _Run, recorder: RunRecorder, *, resume: TrainState | None, stop) -> RunResult:
    """``fit`` with the run's objects and its recorder; however it ends, the recorder saves what it must."""
    config, t = run.config, run.training
    callbacks = [ElboTerms(run.model, run.inputs["val"], config.train.seed), recorder]
    logger = _tensorboard(run, recorder, resume) if config.output.tensorboard and distributed.is_main() else None
    if logger is not None:
        callbacks.append(logger)
    train_transform = None
    if run.splits.preprocessing.binarize == "dynamic":  # a fresh binarisation of the training split each epoch
        train_transform = lambda x: run.splits.train_epoch().to(x.device)  # noqa: E731
        if is_source(run.splits.train):  # a streamed split: each minibatch drawn as it is read
            train_transform = torch.bernoulli
    try:
        if distributed.is_main():  # only now, everything checked: a run that cannot start leaves nothing behind
            recorder.open(config, "pyro-vae train --resume" if resume is not None else "pyro-vae train")
        result = fit(run.model, run.inputs["train"], epochs=config.train.epochs,
                     batch_size=run.batch_size, optim=t.optim, objective=t.objective,
                     kl_schedule=t.kl_schedule, val_data=run.inputs["val"], val_every=config.train.val_every,
                     early_stopping=t.early_stopping, callbacks=callbacks, stop=stop, resume=resume,
                     train_transform=train_transform, seed=None, on_nonfinite=config.train.on_nonfinite,
                     divergence=t.divergence, progress=False)
        if result.interrupted:  # a stop request whose KeyboardInterrupt was lost
            raise KeyboardInterrupt
        files = recorder.finish(run.model, run.splits, run.inputs, run.figures) if distributed.is_main() else {}
    except KeyboardInterrupt:
        raise recorder.interrupted() from None
    except TrainingDivergedError as err:
        raise recorder.diverged(err) from err
    finally:
        recorder.close()
        if logger is not None:
            logger.close()
    return RunResult(recorder.run_dir, config, run.model, run.splits, recorder.records, files, run.units)


def _tensorboard(run: _Run, recorder: RunRecorder, resume: TrainState | None):
    """The run's :class:`~pyro_vae.tensorboard.TensorBoardLogger` in ``RUN_DIR/tensorboard/``: the numbers of
    its metrics lines, and for image data the grids its figures show (the same held-out points)."""
    from .artifacts import held_out
    from .tensorboard import LOG_DIR, TensorBoardLogger

    config, images = run.config, run.figures.kind == "image"
    _, x, labels = held_out(run.splits) if images else (None, None, None)
    return TensorBoardLogger(recorder.run_dir / LOG_DIR, every=config.output.tensorboard_every,
                             log_jacobian=run.units.log_jacobian, config=config, images=x, labels=labels,
                             samples=64 if images else 0, seed=config.train.seed, resume_from=resume)


# --------------------------------------------------------------------------- a saved run

class _HeldOut(NamedTuple):
    """A saved run with the held-out data to report on (a split, or a raw file mapped as training was)."""

    model: torch.nn.Module
    config: Config
    payload: dict
    seed: int
    x: torch.Tensor
    labels: torch.Tensor | None
    split: str
    clamped: int
    preprocessing: Preprocessing
    note: str | None  # where the run's data file was found, when not at the path it stored


def _held_out(run_dir, split: str, data_file, seed: int | None, device) -> _HeldOut:
    """The run and its ``split`` (or ``data_file``); ``seed`` defaults to the run's."""
    model, config, payload = load_run(run_dir, map_location=device)
    seed = config.train.seed if seed is None else int(seed)
    preprocessing = load_preprocessing(payload, config)
    note = None
    if data_file is None:
        data, note = locate_source(config.data, run_dir)
        splits = load_splits(data, config.train.seed, preprocessing, model_type=config.model.type)
        x, labels = getattr(splits, split), getattr(splits, f"{split}_labels")
        clamped = splits.clamped.get(split, 0)
        if _data_changed(payload, splits):
            changed = (f"data: {splits.fingerprint['path']} changed since the run trained on it (size or "
                       "modification time); the splits are read from the file as it is now")
            note = changed if note is None else f"{note}; {changed}"
    else:
        raw, labels = load_data_file(data_file, model.data_shape, **_file_options_for(model, config))
        clamped = preprocessing.clamped(raw)
        x = preprocessing.binarized(preprocessing(raw), torch.Generator().manual_seed(seed))  # as the splits were
        split = "file"
    if len(x) == 0:
        raise ValueError(f"the {split} split of {run_dir} is empty (its fraction is 0 in the config); "
                         "choose another --split")
    return _HeldOut(model, config, payload, seed, x, labels, split, clamped, preprocessing, note)


def _file_options_for(model, config: Config) -> dict:
    """The run's way of reading a file, for a file it evaluates or encodes: labels only where the model takes
    them (a plain VAE encodes an .h5ad without the run's obs column)."""
    options = file_options(config.data, config.model.type)
    if len(model.inputs) == 1:
        options.update(labels=None, groups=None)
    return options


def evaluate_run(run_dir, *, split: str = "test", data_file=None, num_particles: int = 1, seed: int | None = None,
                 device="cpu", iwae_samples: int | None = None, psis: bool = False) -> dict:
    """ELBO per data point of a saved run on one split of its data, or on a raw data file.

    Returns ``{"run_dir", "split", "n", "elbo", "num_particles", "seed", "epoch", "units", "log_jacobian",
    "preprocess"}`` (plus ``"data"`` for a file, ``"clamped_values"`` where the preprocessing clamps,
    and the IWAE and PSIS figures when asked); ``split`` is ``"file"`` for a file. ``seed`` defaults to
    the run's ``train.seed``. Log-densities are in the units ``"units"`` states: the data as given,
    wherever the preprocessing can be undone.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    held = _held_out(run_dir, split, data_file, seed, device)
    model, seed, split, preprocessing = held.model, held.seed, held.split, held.preprocessing
    with _model_type(held.config):
        inputs = model.split_inputs(held.x, held.labels, split=split)  # held-out M2 labels hidden: log p(x)
        if iwae_samples or psis:
            Evaluator(model, tuple(t[:2] for t in inputs), seed)  # refuses models without per-point weights
    units = data_units(model, inputs, preprocessing)
    report = {"run_dir": str(run_dir)}
    if data_file is not None:
        report["data"] = str(data_file)
    pyro.set_rng_seed(seed)
    report.update(split=split, n=len(held.x), elbo=elbo(model, inputs, num_particles=num_particles)
                  + units.log_jacobian, num_particles=num_particles, seed=seed, epoch=held.payload["epoch"],
                  units=units.description, log_jacobian=units.log_jacobian, preprocess=preprocessing.name)
    if held.note:
        report["notes"] = [held.note]
    if preprocessing.clamp:
        report["clamped_values"] = held.clamped  # outside the training range: the Jacobian does not hold there
    if iwae_samples:
        iw = iwae_log_likelihood(model, inputs, num_samples=int(iwae_samples), seed=seed)
        report.update(iwae_log_likelihood=iw.mean + units.log_jacobian, iwae_stderr=iw.stderr,
                      iwae_samples=int(iwae_samples))
    if psis:
        from .diagnostics import psis_diagnostic

        k = int(iwae_samples or 1000)
        plot = Path(run_dir) / f"khat-{split}.png"
        result = psis_diagnostic(model, inputs, num_samples=k, plot_path=plot, seed=seed)
        finite = result.khat[torch.isfinite(result.khat)]
        report.update(psis_samples=k, khat_fraction_above_0_7=result.fraction_above_07,
                      khat_median=float(finite.median()) if len(finite) else None, khat_plot=str(plot))
    if iwae_samples or psis:
        atomic_write_text(Path(run_dir, f"evaluation-{split}.json"), json.dumps(report, indent=2))
    return report


def sample_run(run_dir, n: int = 64, *, mean: bool = True, seed: int | None = None, device="cpu") -> SampleGrid:
    """What a saved run's model generates, laid out as its ``sample_grid`` (a row per class for M2)."""
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    model, config, _ = load_run(run_dir, map_location=device)
    pyro.set_rng_seed(config.train.seed if seed is None else seed)
    with _model_type(config):
        grid = model.sample_grid(n, mean=mean)
    return grid._replace(images=grid.images.cpu())


def encode_run(run_dir, data_file, *, batch_size: int = 1024, device="cpu") -> torch.Tensor:
    """Posterior means ``[N, latent_dim]`` of a raw data file, preprocessed as the run's training data."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, config, payload = load_run(run_dir, map_location=device)
    x, labels = load_data_file(data_file, model.data_shape, load_preprocessing(payload, config),
                               **_file_options_for(model, config))
    model.check_data(x, support=False)
    with _model_type(config), torch.no_grad():
        return torch.cat([model.posterior_mean(x[i:i + batch_size], None if labels is None else
                                               labels[i:i + batch_size]).cpu()
                          for i in range(0, len(x), batch_size)])
