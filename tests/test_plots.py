"""Tests for pyro_vae.plots: files decode, pixels and curves carry the data given."""

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae import plots
from pyro_vae.plots import (
    interpolation_grid,
    plot_history,
    plot_latent_map,
    save_image_grid,
    traversal_grid,
)

LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)


def decoded(path):
    """Check ``path`` is a valid PNG; return it loaded as a numpy array."""
    assert path.exists() and path.suffix == ".png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        img.load()
        return np.asarray(img)


@pytest.fixture
def figures(monkeypatch):
    """Record every matplotlib Figure the module saves, to inspect its contents."""
    seen = []
    original = plots.save_figure

    def spy(fig, path):
        seen.append(fig)
        return original(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    return seen


def constant_tiles(values, channels=1, size=8):
    return torch.stack([torch.full((channels, size, size), float(v)) for v in values])


def tile_centre(row, col, size=8, padding=2):
    """Pixel (y, x) at the centre of a tile in a make_grid layout."""
    step = size + padding
    return padding + row * step + size // 2, padding + col * step + size // 2


def assert_grey_levels(pixels, expected, nrow=2):
    for i, level in enumerate(expected):
        y, x = tile_centre(i // nrow, i % nrow)
        assert abs(pixels[y, x] / 255 - level) <= 1 / 255, (i, pixels[y, x], level)
    assert pixels[0, 0] == 255  # padding is white


def test_image_grid_reproduces_grey_levels(tmp_path):
    path = save_image_grid(constant_tiles(LEVELS), tmp_path / "grid.png", nrow=2)
    pixels = decoded(path)
    assert pixels.shape == (22, 22)  # 2 tiles of 8 + 3 paddings of 2
    assert_grey_levels(pixels, LEVELS)


def test_image_grid_rescales_values_outside_unit_interval(tmp_path):
    standardised = constant_tiles([-2.0, 0.0, 2.0, 4.0])  # min -2, max 4
    pixels = decoded(save_image_grid(standardised, tmp_path / "std.png", nrow=2))
    assert_grey_levels(pixels, LEVELS)


def test_image_grid_from_flat_rows_with_data_shape(tmp_path):
    flat = constant_tiles(LEVELS).reshape(4, 64)
    pixels = decoded(save_image_grid(flat, tmp_path / "flat.png", nrow=2, data_shape=(1, 8, 8)))
    assert_grey_levels(pixels, LEVELS)


def test_image_grid_keeps_colour_channels(tmp_path):
    images = torch.zeros(3, 3, 8, 8)
    for i in range(3):
        images[i, i] = 1.0  # red, green, blue tiles
    pixels = decoded(save_image_grid(images, tmp_path / "rgb.png", nrow=3))
    assert pixels.shape == (12, 32, 3)
    for i in range(3):
        y, x = tile_centre(0, i)
        assert pixels[y, x].tolist() == [255 if c == i else 0 for c in range(3)]


def test_image_grid_rejects_wrong_data_shape(tmp_path):
    with pytest.raises(ValueError, match=r"63.*64"):
        save_image_grid(torch.rand(4, 64), tmp_path / "bad.png", data_shape=(1, 7, 9))
    assert not (tmp_path / "bad.png").exists()


def test_flat_rows_without_shape_become_heatmap(tmp_path):
    data = np.random.default_rng(0).normal(size=(30, 12))  # numpy input is accepted too
    pixels = decoded(save_image_grid(data, tmp_path / "heat.png"))
    assert pixels.shape[0] > 150 and pixels.shape[1] > 300
    rgb = pixels[..., :3].astype(int)
    # A colour map, not a grey image grid: some pixels have distinct channels.
    assert (np.ptp(rgb, axis=-1) > 60).mean() > 0.1


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("labels", ["none", "ints", "many"])
def test_latent_map(tmp_path, figures, d, labels):
    n = 200
    gen = torch.Generator().manual_seed(d)
    z = torch.randn(n, d, generator=gen)
    classes = {"none": None, "ints": torch.arange(n) % 4, "many": list(np.arange(n) % 30)}[labels]
    pixels = decoded(plot_latent_map(z, classes, tmp_path / f"z{d}.png", title="latents"))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    ax = figures[-1].axes[0]
    assert ax.get_title() == "latents"
    if labels == "ints":
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2", "3"]
    if labels == "many":
        assert len(figures[-1].axes) >= 2  # a colour bar instead of a 30-entry legend
    if d > 2:
        assert ax.get_xlabel().startswith("PC1") and ax.get_ylabel().startswith("PC2")


def test_latent_map_projects_on_principal_components(tmp_path, figures):
    z = torch.randn(300, 5, generator=torch.Generator().manual_seed(1)) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1])
    plot_latent_map(z, None, tmp_path / "pca.png")
    drawn = figures[-1].axes[0].collections[0].get_offsets()
    # Reference: eigenvectors of the sample covariance, independent of the SVD route.
    centred = z.numpy() - z.numpy().mean(axis=0)
    _, eigvecs = np.linalg.eigh(np.cov(centred, rowvar=False))
    expected = centred @ eigvecs[:, ::-1][:, :2]  # eigh sorts eigenvalues ascending
    signs = np.sign((drawn * expected).sum(axis=0))  # principal axes are defined up to sign
    np.testing.assert_allclose(drawn * signs, expected, atol=1e-3)


