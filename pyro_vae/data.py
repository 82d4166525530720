"""Datasets as float32 CPU tensors, or streamed from a file a minibatch at a time: load, split, preprocess once.

``load_dataset(source)`` takes a name from :data:`DATASETS` or a path to a user file
(``.npy``, ``.npz``, ``.csv``, ``.pt``, ``.h5ad``, or a folder of images) and returns a
:class:`DataSplits`. Its :class:`Preprocessing` is fitted once, on the raw training
split, applied to every split, kept with them (and in a run's checkpoint) and applied
unchanged to any file a saved run evaluates or encodes (:func:`load_data_file`).

Streamed formats (:func:`open_source`) give splits that are
:class:`~pyro_vae.sources.SubsetSource` s of the file, by the same seeded permutation
as a file read whole, each split's rows in increasing order (what backed reads are
fast at); their preprocessing is fitted in one pass over the training split and
applied to each minibatch as it is read::

    .npy                 memory-mapped with mmap = true, or when larger than MMAP_THRESHOLD
    .npz (SciPy sparse)  scipy.sparse.save_npz, told from a NumPy archive by its arrays; rows densified per minibatch
    .h5ad                anndata, in memory or backed ("r"): X or a layer, a var subset, obs columns as labels
    a folder of images   torchvision's ImageFolder (ROOT/CLASS/IMAGE), resized to image_size, raw values 0..255

Preprocessings (``data.preprocess``)::

    none               x                                   log|J| = 0
    scale              (x - lo) / (hi - lo), clamped to [0, 1]; lo, hi: 0 and the raw maximum of a
                       built-in set, else the training split's min and max (identity if already in [0, 1])
                                                           log|J| = -D log(hi - lo)
    standardize        (x - mean_d) / std_d per feature d (a constant feature is only centred)
                                                           log|J| = -sum_d log std_d
    binarize           scale, then one seeded Bernoulli draw of every split (not invertible); a streamed
                       split's draw is keyed by seed, row and feature, so every read sees the same one
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
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._registry import PREPROCESSINGS, did_you_mean
from .sources import AnnDataSource, ArraySource, DatasetSource, Source, SparseSource, SubsetSource, is_source

__all__ = ["DataSplits", "Preprocessing", "load_dataset", "load_file", "load_data_file", "load_digits", "source_file",
           "load_torchvision", "as_tensors", "fit_preprocessing", "open_source", "Opened", "MissingPackage",
           "KeyedBernoulli", "DATASETS", "PREPROCESS", "PREPROCESSINGS", "SUPPORTED_SUFFIXES", "STREAMED_SUFFIXES",
           "MMAP_THRESHOLD", "DEFAULT_DATA_DIR"]

SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv", ".pt")  # what load_file reads whole
STREAMED_SUFFIXES = (".h5ad",)  # read only through open_source (besides .npy, .npz and folders of images)
MMAP_THRESHOLD = 2 * 2 ** 30  # bytes: a larger .npy is memory-mapped unless data.mmap = false
DEFAULT_DATA_DIR = Path(os.environ.get("PYRO_VAE_DATA_DIR", "~/.cache/pyro_vae")).expanduser()

_DATA_KEYS = ("x", "data", "X")
_LABEL_KEYS = ("y", "labels")
_STD_FLOOR = 1e-6


@dataclass(repr=False)
class DataSplits:
    """Train/validation/test tensors [N, *data_shape] float32 on CPU (or :class:`~pyro_vae.sources.Source` s of
    a streamed file), labels (LongTensor [N]) or None."""

    train: Tensor | Source
    val: Tensor | Source
    test: Tensor | Source
    train_labels: Tensor | None
    val_labels: Tensor | None
    test_labels: Tensor | None
    name: str
    preprocess: str
    preprocessing: "Preprocessing" = None  # the map from the raw data, fitted on the raw training split
    clamped: dict = field(default_factory=dict)  # split -> values 'scale' clamped into [0, 1] (outside the map)
    notes: list = field(default_factory=list)  # how the data were read, where a run should say so
    fingerprint: dict | None = None  # a backed file's path, size and mtime (Source.fingerprint), checked on resume

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28) or (D,)."""
        return tuple(self.train.shape[1:])

    def train_epoch(self, generator: torch.Generator | None = None) -> Tensor:
        """Training tensor for one epoch: a fresh Bernoulli draw of the [0,1] intensities under
        'dynamic-binarize' (Burda et al. 2016), else `self.train` itself (no copy). A streamed split draws
        each minibatch as it is read."""
        if self.preprocess == "dynamic-binarize":
            if is_source(self.train):
                return self.train.map(partial(torch.bernoulli, generator=generator))
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


