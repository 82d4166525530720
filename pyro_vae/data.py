"""Datasets held in memory as float32 CPU tensors: load, split, preprocess once, keep labels.

``load_dataset(source)`` takes a name from :data:`DATASETS` or a path to a user file
(``.npy``, ``.npz``, ``.csv``, ``.pt``) and returns a :class:`DataSplits`. Its
:class:`Preprocessing` is fitted once, on the raw training split, applied to every
split, kept with them (and in a run's checkpoint) and applied unchanged to any
file a saved run evaluates or encodes (:func:`load_data_file`).

Preprocessings (``data.preprocess``)::

    none               x                                   log|J| = 0
    scale              (x - lo) / (hi - lo), clamped to [0, 1]; lo, hi: 0 and the raw maximum of a
                       built-in set, else the training split's min and max (identity if already in [0, 1])
                                                           log|J| = -D log(hi - lo)
    standardize        (x - mean_d) / std_d per feature d (a constant feature is only centred)
                                                           log|J| = -sum_d log std_d
    binarize           scale, then one seeded Bernoulli draw of every split (not invertible)
    dynamic-binarize   scale, a fresh draw of the training split each epoch, one of the others

``J`` is the Jacobian of the map, so ``log p_raw(x) = log p_model(x') + log|J|``
for a density; a probability mass (Bernoulli, counts) is unchanged by a change
of units.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ._registry import PREPROCESSINGS, did_you_mean

__all__ = ["DataSplits", "Preprocessing", "load_dataset", "load_file", "load_data_file", "load_digits", "source_file",
           "load_torchvision", "as_tensors", "fit_preprocessing", "DATASETS", "PREPROCESS", "PREPROCESSINGS",
           "SUPPORTED_SUFFIXES", "DEFAULT_DATA_DIR"]

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
    preprocessing: "Preprocessing" = None  # the map from the raw data, fitted on the raw training split
    clamped: dict = field(default_factory=dict)  # split -> values 'scale' clamped into [0, 1] (outside the map)

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
    0..255, labels [N]. Files live under ``root/<ClassName>/raw``.

    Without ``download``, the raw ``.gz`` archives found there are verified (MD5) and
    unpacked by torchvision's own utilities, so no network is needed; a missing file is named.
    """
    import torchvision.datasets as tvd

    key = name.lower().replace("_", "-")
    if key not in _TORCHVISION_CLASSES:
        raise ValueError(f"unknown torchvision dataset {name!r}; valid: {sorted(_TORCHVISION_CLASSES)}."
                         + did_you_mean(key, _TORCHVISION_CLASSES))
    cls = getattr(tvd, _TORCHVISION_CLASSES[key])
    root = Path(root).expanduser()
    missing = [] if download else _unpack_archives(cls, root)
    if missing:
        raise FileNotFoundError(
            f"{key} not found under {root}: {'; '.join(missing)} (expected in {root / cls.__name__ / 'raw'}); "
            "put the archives there, or pass --download (download=True) to fetch them")
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as err:
        if download or "not found" not in str(err).lower():
            raise
        raise FileNotFoundError(f"{key} not found under {root / cls.__name__ / 'raw'}; pass --download "
                                "(or download=True) to fetch it") from err
    x = ds.data.unsqueeze(1).to(torch.float32)  # no PIL: read the uint8 tensor directly
    return x, ds.targets.clone().long()


def _unpack_archives(cls, root: Path) -> list[str]:
    """Unpack the raw archives of a torchvision dataset class that are present and verify; what is missing."""
    from torchvision.datasets.utils import check_integrity, extract_archive

    raw, missing = root / cls.__name__ / "raw", []
    for filename, md5 in cls.resources:
        archive, unpacked = raw / filename, raw / Path(filename).stem
        if unpacked.is_file():
            continue
        if not archive.is_file():
            missing.append(f"missing {filename}")
        elif not check_integrity(str(archive), md5):
            missing.append(f"{filename} is damaged (its MD5 checksum does not match; download it again)")
        else:
            try:
                extract_archive(str(archive), str(raw))
            except OSError as err:
                raise OSError(f"cannot unpack {archive} ({err.strerror or err}); copy the archives to a writable "
                              "--data-dir") from err
    return missing


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