def test_latent_map_rejects_mismatched_labels(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        plot_latent_map(torch.randn(10, 2), [0, 1, 2], tmp_path / "x.png")


def test_history_skips_missing_values(tmp_path, figures):
    history = [
        {"epoch": e, "train_elbo": -100.0 + e, **({"val_elbo": -105.0 + e} if e % 2 == 0 else {})}
        for e in range(1, 6)
    ]
    history[3]["val_elbo"] = None  # epoch 4: recorded as None
    path = plot_history(history, tmp_path / "sub" / "history", keys=("train_elbo", "val_elbo", "kl"))
    assert path == tmp_path / "sub" / "history.png"
    pixels = decoded(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    ax = figures[-1].axes[0]
    curves = {line.get_label(): line for line in ax.get_lines()}
    assert set(curves) == {"train_elbo", "val_elbo"}  # "kl" is in no record
    assert list(curves["train_elbo"].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(curves["val_elbo"].get_xdata()) == [2]
    assert list(curves["val_elbo"].get_ydata()) == [-103.0]
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "ELBO per data point (nats)"


def test_interpolation_endpoints_exact_and_linear_midpoint():
    gen = torch.Generator().manual_seed(0)
    z_start, z_end = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    steps = 5
    codes = interpolation_grid(lambda z: z.clone(), z_start, z_end, steps=steps)
    assert codes.shape == (3 * steps, 4)
    rows = codes.view(3, steps, 4)
    assert torch.equal(rows[:, 0], z_start) and torch.equal(rows[:, -1], z_end)

    weight, bias = torch.randn(4, 16, generator=gen), torch.randn(16, generator=gen)

    def decode(z):
        return (z @ weight + bias).view(-1, 1, 4, 4)

    images = interpolation_grid(decode, z_start, z_end, steps=steps).view(3, steps, 1, 4, 4)
    torch.testing.assert_close(images[:, 0], decode(z_start))
    torch.testing.assert_close(images[:, -1], decode(z_end))
    torch.testing.assert_close(images[:, steps // 2], decode((z_start + z_end) / 2))


def test_interpolation_feeds_image_grid(tmp_path):
    images = interpolation_grid(lambda z: torch.sigmoid(z).view(-1, 1, 2, 2), torch.zeros(2, 4), torch.ones(2, 4), 6)
    pixels = decoded(save_image_grid(images, tmp_path / "interp.png", nrow=6))
    assert pixels.shape == (2 + 2 * 4, 2 + 6 * 4)


def test_traversal_varies_only_chosen_dims():
    z0 = torch.randn(5, generator=torch.Generator().manual_seed(0))
    codes = traversal_grid(lambda z: z.clone(), z0, dims=[1, 3], span=2.0, steps=9)
    assert codes.shape == (2 * 9, 5)
    sweep = torch.linspace(-2.0, 2.0, 9)
    for block, dim in enumerate([1, 3]):
        rows = codes[block * 9:(block + 1) * 9]
        assert torch.equal(rows[:, dim], sweep)
        others = [i for i in range(5) if i != dim]
        assert torch.equal(rows[:, others], z0[others].expand(9, -1))


def test_traversal_defaults_to_at_most_ten_dims():
    codes = traversal_grid(lambda z: z.clone(), torch.zeros(12), steps=3)
    assert codes.shape == (10 * 3, 12)
    changed = (codes != 0).any(dim=0)
    assert changed[:10].all() and not changed[10:].any()
    with pytest.raises(ValueError):
        traversal_grid(lambda z: z, torch.zeros(3), dims=[3])