def _torchvision_raw(name: str, root, download: bool = False, train: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`load_torchvision`'s images as stored, uint8 [N, 1, 28, 28] (a quarter of the float32 size)."""
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
    return ds.data.unsqueeze(1), ds.targets.clone().long()  # no PIL: the uint8 tensor directly


def load_torchvision(name: str, root, download: bool = False, train: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST / Fashion-MNIST / KMNIST official train or test set: x [N, 1, 28, 28] float32 raw
    0..255, labels [N]. Files live under ``root/<ClassName>/raw``.

    Without ``download``, the raw ``.gz`` archives found there are verified (MD5) and
    unpacked by torchvision's own utilities, so no network is needed; a missing file is named.
    """
    x, y = _torchvision_raw(name, root, download, train)
    return x.to(torch.float32), y


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
    x, y = _torchvision_raw(name, root, download=download, train=True)
    xt, yt = _torchvision_raw(name, root, download=download, train=False)
    return x, y, xt, yt  # uint8: load_dataset splits them and converts each split to float32 after


# name -> loader(root, download) -> (x, labels, official_test_x | None, official_test_labels | None), x and
# official_test_x raw values of any real dtype (load_dataset converts each split to float32)
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
            if {"format", "shape", "data"} <= set(arrays) and arrays["format"].ndim == 0:
                raise _bad(path, "holds a SciPy sparse matrix (scipy.sparse.save_npz), which is read a minibatch at "
                           "a time, never whole", "open it with pyro_vae.data.open_source, or train on it by path")
            data, labels = _pick(path, arrays)
        else:
            data = obj
    x = _as_data(path, data)
    y = None if labels is None else _as_labels(path, labels, len(x))
    return x, y


# --------------------------------------------------------------------------- streamed files

class MissingPackage(RuntimeError, ImportError):
    """A format needs an optional package that is not installed (the message gives the install command)."""


class Opened(NamedTuple):
    """A user file as :func:`open_source` opens it."""

    source: Source
    labels: Tensor | None  # an .h5ad obs column's codes, an image folder's classes, or None
    raw_max: float | None  # a known largest raw value ('scale' divides by it): 255 for images
    note: str | None  # how the file is read, where a run should say so


# which format each option applies to (an option set for another format is refused, naming it)
_APPLIES = {"mmap": (".npy", "a .npy file"), "backed": (".h5ad", ".h5ad files"), "layer": (".h5ad", ".h5ad files"),
            "var_subset": (".h5ad", ".h5ad files"), "labels": (".h5ad", ".h5ad files (an obs column)"),
            "groups": (".h5ad", ".h5ad files (an obs column)"), "image_size": ("folder", "a folder of images"),
            "channels": ("folder", "a folder of images")}


def open_source(path, *, mmap: bool | None = None, backed: bool | None = None, layer: str | None = None,
                var_subset: str | None = None, labels: str | None = None, groups: str | None = None,
                image_size=None, channels: int | None = None, chunk: int | None = None,
                strict: bool = True) -> Opened | None:
    """A user file as a :class:`~pyro_vae.sources.Source` read a minibatch at a time, or ``None`` for a file
    :func:`load_file` reads whole (a dense .npy below :data:`MMAP_THRESHOLD`, a NumPy .npz, .csv, .pt).

    ``mmap``: memory-map a .npy (``None``: above the threshold); ``backed``: read an .h5ad's X from disk
    (``anndata.read_h5ad(path, backed="r")``); ``layer``, ``var_subset``: X or a named layer, the variables
    where a boolean var column is true; ``labels`` or ``groups``: an obs column as integer labels (``groups``
    wins); ``image_size`` (``S`` or ``[H, W]``) and ``channels`` (1 or 3; unset: the first image's): how a
    folder's images are read; ``chunk``: rows shuffled together (a backed .h5ad: 4096 unless set).
    ``strict``: refuse an option that does not apply to the file's format (else ignore it, as a saved run's
    options are for a file of another format).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file; check the path")
    kind = "folder" if path.is_dir() else path.suffix.lower()
    given = {"mmap": mmap, "backed": backed, "layer": layer, "var_subset": var_subset, "labels": labels,
             "groups": groups, "image_size": image_size, "channels": channels}
    for key, value in given.items():
        if value not in (None, False) and _APPLIES[key][0] != kind:
            if strict:
                what = "a folder" if kind == "folder" else f"a {kind or '(no suffix)'} file"
                raise _bad(path, f"data.{key} applies to {_APPLIES[key][1]} only, and this is {what}",
                           f"unset data.{key}")
            given[key] = None
    opened = None
    if kind == "folder":
        opened = _open_images(path, given["image_size"], given["channels"])
    elif kind == ".h5ad":
        opened = _open_h5ad(path, given)
    elif kind == ".npz":
        matrix = _sparse_archive(path)
        if matrix is not None:
            if 0 in matrix.shape:
                raise _bad(path, f"the sparse matrix is empty (shape {tuple(matrix.shape)})",
                           "provide at least one row with at least one feature")
            if matrix.dtype.kind not in "biuf":
                raise _bad(path, f"the sparse matrix has non-numeric dtype {matrix.dtype}", "store numbers")
            opened = Opened(SparseSource(matrix, name=path.name, path=path), None, None, None)
    elif kind == ".npy" and path.is_file():
        size = path.stat().st_size
        if given["mmap"] or (given["mmap"] is None and size > MMAP_THRESHOLD):
            opened = Opened(_open_npy(path), None, None, None if given["mmap"] else (
                f"data: {path.name} is {_bytes(size)}, over the {_bytes(MMAP_THRESHOLD)} threshold: memory-mapped, "
                "each minibatch copied from the file (data.mmap = false reads it whole)"))
    if opened is None:
        if chunk is not None and strict:
            raise _bad(path, "data.chunk applies to streamed data (a memory-mapped .npy, a sparse .npz, an .h5ad, "
                       "a folder of images), and this file is read whole", "unset data.chunk, or set data.mmap = true")
        return None
    if chunk is not None:
        opened.source.chunk = int(chunk)
    return opened


def _bytes(n: int) -> str:
    """``n`` bytes for a reader: ``1000 B``, ``23.6 KiB``, ``2 GiB``."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def _open_npy(path: Path) -> ArraySource:
    if path.stat().st_size == 0:
        raise _bad(path, "file is empty (0 bytes)", "write the data into it or choose another file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise _bad(path, f"could not be memory-mapped by numpy.load ({type(err).__name__}: {err})",
                   "save a numeric array with numpy.save") from err
    if array.dtype.kind not in "biuf":
        raise _bad(path, f"data has non-numeric dtype {array.dtype}", "store numbers (int, float or bool)")
    if array.ndim < 2:
        raise _bad(path, f"data has shape {array.shape} but must be [N, ...] with at least one feature dim",
                   "reshape to [N, 1] for a single feature")
    if array.size == 0:
        raise _bad(path, f"data is empty (shape {array.shape}, zero rows or features)",
                   "provide at least one sample with at least one feature")
    return ArraySource(array, name=path.name, path=path)


def _sparse_archive(path: Path):
    """The SciPy sparse matrix a ``scipy.sparse.save_npz`` archive holds (arrays ``format``, ``shape``, ``data``,
    ...), or ``None`` for a NumPy archive of arrays (which :func:`load_file` reads, naming any problem)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = set(archive.files)
            if not {"format", "shape", "data"} <= files or archive["format"].ndim != 0:
                return None
    except Exception:
        return None
    import scipy.sparse as sp

    try:
        return sp.load_npz(path)
    except Exception as err:
        raise _bad(path, f"holds the arrays of a SciPy sparse matrix ({', '.join(sorted(files))}) that "
                   f"scipy.sparse.load_npz cannot read ({type(err).__name__}: {err})",
                   "save it with scipy.sparse.save_npz") from err


def _open_h5ad(path: Path, given: dict) -> Opened:
    try:
        import anndata
    except ImportError:
        raise MissingPackage(f"{path}: reading .h5ad files needs the anndata package, which is not installed; "
                             "pip install \"pyro-vae[anndata]\" (or pip install anndata)") from None
    try:
        adata = anndata.read_h5ad(path, backed="r" if given["backed"] else None)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise _bad(path, f"could not be read by anndata.read_h5ad ({type(err).__name__}: {first})",
                   "write it with AnnData.write_h5ad") from err
    try:
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise _bad(path, f"is empty ({adata.n_obs} observations x {adata.n_vars} variables)",
                       "provide at least one observation with at least one variable")
        source = AnnDataSource(adata, layer=given["layer"], var_subset=given["var_subset"], name=path.name,
                               path=path)
        if source.columns is not None and len(source.columns) == 0:
            raise _bad(path, f"var column {given['var_subset']!r} is false for every variable",
                       "choose a column that selects some (e.g. highly_variable after selecting genes)")
        column, what = (given["groups"], "groups") if given["groups"] else (given["labels"], "labels")
        labels = None if column is None else source.obs_column(column, what)[0]
    except Exception:
        if adata.isbacked:
            adata.file.close()
        raise
    return Opened(source, labels, None, None)


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class _ImagePoint:
    """An image file as a float32 ``[C, H, W]`` tensor of raw values 0..255: converted to ``mode`` ("L" or
    "RGB"), resized to ``size`` (``(H, W)``, bilinear) where given."""

    def __init__(self, mode: str, size: tuple[int, int] | None):
        self.mode, self.size = mode, size

    def __call__(self, file) -> Tensor:
        from PIL import Image

        with Image.open(file) as image:
            image = image.convert(self.mode)
            if self.size is not None and image.size != (self.size[1], self.size[0]):
                image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))
        return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()