@dataclass
class Preprocessing:
    """Raw data -> model input: ``x' = (x - shift) / scale``, clamped to [0, 1] where ``clamp``.

    Fitted once on the raw training split (:func:`fit_preprocessing`); binarisation
    (``binarize``: ``"static"`` or ``"dynamic"``) is a draw on top of the map and
    is not part of ``__call__``. ``shift`` and ``scale`` are 0-d or per feature
    (``[*data_shape]``).
    """

    name: str
    shift: Tensor
    scale: Tensor
    clamp: bool = False
    binarize: str | None = None

    def __call__(self, x: Tensor) -> Tensor:
        x = (x - self.shift) / self.scale
        return x.clamp(0.0, 1.0) if self.clamp else x

    def binarized(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A Bernoulli draw of mapped ``x`` where this preprocessing binarises (as the held-out splits were), else ``x``."""
        return torch.bernoulli(x, generator=generator) if self.binarize else x

    def clamped(self, x: Tensor) -> int:
        """How many values of raw ``x`` the map clamps into [0, 1] (the Jacobian does not hold for them)."""
        if not self.clamp:
            return 0
        y = (x - self.shift) / self.scale
        return int(((y < 0) | (y > 1)).sum())

    def log_abs_det_jacobian(self, data_shape) -> float:
        """``log |d x' / d x|`` per data point: ``-sum log scale`` over the ``prod(data_shape)`` features."""
        log_scale = torch.log(self.scale.double())
        return -float(log_scale.expand(tuple(data_shape)).sum()) if log_scale.dim() else \
            -float(log_scale) * math.prod(data_shape)

    def state(self) -> dict:
        """Tensors, strings and booleans only, as a checkpoint stores them."""
        state = {"name": self.name, "shift": self.shift, "scale": self.scale, "clamp": self.clamp}
        if self.binarize is not None:
            state["binarize"] = self.binarize
        return state

    @classmethod
    def from_state(cls, state: dict, name: str | None = None) -> "Preprocessing":
        """Undo :meth:`state`. A checkpoint of pyro_vae 0.1.0 stored no ``name`` (given here) and masked its
        constant features to 0 (here they are centred, as :func:`fit_preprocessing` does)."""
        state = dict(state)
        constant = state.pop("constant", None)
        if constant is not None and bool(constant.any()):
            state["scale"] = torch.where(constant, torch.ones_like(state["scale"]), state["scale"])
        state.setdefault("name", name or "none")
        if "binarize" not in state:
            state["binarize"] = {"binarize": "static", "dynamic-binarize": "dynamic"}.get(state["name"])
        return cls(**state)


def _unit_range(name: str, raw: Tensor, raw_max: float | None, binarize: str | None = None) -> Preprocessing:
    """Into [0, 1]: divide by a known raw maximum, else min-max of the training split (if not already inside)."""
    if raw_max is not None:
        return Preprocessing(name, torch.zeros(()), torch.tensor(float(raw_max)), True, binarize)
    lo, hi = raw.min(), raw.max()
    if lo < 0 or hi > 1:
        return Preprocessing(name, lo, torch.clamp(hi - lo, min=torch.finfo(torch.float32).tiny), True, binarize)
    return Preprocessing(name, torch.zeros(()), torch.ones(()), True, binarize)


def _standard(raw: Tensor, raw_max=None) -> Preprocessing:
    """Per feature, mean and standard deviation of the training split; a constant feature is only centred."""
    std, mean = torch.std_mean(raw, dim=0, correction=0)
    return Preprocessing("standardize", mean, torch.where(std < _STD_FLOOR, torch.ones_like(std), std))


PREPROCESSINGS.register("none", lambda raw, raw_max=None: Preprocessing("none", torch.zeros(()), torch.ones(())),
                        doc="the data as given")
PREPROCESSINGS.register("scale", partial(_unit_range, "scale"), doc="into [0, 1]: the raw maximum, else min-max")
PREPROCESSINGS.register("binarize", partial(_unit_range, "binarize", binarize="static"),
                        doc="scale, then one seeded Bernoulli draw of every split")
PREPROCESSINGS.register("dynamic-binarize", partial(_unit_range, "dynamic-binarize", binarize="dynamic"),
                        doc="scale; a fresh Bernoulli draw of the training split each epoch (Burda et al. 2016)")
PREPROCESSINGS.register("standardize", _standard, doc="zero mean and unit variance per feature")
PREPROCESS = tuple(PREPROCESSINGS.names())


def fit_preprocessing(name: str, raw_train: Tensor, raw_max: float | None = None) -> Preprocessing:
    """The preprocessing ``name`` fitted on the raw training split (``raw_max``: a built-in set's known maximum)."""
    return PREPROCESSINGS[name].factory(raw_train, raw_max=raw_max)


def as_tensors(data) -> tuple:
    """``x`` or ``(x, y, ...)`` as a tuple of tensors sharing their first dimension; ``x`` may be a
    :class:`~pyro_vae.sources.Source` (rows read a minibatch at a time) or a ``torch.utils.data.Dataset``
    (wrapped as a :class:`~pyro_vae.sources.DatasetSource`, its labels, if any, not passed on)."""
    from .sources import DatasetSource, Source

    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Source):
        data = DatasetSource(data)
    tensors = (data,) if isinstance(data, (torch.Tensor, Source)) else tuple(data)
    if not tensors or not all(isinstance(t, (torch.Tensor, Source)) for t in tensors):
        raise TypeError("data must be a torch.Tensor [N, ...] (or a tuple of tensors sharing the first dimension N), "
                        "a pyro_vae.sources.Source or a torch Dataset; convert with torch.as_tensor(x, "
                        "dtype=torch.float32)")
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"data tensors must share their first dimension, got sizes {[t.shape[0] for t in tensors]}")
    return tensors


