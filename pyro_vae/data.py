"""Datasets held in memory as float32 CPU tensors: load, split, preprocess, keep labels.

``load_dataset(source)`` takes a name from :data:`DATASETS` or a path to a user file
(``.npy``, ``.npz``, ``.csv``, ``.pt``) and returns a :class:`DataSplits`.
All statistics used by preprocessing come from the training split only.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ._registry import did_you_mean

PREPROCESS = ("none", "scale", "binarize", "dynamic-binarize", "standardize")
SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv", ".pt")
DEFAULT_DATA_DIR = Path(os.environ.get("PYRO_VAE_DATA_DIR", "~/.cache/pyro_vae")).expanduser()

_DATA_KEYS = ("x", "data", "X")
_LABEL_KEYS = ("y", "labels")
_STD_FLOOR = 1e-6


@dataclass(repr=False)
class DataSplits:
    """Train/validation/test tensors [N, *data_shape] float32 on CPU, labels (LongTensor [N]) or None."""

    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor | None
    val_labels: Tensor | None
    test_labels: Tensor | None
    name: str
    preprocess: str

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28) or (D,)."""
        return tuple(self.train.shape[1:])

    def train_epoch(self, generator: torch.Generator | None = None) -> Tensor:
        """Training tensor for one epoch: a fresh Bernoulli draw of the [0,1] intensities under
        'dynamic-binarize' (Burda et al. 2016), else `self.train` itself (no copy)."""
        if self.preprocess == "dynamic-binarize":
            return torch.bernoulli(self.train, generator=generator)
        return self.train

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(getattr(self, k))}" for k in ("train", "val", "test"))
        return (f"DataSplits(name={self.name!r}, preprocess={self.preprocess!r}, "
                f"data_shape={self.data_shape}, {sizes}, labels={self.train_labels is not None})")


# --------------------------------------------------------------------------- built-in datasets

def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits: x [1797, 1, 8, 8] float32 with raw values 0..16, labels [1797]."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = torch.from_numpy(np.ascontiguousarray(bunch.images, dtype=np.float32)).unsqueeze(1)
    return x, torch.from_numpy(np.asarray(bunch.target)).long()


_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


