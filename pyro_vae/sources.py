"""Data read a minibatch at a time: memory bounded by the batch, not by the number of points.

A :class:`Source` indexes like a read-only float32 tensor ``[N, *point_shape]``:
``source[idx]`` reads those rows (an index tensor, a slice or an int) and returns
them dense, on the source's device, with its per-minibatch ``transform`` applied.
So :func:`~pyro_vae.train.fit`, :func:`~pyro_vae.evaluate.elbo`,
:func:`~pyro_vae.evaluate.iwae_log_likelihood` and data-parallel sharding take a
source wherever they take a tensor, and the data plate's ``N / B`` scale is
unchanged. Each format is read by the library that owns it:

==========================  ==============================================================
:class:`ArraySource`        any NumPy array, e.g. ``numpy.load(path, mmap_mode="r")``
:class:`SparseSource`       a SciPy sparse matrix (CSR; CSC is converted once), rows
                            densified per minibatch on the training device
:class:`AnnDataSource`      an ``anndata.AnnData`` in memory or backed (``backed="r"``): ``X`` or a
                            layer, optionally a subset of variables
:class:`DatasetSource`      any ``torch.utils.data.Dataset`` (items ``x`` or ``(x, y, ...)``), e.g.
                            torchvision's ``ImageFolder``
:class:`SubsetSource`       rows of another source by an index list (the splits of a run)
==========================  ==============================================================

A source with a ``chunk`` (a backed file) is shuffled by chunks, then by points
within each chunk (:func:`chunked_permutation`), so a minibatch reads a few
contiguous runs of rows; the draws come from torch's global generator, whose
state a checkpoint keeps, so a resumed run reads the same minibatches.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["Source", "ArraySource", "SparseSource", "AnnDataSource", "DatasetSource", "SubsetSource",
           "is_source", "chunked_permutation", "file_fingerprint"]


def is_source(data) -> bool:
    return isinstance(data, Source)


def file_fingerprint(path) -> dict:
    """What identifies a file's contents cheaply: its absolute path, size and modification time."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def chunked_permutation(n: int, chunk: int, device=None) -> Tensor:
    """A permutation of ``range(n)`` that visits whole chunks of ``chunk`` consecutive rows in random order,
    the rows of each chunk in random order: minibatches cut from it touch about ``B / chunk + 1`` chunks.
    Drawn from torch's global generator (one ``randperm`` of the chunks, then one per chunk)."""
    chunks = torch.randperm(math.ceil(n / chunk)).tolist()
    parts = []
    for c in chunks:
        lo = c * chunk
        size = min(chunk, n - lo)
        parts.append(lo + torch.randperm(size))
    return torch.cat(parts).to(device)