def source_file(source: str) -> Path | None:
    """The file a ``data.source`` names (as given, not yet resolved), or ``None`` for a built-in data set."""
    source = str(source)
    if source.lower().replace("_", "-") in DATASETS and not Path(source).is_file():
        return None
    return Path(source).expanduser()


def load_dataset(source: str, *, data_dir=None, download: bool = False, preprocess: str = "scale",
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 preprocessing: Preprocessing | None = None) -> DataSplits:
    """Load a named dataset or a user file, split it with a seeded permutation, preprocess.

    Torchvision datasets keep their official test set (``test_fraction`` unused) and take
    ``val_fraction`` of the official train set as validation; others split by both fractions.
    The preprocessing ``preprocess`` is fitted on the raw training split, unless a fitted
    one is given (a saved run's, applied unchanged).
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
    pre = fit_preprocessing(preprocess, train, raw_max) if preprocessing is None else preprocessing
    clamped = {split: pre.clamped(part) for split, part in (("val", val), ("test", test)) if pre.clamp}
    train, val, test = (pre(p) for p in (train, val, test))
    if pre.binarize == "static":
        train, val, test = (torch.bernoulli(p, generator=gen) for p in (train, val, test))
    elif pre.binarize == "dynamic":
        val, test = (torch.bernoulli(p, generator=gen) for p in (val, test))
    return DataSplits(train=train, val=val, test=test, train_labels=train_y, val_labels=val_y,
                      test_labels=test_y, name=name, preprocess=pre.name, preprocessing=pre,
                      clamped={k: v for k, v in clamped.items() if v})


def load_data_file(path, data_shape, preprocessing: Preprocessing | None = None) -> tuple:
    """A raw user file (:func:`load_file`) mapped like the training data: ``(x, labels | None)``.

    Rows holding the right number of values are reshaped to ``data_shape``;
    without ``preprocessing`` the values are returned as stored. Binarisation is
    not applied here (see :meth:`Preprocessing.binarized`).
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