def load_torchvision(name: str, root, download: bool = False, train: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST / Fashion-MNIST / KMNIST official train or test set: x [N, 1, 28, 28] float32 raw
    0..255, labels [N]. Files live under ``root/<ClassName>/raw``."""
    import torchvision.datasets as tvd

    key = name.lower().replace("_", "-")
    if key not in _TORCHVISION_CLASSES:
        raise ValueError(f"unknown torchvision dataset {name!r}; valid: {sorted(_TORCHVISION_CLASSES)}."
                         + did_you_mean(key, _TORCHVISION_CLASSES))
    cls = getattr(tvd, _TORCHVISION_CLASSES[key])
    root = Path(root).expanduser()
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as err:
        if download or "not found" not in str(err).lower():
            raise
        raise FileNotFoundError(
            f"{key} not found under {root} (expected the files in "
            f"{root / cls.__name__ / 'raw'}); pass --download (or download=True) to fetch it"
        ) from err
    x = ds.data.unsqueeze(1).to(torch.float32)  # no PIL: read the uint8 tensor directly
    return x, ds.targets.clone().long()


def _digits_source(root: Path, download: bool):
    x, y = load_digits()
    return x, y, None, None


def _torchvision_source(name: str, root: Path, download: bool):
    x, y = load_torchvision(name, root, download=download, train=True)
    xt, yt = load_torchvision(name, root, download=download, train=False)
    return x, y, xt, yt


# name -> loader(root, download) -> (x, labels, official_test_x | None, official_test_labels | None)
DATASETS: dict[str, Callable] = {
    "digits": _digits_source,
    "mnist": partial(_torchvision_source, "mnist"),
    "fashion-mnist": partial(_torchvision_source, "fashion-mnist"),
    "kmnist": partial(_torchvision_source, "kmnist"),
}
_RAW_MAX = {"digits": 16.0, "mnist": 255.0, "fashion-mnist": 255.0, "kmnist": 255.0}


# --------------------------------------------------------------------------- user files

def _bad(path: Path, problem: str, fix: str = "") -> ValueError:
    return ValueError(f"{path}: {problem}" + (f"; {fix}" if fix else ""))


def _as_data(path: Path, arr, what: str = "data") -> Tensor:
    """Validate a loaded array/tensor and return it as float32 [N, ...]."""
    if isinstance(arr, np.ndarray):
        if arr.dtype.kind not in "biuf":
            raise _bad(path, f"{what} has non-numeric dtype {arr.dtype}", "store numbers (int, float or bool)")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    elif isinstance(arr, Tensor):
        t = arr.detach().cpu()
        if t.is_complex():
            raise _bad(path, f"{what} has complex dtype {t.dtype}", "store real numbers")
    else:
        raise _bad(path, f"{what} is a {type(arr).__name__}, not an array or tensor",
                   "store a numeric array of shape [N, ...]")
    if t.dim() < 2:
        raise _bad(path, f"{what} has shape {tuple(t.shape)} but must be [N, ...] with at least one "
                   "feature dim", "reshape to [N, 1] for a single feature")
    if t.numel() == 0:
        raise _bad(path, f"{what} is empty (shape {tuple(t.shape)}, zero rows or features)",
                   "provide at least one sample with at least one feature")
    t = t.to(torch.float32)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        count = int((~finite).sum())
        first = tuple(int(i) for i in np.unravel_index(int((~finite).flatten().nonzero()[0]), tuple(t.shape)))
        raise _bad(path, f"{what} contains {count} NaN or Inf value(s) (after conversion to float32), "
                   f"first at index {first}", "remove or impute them before loading")
    return t.contiguous()


def _as_labels(path: Path, y, n: int) -> Tensor:
    if not isinstance(y, Tensor):
        y = np.asarray(y)
        if y.dtype.kind not in "iuf":
            raise _bad(path, f"labels have dtype {y.dtype}", "store integer class labels")
    t = torch.from_numpy(np.ascontiguousarray(y)) if isinstance(y, np.ndarray) else y.detach().cpu()
    if t.dim() != 1 or len(t) != n:
        raise _bad(path, f"labels have shape {tuple(t.shape)} but data has {n} rows",
                   f"store labels as a 1-D integer array of length {n}")
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            raise _bad(path, "labels are not whole numbers", "store integer class labels")
    elif t.dtype == torch.bool or t.is_complex():
        raise _bad(path, f"labels have dtype {t.dtype}", "store integer class labels")
    return t.long()


def _pick(path: Path, mapping: dict) -> tuple:
    """(data, labels|None) from a dict-like of arrays (npz or a torch dict)."""
    keys = list(mapping.keys())
    data_key = next((k for k in _DATA_KEYS if k in mapping), None)
    if data_key is None:
        rest = [k for k in keys if k not in _LABEL_KEYS]
        if len(rest) != 1:
            raise _bad(path, f"cannot tell which entry holds the data (keys: {keys})",
                       f"name it one of {list(_DATA_KEYS)}")
        data_key = rest[0]
    label_key = next((k for k in _LABEL_KEYS if k in mapping), None)
    return mapping[data_key], (mapping[label_key] if label_key is not None else None)


def _read_csv(path: Path) -> np.ndarray:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except UnicodeDecodeError as err:
        raise _bad(path, f"is not a UTF-8 text CSV file ({err.reason})", "save it as plain comma-separated text")
    except csv.Error as err:
        raise _bad(path, f"is not valid CSV ({err})", "save it as plain comma-separated numbers")
    if rows:
        try:
            np.asarray(rows[0][1], dtype=np.str_).astype(np.float64)
        except ValueError:
            rows = rows[1:]  # a non-numeric first row is a header
    if not rows:
        raise _bad(path, "has zero data rows", "provide at least one row of comma-separated numbers")
    lengths = np.fromiter((len(r) for _, r in rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(lengths != lengths[0])
    if bad.size:
        i = int(bad[0])
        raise _bad(path, f"ragged CSV: line {rows[i][0]} has {lengths[i]} values but line {rows[0][0]} "
                   f"has {lengths[0]}", "give every row the same number of comma-separated values")
    cells = np.asarray([r for _, r in rows], dtype=np.str_)
    try:
        return cells.astype(np.float64)
    except ValueError:
        for line, row in rows:  # error path only: locate the first offending cell
            for j, c in enumerate(row):
                try:
                    float(c)
                except ValueError:
                    what = "empty (missing) value" if not c.strip() else f"non-numeric value {c!r}"
                    raise _bad(path, f"{what} at line {line}, column {j + 1}",
                               "the CSV must hold numbers only (one optional header row)") from None
        raise


def load_file(path) -> tuple[Tensor, Tensor | None]:
    """User data: x float32 [N, ...] (shape kept as stored), labels LongTensor [N] or None.

    .npy array; .npz with key 'x'/'data'/'X' (or its only array) and optional 'y'/'labels';
    .csv numeric [N, D] with an optional header row (no labels); .pt tensor or dict like .npz.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file; check the path")
    if path.is_dir():
        raise _bad(path, "is a directory, not a data file", f"pass a {'/'.join(SUPPORTED_SUFFIXES)} file")
    if suffix not in SUPPORTED_SUFFIXES:
        raise _bad(path, f"unsupported file type {suffix or '(no suffix)'!r}",
                   f"supported: {', '.join(SUPPORTED_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise _bad(path, "file is empty (0 bytes)", "write the data into it or choose another file")

    labels = None
    if suffix == ".csv":
        data = _read_csv(path)
    elif suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise _bad(path, f"could not be read by torch.load ({type(err).__name__}: {err})",
                       "save a tensor or a dict of tensors with torch.save") from err
        if isinstance(obj, dict):
            data, labels = _pick(path, obj)
        else:
            data = obj
    else:
        try:
            obj = np.load(path, allow_pickle=False)
        except Exception as err:
            raise _bad(path, f"could not be read by numpy.load ({type(err).__name__}: {err})",
                       "save numeric arrays with numpy.save / numpy.savez") from err
        if suffix == ".npz":
            with obj:
                try:
                    arrays = {k: obj[k] for k in obj.files}
                except Exception as err:
                    raise _bad(path, f"could not read an array ({type(err).__name__}: {err})",
                               "save numeric arrays with numpy.savez") from err
            if not arrays:
                raise _bad(path, "the .npz archive holds no arrays", "save the data under key 'x'")
            data, labels = _pick(path, arrays)
        else:
            data = obj
    x = _as_data(path, data)
    y = None if labels is None else _as_labels(path, labels, len(x))
    return x, y


# --------------------------------------------------------------------------- splitting / preprocessing

def _split_sizes(n: int, fractions: tuple[float, ...], name: str) -> list[int]:
    for f in fractions:
        if not 0.0 <= f < 1.0:
            raise ValueError(f"split fractions must be in [0, 1), got {fractions}")
    sizes = [int(round(n * f)) for f in fractions]
    if n - sum(sizes) < 1:
        raise ValueError(f"{name}: {n} samples leave no training data with fractions {fractions}; "
                         "lower val_fraction/test_fraction")
    return sizes


def _take(x: Tensor, y: Tensor | None, idx: Tensor) -> tuple[Tensor, Tensor | None]:
    return x[idx], (None if y is None else y[idx])


def _scale(parts: list[Tensor], raw_max: float | None) -> None:
    """In place to [0,1]: divide by a known raw maximum, else min-max from train (parts[0])."""
    if raw_max is not None:
        for p in parts:
            p.div_(raw_max).clamp_(0.0, 1.0)
        return
    lo, hi = parts[0].min(), parts[0].max()
    if lo < 0 or hi > 1:
        span = torch.clamp(hi - lo, min=torch.finfo(torch.float32).tiny)
        for p in parts:
            p.sub_(lo).div_(span)
    for p in parts[1:]:
        p.clamp_(0.0, 1.0)


def _standardize(parts: list[Tensor]) -> None:
    """In place, per feature, with mean/std of train (parts[0]); constant features become 0."""
    std, mean = torch.std_mean(parts[0], dim=0, correction=0)
    constant = std < _STD_FLOOR
    std = std.clamp_min(_STD_FLOOR)
    for p in parts:
        p.sub_(mean).div_(std).masked_fill_(constant, 0.0)


def load_dataset(source: str, *, data_dir=None, download: bool = False, preprocess: str = "scale",
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """Load a named dataset or a user file, split it with a seeded permutation, preprocess.

    Torchvision datasets keep their official test set (``test_fraction`` unused) and take
    ``val_fraction`` of the official train set as validation; others split by both fractions.
    """
    if preprocess not in PREPROCESS:
        raise ValueError(f"unknown preprocess {preprocess!r}; valid: {', '.join(PREPROCESS)}."
                         + did_you_mean(preprocess, PREPROCESS))
    source = str(source)
    key = source.lower().replace("_", "-")
    gen = torch.Generator().manual_seed(int(seed))

    if key in DATASETS and not Path(source).is_file():
        name, raw_max = key, _RAW_MAX[key]
        root = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR
        x, y, xt, yt = DATASETS[key](root, download)
    else:
        path = Path(source).expanduser()
        if not (path.exists() or path.suffix.lower() in SUPPORTED_SUFFIXES or os.sep in source or "/" in source):
            raise ValueError(f"unknown dataset {source!r} and no such file; valid names: "
                             f"{', '.join(DATASETS)}, or a path to a {'/'.join(SUPPORTED_SUFFIXES)} file."
                             + did_you_mean(key, DATASETS))
        name, raw_max = path.name, None
        x, y = load_file(path)
        xt = yt = None

    n = len(x)
    perm = torch.randperm(n, generator=gen)
    if xt is None:
        n_val, n_test = _split_sizes(n, (val_fraction, test_fraction), name)
        test, test_y = _take(x, y, perm[:n_test])
        val, val_y = _take(x, y, perm[n_test:n_test + n_val])
        train, train_y = _take(x, y, perm[n_test + n_val:])
    else:
        (n_val,) = _split_sizes(n, (val_fraction,), name)
        val, val_y = _take(x, y, perm[:n_val])
        train, train_y = _take(x, y, perm[n_val:])
        test, test_y = xt, yt
    del x
    parts = [train, val, test]  # fresh tensors: safe to modify in place

    if preprocess == "standardize":
        _standardize(parts)
    elif preprocess != "none":
        _scale(parts, raw_max)
        if preprocess == "binarize":
            train, val, test = (torch.bernoulli(p, generator=gen) for p in parts)
        elif preprocess == "dynamic-binarize":
            val, test = (torch.bernoulli(p, generator=gen) for p in parts[1:])

    return DataSplits(train=train, val=val, test=test, train_labels=train_y, val_labels=val_y,
                      test_labels=test_y, name=name, preprocess=preprocess)