def _open_images(path: Path, image_size, channels) -> Opened:
    """A folder of images in one sub-folder per class (torchvision's ``ImageFolder``), decoded per minibatch."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    fix = f"put the images ({', '.join(IMG_EXTENSIONS[:4])}, ...) in one sub-folder per class: {path}/CLASS/NAME.png"
    try:
        folder = ImageFolder(str(path), allow_empty=True)
    except FileNotFoundError:
        raise _bad(path, "holds no class sub-folders of images", fix) from None
    if not folder.samples:
        raise _bad(path, f"holds no images in its sub-folders ({', '.join(folder.classes)})", fix)
    size = None if image_size is None else (
        (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size))
    seen: dict = {}
    for file, _ in (folder.samples if size is None else folder.samples[:1]):  # headers only: nothing decoded
        try:
            with Image.open(file) as image:
                seen.setdefault((image.size, "L" if image.mode in _GRAY_MODES else "RGB"), Path(file))
        except (UnidentifiedImageError, OSError) as err:
            raise _bad(path, f"{file} is not an image PIL can read ({err})", "remove it or replace it") from None
        sizes = {s for s, _ in seen}
        if len(sizes) > 1:
            (a, _), first = next(iter(seen.items()))
            (b, _), other = next((k, f) for k, f in seen.items() if k[0] != a)
            raise _bad(path, f"holds images of different sizes ({first.name} is {a[1]}x{a[0]}, {other.name} is "
                       f"{b[1]}x{b[0]}, height x width)", "set data.image_size = [height, width] (--image-size H,W) "
                       "to resize them all")
    first_mode = next(iter(seen))[1]
    mode = first_mode if channels is None else ("L" if int(channels) == 1 else "RGB")
    folder.loader = _ImagePoint(mode, size)
    return Opened(DatasetSource(folder, name=path.name), torch.as_tensor(folder.targets).long(), 255.0, None)


# a static binarisation of a streamed split: a counter-based draw (the "lowbias32" integer hash, C. Wellons),
# computed in int64 without overflow, so a row's draw depends on (key, row, feature) only, never on the minibatch
_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2**32`` for ``x`` in [0, 2**32), in two 16-bit halves of ``c`` so no product leaves int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniform(key: int, rows: Tensor, features: int) -> Tensor:
    """Uniform draws on [0, 1) ``[len(rows), features]`` (24 bits each) that depend only on ``key``, the row
    and the feature: the same values whichever rows are read together."""
    row = _hash32((rows.long() & _MASK32) ^ _hash32(torch.tensor(int(key) & _MASK32)))
    feature = _hash32(torch.arange(features, dtype=torch.long) ^ 0x5BD1E995)
    return (_hash32(row[:, None] ^ feature[None, :]) >> 8).to(torch.float32) * 2.0 ** -24


class KeyedBernoulli(Source):
    """One Bernoulli draw of every value of ``base`` (probabilities in [0, 1]), keyed by ``key``, row and feature
    (:func:`keyed_uniform`): a static binarisation read a minibatch at a time, the same draw at every read."""

    def __init__(self, base: Source, key: int):
        super().__init__(len(base), base.point_shape, base.name)
        self.base, self.key, self.chunk = base, int(key), base.chunk

    def _read(self, rows):
        p = self.base.to("cpu")[rows]
        u = keyed_uniform(self.key, torch.from_numpy(rows), math.prod(self.point_shape)).reshape(p.shape)
        return (u < p).to(torch.float32)

    def fingerprint(self):
        return self.base.fingerprint()


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


def _take(x: Tensor | Source, y: Tensor | None, idx: Tensor, split: str = "") -> tuple[Tensor | Source, Tensor | None]:
    if is_source(x):  # the split's rows in increasing order, what backed reads are fast at; nothing is copied
        idx = idx.sort().values
        return SubsetSource(x, idx, name=f"{x.name} ({split} split)"), (None if y is None else y[idx])
    return x[idx], (None if y is None else y[idx])


@dataclass
class Preprocessing:
    """Raw data -> model input: ``x' = (x - shift) / scale``, clamped to [0, 1] where ``clamp``.

    Fitted once on the raw training split (:func:`fit_preprocessing`); binarisation
    (``binarize``: ``"static"`` or ``"dynamic"``) is a draw on top of the map and
    is not part of ``__call__``. ``shift`` and ``scale`` are 0-d or per feature
    (``[*data_shape]``). A :class:`~pyro_vae.sources.Source` is mapped a minibatch at a time as it is read.
    """

    name: str
    shift: Tensor
    scale: Tensor
    clamp: bool = False
    binarize: str | None = None

    def __call__(self, x: Tensor | Source) -> Tensor | Source:
        if is_source(x):
            return x.map(self)
        x = (x - self.shift.to(x.device)) / self.scale.to(x.device)  # .to: the same tensor on its own device
        return x.clamp(0.0, 1.0) if self.clamp else x

    def _map_owned(self, x: Tensor) -> tuple[Tensor, int]:
        """``(self(x), how many values the clamp moved)`` for a float tensor the caller owns, mapped in place
        (bitwise the values of ``__call__``, without its temporaries) where the map's dtype allows it."""
        shift, scale = self.shift.to(x.device), self.scale.to(x.device)
        if x.dtype != torch.result_type(x, shift) or x.dtype != torch.result_type(x, scale) \
                or tuple(torch.broadcast_shapes(x.shape, shift.shape, scale.shape)) != tuple(x.shape):
            x = (x - shift) / scale
        else:
            x = x.sub_(shift).div_(scale)
        if not self.clamp:
            return x, 0
        count = sum(int(((b < 0) | (b > 1)).sum()) for b in x.split(1024))  # in blocks: a bool sum is int64-sized
        return x.clamp_(0.0, 1.0), count

    def binarized(self, x: Tensor | Source, generator: torch.Generator | None = None) -> Tensor | Source:
        """A Bernoulli draw of mapped ``x`` where this preprocessing binarises (as the held-out splits were), else
        ``x``. A source gets a draw keyed by its rows (:class:`KeyedBernoulli`, the key drawn from ``generator``)."""
        if not self.binarize:
            return x
        if is_source(x):
            return KeyedBernoulli(x, int(torch.randint(2 ** 31, (), generator=generator)))
        return torch.bernoulli(x, generator=generator)

    def clamped(self, x: Tensor | Source) -> int:
        """How many values of raw ``x`` the map clamps into [0, 1] (the Jacobian does not hold for them)."""
        if not self.clamp:
            return 0
        if is_source(x):
            return sum(self.clamped(block) for _, block in x.blocks())
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


