"""Figures for training runs and latent spaces.

Every figure function takes plain tensors, arrays or lists (never a model),
writes one image and returns its :class:`~pathlib.Path`. Figures are built with
:class:`matplotlib.figure.Figure` directly, not through ``pyplot``, so nothing
touches global state: calls are safe from threads and no figure is left open.

The file name says the format: ``.png`` (added to a bare name) or ``.jpg`` /
``.jpeg``; any other suffix is refused (:func:`image_path`).

What one data point looks like decides how it is drawn (:func:`figure_kind`):
``[C, H, W]`` with C in {1, 3} and ``[H, W]`` as images in a grid, ``[D]`` as a
row of a per-feature heat map; other shapes have no picture here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Normalize, SymLogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

__all__ = ["plot_history", "save_image_grid", "image_grid", "save_figure", "plot_latent_map", "interpolation_grid",
           "traversal_grid", "plot_feature_rows", "figure_kind", "image_path", "enlarge", "looks_like_counts", "IMAGE_SHAPES"]

PathLike = str | os.PathLike
Decoder = Callable[[torch.Tensor], torch.Tensor]  # latent codes [M, d] -> decoded means [M, ...]

_MAX_LEGEND_CLASSES = 20  # beyond this a legend is unreadable; use a colour bar
_DPI = 100
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}  # file suffix -> what is written
IMAGE_SHAPES = "[C, H, W] with C = 1 or 3, or [H, W]"  # the data shapes drawn as images


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def _as_latent(z) -> torch.Tensor:
    """Latent codes as a floating tensor, keeping the device of a given tensor."""
    z = torch.as_tensor(z)
    return z if z.is_floating_point() else z.float()


def figure_kind(data_shape: Sequence[int]) -> str | None:
    """How one data point of shape ``data_shape`` is drawn: ``"image"`` (``[C, H, W]`` with C in {1, 3},
    or ``[H, W]``), ``"features"`` (a vector ``[D]``: one heat-map row), or ``None`` (no picture)."""
    shape = tuple(int(s) for s in data_shape)
    if len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3)):
        return "image"
    if len(shape) == 1:
        return "features"
    return None


def image_path(path: PathLike) -> Path:
    """``path`` as an image file name: ``.png`` added to a bare name; ``.png``, ``.jpg`` and ``.jpeg`` kept;
    any other suffix raises ``ValueError`` (before anything is drawn or written)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"cannot write an image named {path.name!r}: the name must end in .png, .jpg or .jpeg")
    return path