class Source:
    """A data set of ``len(self)`` points of ``point_shape``, read by rows (see the module docstring).

    Subclasses implement :meth:`_read` (rows as a sorted NumPy index array -> a CPU tensor) and may set
    ``chunk`` (rows worth reading together) and ``fingerprint`` (what a checkpoint compares on resume).
    """

    chunk: int | None = None
    dtype = torch.float32

    def __init__(self, n: int, point_shape, name: str = "data"):
        self._n = int(n)
        self.point_shape = tuple(int(s) for s in point_shape)
        self.name = name
        self.device = torch.device("cpu")
        self._transforms: tuple[Callable[[Tensor], Tensor], ...] = ()

    # ----------------------------------------------------------------- what a tensor would say
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._n, *self.point_shape))

    def __len__(self) -> int:
        return self._n

    def dim(self) -> int:
        return 1 + len(self.point_shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def is_floating_point(self) -> bool:
        return True

    def fingerprint(self) -> dict | None:
        """What identifies the data behind the source (a backed file's size and mtime), or ``None``."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shape={list(self.shape)})"

    # ----------------------------------------------------------------- derived sources
    def to(self, device=None, dtype=None, non_blocking: bool = False) -> "Source":
        """The same rows delivered on ``device`` (the data stay where they are)."""
        if dtype is not None and dtype != torch.float32:
            raise TypeError(f"a Source delivers float32 rows; got dtype {dtype}")
        new = copy.copy(self)
        new.device = torch.device(device) if device is not None else self.device
        return new

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Source":
        """The same rows with ``fn`` applied to every minibatch read (a preprocessing, a binarisation)."""
        new = copy.copy(self)
        new._transforms = (*self._transforms, fn)
        return new

    # ----------------------------------------------------------------- reading
    def _read(self, rows: np.ndarray) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rows(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return np.arange(self._n)[key]
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self._n if key < 0 else 0)
            if not 0 <= k < self._n:
                raise IndexError(f"row {key} is out of range for {self._n} rows")
            return np.array([k])
        rows = key.detach().cpu().numpy() if isinstance(key, Tensor) else np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + self._n, rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"row indices out of range for {self._n} rows")
        return rows

    def __getitem__(self, key) -> Tensor:
        rows = self._rows(key)
        if rows.size == 0:
            out = torch.empty(0, *self.point_shape)
        elif rows.size == 1 or bool(np.all(rows[1:] > rows[:-1])):
            out = self._read(rows)
        else:  # read each row once, in increasing order (what files are fast at), then put them in place
            unique, inverse = np.unique(rows, return_inverse=True)
            out = self._read(unique)[torch.from_numpy(inverse)]
        out = out.to(torch.float32).reshape(len(rows), *self.point_shape)
        if self.device.type != "cpu":
            out = out.to(self.device, non_blocking=True)
        for fn in self._transforms:
            out = fn(out)
        if isinstance(key, (int, np.integer)):
            return out[0]
        return out

    def blocks(self, rows: int = 4096) -> Iterator[tuple[int, Tensor]]:
        """``(start, x[start:start + rows])`` over the whole source, in order."""
        for start in range(0, self._n, rows):
            yield start, self[start:start + rows]


class ArraySource(Source):
    """Rows of a NumPy array (in memory, or memory-mapped: ``numpy.load(path, mmap_mode="r")``), copied out
    per minibatch."""

    def __init__(self, array, name: str = "array", path=None, chunk: int | None = None):
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        if array.ndim < 2:
            raise ValueError(f"{name}: an array source needs [N, ...] with at least one feature dim, got shape "
                             f"{array.shape}; reshape to [N, 1] for a single feature")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name}: array has non-numeric dtype {array.dtype}; store numbers")
        super().__init__(array.shape[0], array.shape[1:], name)
        self.array, self.path, self.chunk = array, path, chunk

    @classmethod
    def open(cls, path, chunk: int | None = None) -> "ArraySource":
        """A ``.npy`` file memory-mapped: nothing is read until a minibatch asks for its rows."""
        path = Path(path).expanduser()
        return cls(np.load(path, mmap_mode="r", allow_pickle=False), name=path.name, path=path, chunk=chunk)

    def _read(self, rows):
        return torch.from_numpy(np.asarray(self.array[rows], dtype=np.float32))

    def fingerprint(self):
        return file_fingerprint(self.path) if self.path is not None else None


class SparseSource(Source):
    """Rows of a SciPy sparse matrix ``[N, D]``, densified per minibatch (on the training device: the rows
    travel as a sparse CSR tensor and become dense there). CSC and other formats are converted to CSR once."""

    def __init__(self, matrix, name: str = "sparse", path=None):
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(f"{name}: SparseSource takes a scipy.sparse matrix, got {type(matrix).__name__}")
        if matrix.dtype.kind not in "biuf":
            raise ValueError(f"{name}: sparse matrix has non-numeric dtype {matrix.dtype}; store numbers")
        self.matrix = matrix.tocsr() if matrix.format != "csr" else matrix
        super().__init__(self.matrix.shape[0], self.matrix.shape[1:], name)
        self.path = path

    def _read(self, rows):
        block = self.matrix[rows]
        if self.device.type == "cpu":
            return torch.from_numpy(block.toarray().astype(np.float32, copy=False))
        sparse = torch.sparse_csr_tensor(torch.from_numpy(block.indptr.astype(np.int64)),
                                         torch.from_numpy(block.indices.astype(np.int64)),
                                         torch.from_numpy(block.data.astype(np.float32)), size=block.shape)
        return sparse.to(self.device, non_blocking=True).to_dense()

    def fingerprint(self):
        return file_fingerprint(self.path) if self.path is not None else None

    def nbytes(self) -> int:
        m = self.matrix
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)


class AnnDataSource(Source):
    """``adata.X`` (or ``adata.layers[layer]``) of an ``anndata.AnnData``, in memory or backed
    (``anndata.read_h5ad(path, backed="r")``), dense or sparse, optionally only the variables where the
    boolean ``var`` column ``var_subset`` is true (e.g. ``highly_variable``)."""

    def __init__(self, adata, layer: str | None = None, var_subset: str | None = None, name: str = "anndata",
                 path=None, chunk: int | None = None):
        self.adata, self.layer, self.path = adata, layer, path
        if layer is not None and layer not in adata.layers:
            have = ", ".join(repr(k) for k in adata.layers.keys()) or "none"
            raise ValueError(f"{name}: no layer {layer!r} (its layers: {have}); set data.layer to one of them, or "
                             "leave it unset for X")
        self.columns = None
        if var_subset is not None:
            if var_subset not in adata.var.columns:
                have = ", ".join(repr(c) for c in adata.var.columns) or "none"
                raise ValueError(f"{name}: no var column {var_subset!r} (its var columns: {have}); set "
                                 "data.var_subset to a boolean column of var")
            mask = np.asarray(adata.var[var_subset])
            if mask.dtype != bool:
                raise ValueError(f"{name}: var column {var_subset!r} has dtype {mask.dtype}, not boolean; use a "
                                 "true/false column (e.g. highly_variable)")
            self.columns = np.flatnonzero(mask)
        n_vars = adata.n_vars if self.columns is None else len(self.columns)
        super().__init__(adata.n_obs, (n_vars,), name)
        self.backed = bool(getattr(adata, "isbacked", False))
        self.chunk = chunk if chunk is not None else (4096 if self.backed else None)

    @property
    def matrix(self):
        return self.adata.X if self.layer is None else self.adata.layers[self.layer]

    def _read(self, rows):
        import scipy.sparse as sp

        block = self.matrix[rows]
        if hasattr(block, "to_memory"):  # a backed sparse dataset's slice
            block = block.to_memory()
        if self.columns is not None:
            block = block[:, self.columns]
        if sp.issparse(block):
            block = block.toarray()
        return torch.from_numpy(np.asarray(block, dtype=np.float32))

    def obs_column(self, column: str, what: str = "labels") -> tuple[Tensor, list]:
        """An ``obs`` column as integer codes ``[N]`` and the category names, for labels or groups."""
        if column not in self.adata.obs.columns:
            have = ", ".join(repr(c) for c in self.adata.obs.columns) or "none"
            raise ValueError(f"{self.name}: no obs column {column!r} for the {what} (its obs columns: {have}); set "
                             f"data.{what} to one of them")
        import pandas as pd

        values = pd.Categorical(self.adata.obs[column])
        if (values.codes < 0).any():
            raise ValueError(f"{self.name}: obs column {column!r} has missing values; fill them or drop those cells")
        return torch.from_numpy(values.codes.astype(np.int64)), [str(c) for c in values.categories]

    def fingerprint(self):
        return file_fingerprint(self.path) if self.path is not None and self.backed else None


class DatasetSource(Source):
    """Any ``torch.utils.data.Dataset`` whose items are a tensor ``x`` or a tuple ``(x, y, ...)``: the first
    element is the data point; ``labels()`` reads the second of every item (or a ``targets`` attribute)."""

    def __init__(self, dataset, name: str | None = None):
        n = len(dataset)
        if n == 0:
            raise ValueError(f"{name or type(dataset).__name__}: the dataset has no items")
        first = self._point(dataset[0])
        super().__init__(n, first.shape, name or type(dataset).__name__)
        self.dataset = dataset

    @staticmethod
    def _point(item) -> Tensor:
        x = item[0] if isinstance(item, (tuple, list)) else item
        return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)

    def _read(self, rows):
        points = [self._point(self.dataset[int(i)]) for i in rows]
        for i, p in zip(rows, points):
            if tuple(p.shape) != self.point_shape:
                raise ValueError(f"{self.name}: item {int(i)} has shape {list(p.shape)} but item 0 has "
                                 f"{list(self.point_shape)}; give every item the same shape (e.g. resize images)")
        return torch.stack(points).to(torch.float32)

    def labels(self) -> Tensor | None:
        targets = getattr(self.dataset, "targets", None)
        if targets is not None:
            return torch.as_tensor(targets).long()
        first = self.dataset[0]
        if not (isinstance(first, (tuple, list)) and len(first) > 1):
            return None
        return torch.as_tensor([int(self.dataset[i][1]) for i in range(len(self))]).long()


class SubsetSource(Source):
    """Rows ``indices`` of ``base``, in that order (a split of a run): nothing is copied."""

    def __init__(self, base: Source, indices, name: str | None = None):
        self.base = base
        self.indices = np.asarray(torch.as_tensor(indices).cpu().numpy(), dtype=np.int64)
        super().__init__(len(self.indices), base.point_shape, name or base.name)
        self.chunk = base.chunk
        self._transforms = ()

    def _read(self, rows):
        return self.base.to("cpu")[self.indices[rows]]

    def fingerprint(self):
        return self.base.fingerprint()