def _min_max(raw: Tensor | Source) -> tuple[Tensor, Tensor]:
    """The smallest and largest value (0-d tensors); a source in one pass over its blocks."""
    if not is_source(raw):
        return raw.min(), raw.max()
    lo = hi = None
    for _, block in raw.blocks():
        b_lo, b_hi = block.min(), block.max()
        lo, hi = (b_lo, b_hi) if lo is None else (torch.minimum(lo, b_lo), torch.maximum(hi, b_hi))
    return lo, hi


def _std_mean(raw: Tensor | Source) -> tuple[Tensor, Tensor]:
    """Per-feature standard deviation (no correction) and mean over the rows; a source in one pass over its blocks,
    merging each block's float64 mean and sum of squared deviations (Chan, Golub & LeVeque 1979)."""
    if not is_source(raw):
        return torch.std_mean(raw, dim=0, correction=0)
    n, mean, m2 = 0, None, None
    for _, block in raw.blocks():
        b = block.double()
        k, b_mean = len(b), b.mean(0)
        b_m2 = ((b - b_mean) ** 2).sum(0)
        if mean is None:
            n, mean, m2 = k, b_mean, b_m2
            continue
        delta, total = b_mean - mean, n + k
        mean = mean + delta * (k / total)
        m2 = m2 + b_m2 + delta ** 2 * (n * k / total)
        n = total
    return (m2 / n).sqrt().float(), mean.float()