def _output_path(path: PathLike) -> tuple[Path, str]:
    """The checked path (folders made) and its format, ``"PNG"`` or ``"JPEG"``."""
    path = image_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, _FORMATS[path.suffix.lower()]


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` at ``path`` as its suffix says, PNG or JPEG (``.png`` added to a bare name, folders made);
    returns the path."""
    path, fmt = _output_path(path)
    extra = {"pil_kwargs": {"quality": 95}} if fmt == "JPEG" else {}
    fig.savefig(path, format=fmt.lower(), dpi=_DPI, bbox_inches="tight", **extra)
    return path


def _save_pixels(array: np.ndarray, path: PathLike) -> Path:
    """uint8 ``[H, W]`` (greyscale) or ``[H, W, 3]`` (RGB) pixels written as they are."""
    path, fmt = _output_path(path)
    Image.fromarray(array).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def looks_like_counts(x) -> bool:
    """Whether ``x`` holds counts: finite, non-negative, whole numbers, some above 1 (a log colour scale)."""
    x = _as_tensor(x)
    return bool(x.numel() and torch.isfinite(x).all() and (x >= 0).all() and (x == x.round()).all()
                and x.max() > 1)


def enlarge(images: torch.Tensor, min_size: int = 32) -> torch.Tensor:
    """Images ``[N, C, H, W]`` whose longer side is under ``min_size`` pixels enlarged by whole-pixel repetition
    (8x8 digits become 32x32), so a grid of them is legible; others are returned as they are."""
    if images.dim() != 4 or min_size <= 0 or max(images.shape[-2:]) >= min_size:
        return images
    factor = -(-int(min_size) // max(images.shape[-2:]))
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def plot_history(history: Sequence[dict], path: PathLike, keys: Sequence[str] = ("train_elbo", "val_elbo")) -> Path:
    """Plot per-epoch values of ``keys`` against ``"epoch"``.

    history: records such as ``{"epoch": 1, "train_elbo": -90.1, "val_elbo": -92.3}``.
    A record that lacks a key (or holds None) contributes no point to that
    curve, so a validation curve evaluated every N epochs shows only those
    epochs; a key missing from every record is left out. Records without
    ``"epoch"`` are numbered 1, 2, ... by position.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    plotted = []
    for key in keys:
        points = [
            (rec.get("epoch", i + 1), float(rec[key]))
            for i, rec in enumerate(history)
            if rec.get(key) is not None
        ]
        if not points:
            continue
        epochs, values = zip(*points)
        # Markers keep sparse curves (a single validation point) visible.
        ax.plot(epochs, values, marker="o", markersize=3, label=key)
        plotted.append(key)
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no values for " + ", ".join(keys), ha="center",
                va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("ELBO per data point (nats)")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def save_image_grid(images, path: PathLike, nrow: int = 8, data_shape: Sequence[int] | None = None, *,
                    min_size: int = 0, title: str | None = None, row_labels: Sequence | None = None,
                    log: bool | None = None) -> Path:
    """Save a batch as one image grid, or as a heat-map when it has no image shape.

    images: ``[N, C, H, W]`` with C in {1, 3}; ``[N, H, W]`` (one channel);
    or ``[N, D]`` with ``data_shape`` = ``(C, H, W)`` or ``(H, W)`` whose
    product is D. Tiles are laid out ``nrow`` per row by
    :func:`torchvision.utils.make_grid` (padding 2, white padding). Values
    outside [0, 1] (e.g. standardised data) are rescaled by the batch's own
    min and max, one scale for all tiles so their intensities stay comparable.
    ``min_size``: tiles smaller than this many pixels are enlarged by pixel
    repetition first (:func:`enlarge`). Without ``title`` and ``row_labels``
    the file holds the grid's pixels alone; with them, the grid is framed by a
    matplotlib figure: the title above, one label left of each row of tiles
    (``row_labels``: as many as there are rows).

    ``[N, D]`` without ``data_shape`` is drawn as a heat-map (rows = samples,
    columns = features) with a colour bar (:func:`plot_feature_rows`): with
    ``row_labels``, blocks of ``nrow`` rows are labelled; ``log`` chooses its colour scale.
    """
    x = _as_tensor(images)
    if x.dim() < 2:
        raise ValueError(f"images must have a batch dimension, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values")
    if data_shape is not None:
        data_shape = tuple(int(s) for s in data_shape)
        per_item = math.prod(x.shape[1:])
        if math.prod(data_shape) != per_item:
            raise ValueError(
                f"data_shape {data_shape} has {math.prod(data_shape)} elements "
                f"but each image has {per_item}"
            )
        x = x.reshape(x.shape[0], *data_shape)
    elif x.dim() == 2:
        return plot_feature_rows(x, path, block=nrow if row_labels is not None else None, block_labels=row_labels,
                                 title=title, log=log)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C in (1, 3), got shape {tuple(x.shape)}")
    columns = max(1, min(int(nrow), len(x)))
    rows = -(-len(x) // columns)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for a grid of {rows} rows ({len(x)} images, {columns} a row)")
    image_path(path)  # a name that cannot be written fails before the drawing

    x = enlarge(x, min_size)
    padding = 2
    pixels = image_grid(x, columns, padding=padding)
    # uint8 [H, W] is saved as greyscale ("L"), [H, W, 3] as RGB.
    array = (pixels[0] if x.shape[1] == 1 else pixels.permute(1, 2, 0).contiguous()).numpy()
    if title is None and row_labels is None:
        return _save_pixels(array, path)
    step = x.shape[-2] + padding
    centres = [padding + r * step + (x.shape[-2] - 1) / 2 for r in range(rows)]
    return _framed_grid(array, path, centres, title, row_labels)


def image_grid(images, nrow: int = 8, *, min_size: int = 0, padding: int = 2) -> torch.Tensor:
    """The pixels of :func:`save_image_grid`'s grid, without a file: uint8 ``[C, H, W]`` (C = 1 or 3).

    images: ``[N, C, H, W]`` with C in {1, 3}, or ``[N, H, W]``; ``nrow`` tiles a row, ``padding`` white pixels
    between them, tiles under ``min_size`` pixels enlarged (:func:`enlarge`), values outside [0, 1] rescaled by
    the batch's min and max. Also what a run logs to TensorBoard (:mod:`pyro_vae.tensorboard`).
    """
    from torchvision.utils import make_grid  # importing torchvision costs ~2 s: only when used

    x = _as_tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"expected images [N, C, H, W] with C in (1, 3) and N > 0, got shape {tuple(x.shape)}")
    x = enlarge(x, min_size)
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 1:
        x = (x - lo) / (hi - lo) if hi > lo else torch.full_like(x, 0.5)
    grid = make_grid(x, nrow=max(1, min(int(nrow), len(x))), padding=padding, pad_value=1.0)
    if grid.dim() == 2:  # make_grid returns a lone image as [H, W]
        grid = grid.unsqueeze(0)
    if x.shape[1] == 1:  # make_grid repeats one channel three times: keep one
        grid = grid[:1]
    return (grid * 255).round().clamp(0, 255).to(torch.uint8)


def _framed_grid(array: np.ndarray, path: PathLike, centres, title, row_labels) -> Path:
    """Grid pixels shown one screen pixel each, the title above and a label beside each row of tiles."""
    height, width = array.shape[:2]
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks(centres if row_labels is not None else [],
                  [str(label) for label in row_labels] if row_labels is not None else [], fontsize=9)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_feature_rows(rows, path: PathLike, *, block: int | None = None, block_labels: Sequence | None = None,
                      title: str | None = None, log: bool | None = None) -> Path:
    """Feature vectors ``[N, D]`` as a heat map: one row per item, one column per feature, a colour bar.

    block, block_labels: the rows come in consecutive blocks of ``block`` rows
    (the last may be shorter), one label each, written left of the block and
    separated from the next by a white line (data, reconstruction, data, ...).
    log: a symmetric-log colour scale (linear below 1, logarithmic above), for
    counts, where a linear scale shows only the outliers; ``None``: when the
    values look like counts (:func:`looks_like_counts`).
    """
    x = _as_tensor(rows)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"rows must have shape [N, D] with N > 0, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("rows contain NaN or infinite values")
    n = x.shape[0]
    if block_labels is not None:
        block = int(block or 1)
        if len(block_labels) != -(-n // block):
            raise ValueError(f"{len(block_labels)} block labels for {n} rows in blocks of {block}")
    image_path(path)
    if log is None:
        log = looks_like_counts(x)
    lo, hi = float(x.min()), float(x.max())
    if log and hi > lo:
        norm, bar = SymLogNorm(linthresh=1.0, linscale=0.5, vmin=min(lo, 0.0), vmax=hi, base=10), "value (log scale)"
    else:
        norm, bar = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1), "value"
    fig = Figure(figsize=(7, min(12.0, max(3.5, 1.5 + 0.09 * n))))
    ax = fig.add_subplot()
    im = ax.imshow(x.numpy(), aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
    fig.colorbar(im, ax=ax, label=bar)
    ax.set_xlabel("feature")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if block_labels is not None:
        starts = list(range(0, n, block))
        ax.set_yticks([(s + min(s + block, n) - 1) / 2 for s in starts], [str(b) for b in block_labels],
                      fontsize=8)
        ax.tick_params(axis="y", length=0)
        for s in starts[1:]:
            ax.axhline(s - 0.5, color="white", linewidth=1.5)
    else:
        ax.set_ylabel("item")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def _pca_2d(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ``z: [N, d]`` on its first two principal components.

    Returns the ``[N, 2]`` scores and the ``[2]`` explained-variance ratios.
    A full SVD (not the randomised ``pca_lowrank``) keeps figures reproducible.
    """
    centred = z - z.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, vh.shape[0])  # a single point has one singular vector: the second axis is then all zeros
    components = vh[:k]
    # The sign of a singular vector is arbitrary: fix it so reruns agree.
    signs = torch.sign(components[torch.arange(k), components.abs().argmax(dim=1)])
    components = components * torch.where(signs == 0, 1.0, signs).unsqueeze(1)
    components = torch.cat([components, components.new_zeros(2 - k, z.shape[1])])
    var = torch.cat([s.pow(2), s.new_zeros(2 - k)])
    ratio = var[:2] / var.sum() if var.sum() > 0 else torch.zeros(2)
    return centred @ components.T, ratio


def _scatter(fig: Figure, ax, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None) -> None:
    style = dict(s=6, alpha=0.7, linewidths=0)
    if labels is None:
        ax.scatter(x, y, color="tab:blue", **style)
        return
    classes = np.unique(labels)
    if len(classes) <= _MAX_LEGEND_CLASSES:
        colours = colormaps["tab10" if len(classes) <= 10 else "tab20"].colors
        for colour, c in zip(colours, classes):
            keep = labels == c
            ax.scatter(x[keep], y[keep], color=colour, label=str(c), **style)
        ax.legend(title="label", markerscale=2, fontsize="small", loc="best")
    else:
        cmap = colormaps["viridis"].resampled(len(classes))
        points = ax.scatter(x, y, c=labels, cmap=cmap, **style)
        fig.colorbar(points, ax=ax, label="label")


def plot_latent_map(z, labels, path: PathLike, title: str | None = None) -> Path:
    """Scatter latent codes, coloured by label.

    z: ``[N, d]`` (or ``[N]`` for d = 1). d = 1: values against sample index
    with a histogram beside; d = 2: the plane itself; d > 2: the first two
    principal components (axes "PC1", "PC2" with their explained variance).
    labels: None (one colour) or integers ``[N]``: a legend for up to 20
    classes, a discrete colour bar beyond.
    """
    z = _as_tensor(z)
    if z.dim() == 1:
        z = z.unsqueeze(1)
    if z.dim() != 2 or z.shape[0] == 0:
        raise ValueError(f"z must have shape [N, d] with N > 0, got {tuple(z.shape)}")
    n, d = z.shape
    if labels is not None:
        labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"labels has {labels.shape[0]} entries but z has {n} rows")

    fig = Figure(figsize=(6, 5))
    if d == 1:
        ax, hist_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [4, 1]})
        values = z[:, 0].numpy()
        _scatter(fig, ax, np.arange(n), values, labels)
        hist_ax.hist(values, bins=min(50, max(5, n // 10)), orientation="horizontal", color="grey")
        hist_ax.set_xlabel("count")
        ax.set_xlabel("sample index")
        ax.set_ylabel("z")
    else:
        ax = fig.add_subplot()
        if d == 2:
            xy, names = z, ("z1", "z2")
        else:
            xy, ratio = _pca_2d(z)
            names = tuple(f"PC{i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(ratio.tolist()))
        _scatter(fig, ax, xy[:, 0].numpy(), xy[:, 1].numpy(), labels)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    if title is None:
        title = f"latent space (d={d}{', PCA' if d > 2 else ''})"
    ax.set_title(title)
    return save_figure(fig, path)


def interpolation_grid(decode: Decoder, z_start, z_end, steps: int = 10) -> torch.Tensor:
    """Decode straight lines between pairs of latent codes.

    z_start, z_end: ``[R, d]`` (or ``[d]``). Row r walks
    ``z(a) = (1 - a) z_start[r] + a z_end[r]`` for ``a`` in ``linspace(0, 1, steps)``,
    so its first and last codes are exactly the endpoints.
    Returns ``decode(z)`` for the ``[R * steps, d]`` codes, row-major: pass it
    to :func:`save_image_grid` with ``nrow=steps``.
    """
    z_start, z_end = _as_latent(z_start).detach(), _as_latent(z_end).detach()
    if z_start.dim() == 1:
        z_start, z_end = z_start.unsqueeze(0), z_end.unsqueeze(0)
    if z_start.shape != z_end.shape or z_start.dim() != 2:
        raise ValueError(f"z_start and z_end must both be [R, d], got {tuple(z_start.shape)} and {tuple(z_end.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    alpha = torch.linspace(0, 1, steps, dtype=z_start.dtype, device=z_start.device).view(1, steps, 1)
    z = (1 - alpha) * z_start.unsqueeze(1) + alpha * z_end.unsqueeze(1)
    with torch.no_grad():
        return decode(z.reshape(-1, z_start.shape[1]))


def traversal_grid(
    decode: Decoder, z0, dims: Sequence[int] | None = None, span: float = 3.0, steps: int = 9
) -> torch.Tensor:
    """Decode one-at-a-time sweeps of latent dimensions around ``z0``.

    z0: ``[d]``. For each dim in ``dims`` (default: the first ``min(d, 10)``)
    that coordinate takes the values ``linspace(-span, span, steps)`` while the
    others stay at ``z0``. Returns ``decode(z)`` for the ``[len(dims) * steps, d]``
    codes, one dim per block of ``steps`` rows (``nrow=steps`` in a grid).
    """
    z0 = _as_latent(z0).detach().reshape(-1)
    d = z0.shape[0]
    dims = list(range(min(d, 10))) if dims is None else [int(i) for i in dims]
    if not dims or any(not 0 <= i < d for i in dims):
        raise ValueError(f"dims must be a non-empty list of indices in [0, {d}), got {dims}")
    values = torch.linspace(-span, span, steps, dtype=z0.dtype, device=z0.device)
    z = z0.repeat(len(dims) * steps, 1)
    for block, dim in enumerate(dims):
        z[block * steps:(block + 1) * steps, dim] = values
    with torch.no_grad():
        return decode(z)
