"""Checkpoints: one ``torch.save`` payload per file, written atomically.

A run directory holds ``config.toml`` (the resolved config) and
``checkpoint.pt`` (the last saved epoch; other names such as ``best.pt`` can
sit beside it). The payload is a :class:`~pyro_vae.train.TrainState` (what
``fit`` hands its callbacks after each epoch; ``TrainState.from_payload`` gives
it back for ``fit(resume=...)``) plus what is needed to rebuild the model and
its inputs::

    format       payload layout version (1)
    epoch, step  last finished epoch and optimisation step
    model        the model's state_dict
    optim        pyro optimiser state (PyroOptim.get_state())
    rng          torch / numpy / python (/ cuda) RNG states
    history      per-epoch metric records; step_losses, kl_weight, early_stopping, best_model
    data_shape   shape of one data point, to rebuild the VAE
    config       resolved config as a nested dict (Config.to_dict())
    preprocess   the fitted Preprocessing (pyro_vae.data), applied unchanged to new raw data
    versions     pyro_vae, torch, pyro-ppl, python

Every value is a tensor, number, string, list, tuple or dict, so the file loads
with ``torch.load(weights_only=True)``: no pickled code runs on loading.
"""

from __future__ import annotations

import pickle
import platform
import re
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch

from . import build
from ._io import atomic_write
from .config import Config, ConfigError, load_config
from .data import Preprocessing

__all__ = ["CHECKPOINT", "BEST", "CONFIG", "FORMAT", "save_checkpoint", "load_checkpoint", "load_run_checkpoint",
           "versions", "load_run", "load_preprocessing", "check_identity"]

CHECKPOINT = "checkpoint.pt"  # the last saved epoch of a run
BEST = "best.pt"  # the epoch with the best validation ELBO (written when early stopping is on)
CONFIG = "config.toml"
FORMAT = 1


def save_checkpoint(path, payload) -> Path:
    """Write ``payload`` (a dict, or a :class:`~pyro_vae.train.TrainState`) to ``path`` atomically: a temp
    file in the same directory, fsync, ``os.replace``.

    A crash or an exception mid-write leaves the previous file at ``path`` intact
    and no temp file behind.
    """
    if not isinstance(payload, dict):
        payload = payload.to_payload()
    storable = _storable(payload)
    return atomic_write(path, lambda fh: torch.save(storable, fh))


def load_checkpoint(path, map_location="cpu") -> dict:
    """The payload saved by :func:`save_checkpoint` (tensors mapped to ``map_location``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the error below says more
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # what torch's weights-only unpickler would not import
        if found is None:
            raise ValueError(f"{path}: not a readable pyro_vae checkpoint (truncated or corrupt: "
                             f"{' '.join(str(err).split()[-12:])})") from err
        raise ValueError(f"{path}: refused to load: the file holds pickled Python objects ({found.group(1)}), not "
                         "only tensors and plain data, and unpickling them could run code. pyro_vae checkpoints "
                         "never do; if you made this file yourself and trust it, re-save its tensors as a plain "
                         "dict") from err
    except Exception as err:  # torch raises many types for a truncated or foreign file
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{path}: not a readable pyro_vae checkpoint ({type(err).__name__}: {first})") from err
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a pyro_vae checkpoint (holds a {type(payload).__name__}, not a dict)")
    return _restored(payload)


def _storable(payload: dict) -> dict:
    """numpy's RNG state (a tuple holding an ndarray) as tensors and numbers, which weights_only loading accepts."""
    rng = payload.get("rng")
    if not rng or not isinstance(rng.get("numpy"), tuple):
        return payload
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    numpy_state = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return {**payload, "rng": {**rng, "numpy": numpy_state}}


def _restored(payload: dict) -> dict:
    """Undo :func:`_storable`: ``payload["rng"]`` as ``pyro_vae.train.set_rng_state`` takes it."""
    rng = payload.get("rng")
    if not rng or not isinstance(rng.get("numpy"), dict):
        return payload
    n = rng["numpy"]
    numpy_state = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    return {**payload, "rng": {**rng, "numpy": numpy_state}}


def versions() -> dict:
    """Versions of the library and its core dependencies, for the record."""
    from . import __version__

    # str(): torch.__version__ is a TorchVersion, which weights_only loading rejects
    return {"pyro_vae": str(__version__), "torch": str(torch.__version__), "pyro": str(pyro.__version__),
            "python": platform.python_version()}


def load_run_checkpoint(path, map_location="cpu") -> dict:
    """:func:`load_checkpoint` plus the checks that it is a run's checkpoint of a format this version reads."""
    payload = load_checkpoint(path, map_location=map_location)
    missing = [k for k in ("config", "data_shape", "model", "epoch") if k not in payload]
    if missing:
        raise ValueError(f"{path}: not a pyro_vae run checkpoint (no {', '.join(missing)}); was it written by "
                         "pyro-vae train?")
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {payload.get('format')!r} is not supported (expected {FORMAT})")
    return payload


def load_run(run_dir, checkpoint: str = CHECKPOINT, map_location="cpu"):
    """Rebuild a trained model from a run directory.

    Returns ``(model, config, payload)``: the model in eval mode with the saved
    weights (on ``map_location``), the run's :class:`~pyro_vae.config.Config`
    (its plugins imported) and the checkpoint payload.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} not found")
    path = run_dir / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {checkpoint}; is it a pyro-vae run directory?")
    payload = load_run_checkpoint(path, map_location=map_location)
    config = Config.from_dict(payload["config"])
    check_identity(run_dir, path, config)
    model, _ = build.model(config.model, payload["data_shape"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:400]
        raise ValueError(f"{path}: its weights do not fit the model its config describes ({detail}); the file "
                         "was altered or mixed with another run's") from err
    model.to(map_location)
    model.eval()
    return model, config, payload


def check_identity(run_dir: Path, path: Path, config: Config) -> None:
    """Refuse a checkpoint whose run is not the one ``config.toml`` beside it describes (a file copied from
    another run): the run ids differ, or the settings do (compared by ``Config.config_hash``; a run of
    0.1.0 has no id, so only its settings are compared)."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        return
    try:
        beside = load_config(saved)
    except ConfigError as err:
        raise ValueError(f"{saved} cannot be read ({err}); restore this run's own config.toml, or remove it: "
                         f"{path.name} holds the run's settings") from err
    ids = (config.run.id, beside.run.id)
    hashes = (config.config_hash(), beside.config_hash())
    if (None not in ids and ids[0] != ids[1]) or hashes[0] != hashes[1]:
        def who(run, digest):
            return f"run {run} (settings {digest})" if run else f"a run with settings {digest}"
        raise ValueError(f"{run_dir}: its files belong to different runs: {path.name} is {who(ids[0], hashes[0])}, "
                         f"config.toml is {who(ids[1], hashes[1])}; a file was copied from another run or edited. "
                         "Put back this run's own files, or start a new run from either config with "
                         "pyro-vae train --config FILE --out NEW_DIR")


def load_preprocessing(payload: dict, config: Config) -> Preprocessing:
    """The run's fitted :class:`~pyro_vae.data.Preprocessing` (a checkpoint of 0.1.0 named it in its config)."""
    return Preprocessing.from_state(payload["preprocess"], name=config.data.preprocess)