def _unit_range(name: str, raw: Tensor, raw_max: float | None, binarize: str | None = None) -> Preprocessing:
    """Into [0, 1]: divide by a known raw maximum, else min-max of the training split (if not already inside)."""
    if raw_max is not None:
        return Preprocessing(name, torch.zeros(()), torch.tensor(float(raw_max)), True, binarize)
    lo, hi = _min_max(raw)
    if lo < 0 or hi > 1:
        return Preprocessing(name, lo, torch.clamp(hi - lo, min=torch.finfo(torch.float32).tiny), True, binarize)
    return Preprocessing(name, torch.zeros(()), torch.ones(()), True, binarize)


def _standard(raw: Tensor, raw_max=None) -> Preprocessing:
    """Per feature, mean and standard deviation of the training split; a constant feature is only centred."""
    std, mean = _std_mean(raw)
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


def fit_preprocessing(name: str, raw_train: Tensor | Source, raw_max: float | None = None) -> Preprocessing:
    """The preprocessing ``name`` fitted on the raw training split (``raw_max``: a built-in set's known maximum);
    the built-in ones fit a :class:`~pyro_vae.sources.Source` in one pass over its blocks."""
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
                 preprocessing: Preprocessing | None = None, **options) -> DataSplits:
    """Load a named dataset or a user file, split it with a seeded permutation, preprocess.

    Torchvision datasets keep their official test set (``test_fraction`` unused) and take
    ``val_fraction`` of the official train set as validation; others split by both fractions.
    The preprocessing ``preprocess`` is fitted on the raw training split, unless a fitted
    one is given (a saved run's, applied unchanged). ``options``: how a file is read
    (:func:`open_source`); a streamed file's splits are sources of it (see the module docstring).
    """
    if preprocess not in PREPROCESS:
        raise ValueError(f"unknown preprocess {preprocess!r}; valid: {', '.join(PREPROCESS)}."
                         + did_you_mean(preprocess, PREPROCESS))
    source = str(source)
    key = source.lower().replace("_", "-")
    gen = torch.Generator().manual_seed(int(seed))
    notes: list[str] = []

    if key in DATASETS and not Path(source).is_file():
        name, raw_max = key, _RAW_MAX[key]
        for option, value in options.items():
            if value not in (None, False):
                raise ValueError(f"data.{option} applies to data files, and {source!r} is a built-in data set; "
                                 f"unset data.{option}")
        root = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR
        x, y, xt, yt = DATASETS[key](root, download)
    else:
        path = Path(source).expanduser()
        if not (path.exists() or path.suffix.lower() in SUPPORTED_SUFFIXES + STREAMED_SUFFIXES or os.sep in source
                or "/" in source):
            suffixes = "/".join(SUPPORTED_SUFFIXES + STREAMED_SUFFIXES)
            raise ValueError(f"unknown dataset {source!r} and no such file; valid names: {', '.join(DATASETS)}, or a "
                             f"path to a {suffixes} file or a folder of images." + did_you_mean(key, DATASETS))
        name, raw_max = path.name, None
        opened = open_source(path, **options)
        if opened is None:
            x, y = load_file(path)
        else:
            x, y, raw_max, note = opened
            notes += [note] if note else []
        xt = yt = None

    n = len(x)
    perm = torch.randperm(n, generator=gen)
    if xt is None:
        n_val, n_test = _split_sizes(n, (val_fraction, test_fraction), name)
        test, test_y = _take(x, y, perm[:n_test], "test")
        val, val_y = _take(x, y, perm[n_test:n_test + n_val], "validation")
        train, train_y = _take(x, y, perm[n_test + n_val:], "training")
    else:
        (n_val,) = _split_sizes(n, (val_fraction,), name)
        val, val_y = _take(x, y, perm[:n_val], "validation")
        train, train_y = _take(x, y, perm[n_val:], "training")
        test, test_y = xt, yt
    fingerprint = x.fingerprint() if is_source(x) else None
    shared_test = xt is not None and xt.dtype == torch.float32  # a loader's own tensor: mapped in a copy
    del x, xt, perm
    if is_source(train):
        pre = fit_preprocessing(preprocess, train, raw_max) if preprocessing is None else preprocessing
        clamped = {split: pre.clamped(part) for split, part in (("val", val), ("test", test)) if pre.clamp}
        train, val, test = (pre(p) for p in (train, val, test))  # mapped as each minibatch is read
    else:  # each split is a tensor of ours (a copy by _take, or the official test set): converted, mapped in place
        train, val, test = train.to(torch.float32), val.to(torch.float32), test.to(torch.float32, copy=shared_test)
        pre = fit_preprocessing(preprocess, train, raw_max) if preprocessing is None else preprocessing
        (train, _), (val, n_val), (test, n_test) = (pre._map_owned(p) for p in (train, val, test))
        clamped = {"val": n_val, "test": n_test} if pre.clamp else {}
    draw = torch.bernoulli if not is_source(train) else pre.binarized  # a source: a draw keyed by its rows
    if pre.binarize == "static":
        train, val, test = (draw(p, generator=gen) for p in (train, val, test))
    elif pre.binarize == "dynamic":
        val, test = (draw(p, generator=gen) for p in (val, test))
    return DataSplits(train=train, val=val, test=test, train_labels=train_y, val_labels=val_y,
                      test_labels=test_y, name=name, preprocess=pre.name, preprocessing=pre,
                      clamped={k: v for k, v in clamped.items() if v}, notes=notes, fingerprint=fingerprint)


def load_data_file(path, data_shape, preprocessing: Preprocessing | None = None, **options) -> tuple:
    """A raw user file (:func:`load_file`, or :func:`open_source` with ``options``, those of the run; any
    that do not apply to this file's format are ignored) mapped like the training data: ``(x, labels | None)``.

    Rows holding the right number of values are reshaped to ``data_shape`` (a streamed file's must have it);
    without ``preprocessing`` the values are returned as stored. Binarisation is
    not applied here (see :meth:`Preprocessing.binarized`).
    """
    data_shape = tuple(data_shape)
    opened = open_source(path, **options, strict=False)
    if opened is not None:
        x = opened.source
        if tuple(x.point_shape) != data_shape:
            raise ValueError(f"{path}: rows of shape {tuple(x.point_shape)} do not fit the model, which was trained on "
                             f"data points of shape {data_shape}; pass data with the training data's features (and "
                             "shape), or train a run on this data")
        return (x if preprocessing is None else preprocessing(x)), opened.labels
    x, labels = load_file(path)
    if x.shape[1:] != data_shape:
        if x[0].numel() != torch.Size(data_shape).numel():
            raise ValueError(f"{path}: rows of shape {tuple(x.shape[1:])} do not fit the model, which was trained on "
                             f"data points of shape {data_shape} ({torch.Size(data_shape).numel()} values each); "
                             "pass data with the training data's features, or train a run on this data")
        x = x.reshape(-1, *data_shape)
    return (x if preprocessing is None else preprocessing(x)), labels
