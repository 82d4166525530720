"""The figures a run writes, chosen by the data's shape: every run on any shape finishes (exit 0) with the
figures its data can show and a note naming the others; image figures are legible, titled and labelled
row by row; tabular counts are drawn on a log colour scale in labelled blocks; `pyro-vae sample` writes
an image of readable size in the format its file name says."""

import numpy as np
import pytest
import torch
from matplotlib.colors import SymLogNorm
from PIL import Image

from pyro_vae import plots
from pyro_vae.cli import main
from pyro_vae.config import Config, apply_overrides
from pyro_vae.run import train_run

pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: one thread is fastest

FIVE = ("elbo.png", "reconstructions.png", "samples.png", "latent.png", "interpolation.png")


def _record_figures(mp) -> dict:
    """Every matplotlib figure plots saves from now on, by file name (the last one of each name)."""
    seen, real = {}, plots.save_figure

    def spy(fig, path):
        out = real(fig, path)
        seen[out.name] = fig
        return out

    mp.setattr(plots, "save_figure", spy)
    return seen


def _row_labels(fig) -> list:
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_yticklabels()]


def _train(tmp_path, name, *argv):
    run = tmp_path / name
    code = main(["train", "--epochs", "1", "--hidden", "16", "--quiet", "--out", str(run), *map(str, argv)])
    return code, run


def _config(run_dir, model: dict, **extra) -> Config:
    overrides = {"model": {"latent_dim": 4, "net": {"name": "mlp", "hidden": [16]}, **model},
                 "train.epochs": 1, "output.run_dir": str(run_dir), **extra}
    return apply_overrides(Config(), overrides)


# --------------------------------------------------------------------------- the plan, from the shape alone

def test_the_plan_follows_the_shape_of_a_data_point():
    from pyro_vae.artifacts import FIGURES, plan_figures

    for shape in ([1, 8, 8], [3, 32, 32], [28, 28]):
        plan = plan_figures(shape)
        assert plan.kind == "image" and plan.figures == FIGURES and not plan.skipped
    assert plan_figures([20]).kind == "features" and plan_figures([20]).figures == FIGURES
    for shape in ([2, 8, 8], [2, 3, 4, 4], [4, 1, 1]):
        plan = plan_figures(shape)
        assert plan.kind is None and plan.figures == ("elbo", "latent")
        assert [name for name, _ in plan.skipped] == ["reconstructions", "samples", "interpolation"]
        assert all(str(list(shape)) in reason for _, reason in plan.skipped)
        assert "reconstructions.png, samples.png, interpolation.png" in plan.note()


# --------------------------------------------------------------------------- data that are not images

@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 3, 4, 4)], ids=["2-channel", "5-D"])
def test_a_run_on_data_without_a_picture_finishes_with_its_figures_and_a_note(shape, tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((60, *shape)).astype(np.float32))
    code, run = _train(tmp_path, "run", "--data", data)
    err = capsys.readouterr().err
    assert code == 0, err
    names = {p.name for p in run.iterdir()}
    assert {"checkpoint.pt", "metrics.jsonl", "elbo.png", "latent.png", "figures.txt"} <= names
    assert not names & {"reconstructions.png", "samples.png", "interpolation.png"}
    note = (run / "figures.txt").read_text()
    assert "written: elbo.png, latent.png" in note
    assert "left out: reconstructions.png, samples.png, interpolation.png" in note and str(list(shape)) in note
    for name in ("elbo.png", "latent.png"):
        with Image.open(run / name) as im:
            assert im.format == "PNG"
    # its samples have no picture: `sample` says so in one line and points to .npy, which works
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]) == 2
    assert ".npy" in capsys.readouterr().err and not (tmp_path / "s.png").exists()
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (4, *shape)


# --------------------------------------------------------------------------- digits: titles, rows, sample files

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A one-epoch VAE on the digits, with the figures it saved through matplotlib."""
    tmp = tmp_path_factory.mktemp("digits")
    with pytest.MonkeyPatch.context() as mp:
        figures = _record_figures(mp)
        code, run = _train(tmp, "run")
    assert code == 0
    return run, figures


def test_the_digits_run_writes_all_five_titled_and_labelled(digits_run):
    run, figures = digits_run
    assert {p.name for p in run.iterdir()} >= set(FIVE) and not (run / "figures.txt").exists()
    recon = figures["reconstructions.png"]
    assert recon.axes[0].get_title() == "test data and their reconstructions"
    assert _row_labels(recon) == ["data 1-8", "reconstruction 1-8", "data 9-16", "reconstruction 9-16",
                                  "data 17-24", "reconstruction 17-24", "data 25-32", "reconstruction 25-32"]
    assert recon.axes[0].images  # the grid is drawn as an image, labels around it
    interp = figures["interpolation.png"]
    assert "(left)" in interp.axes[0].get_title() and "(right)" in interp.axes[0].get_title()
    labels = _row_labels(interp)
    assert len(labels) == 6 and all(" \u2192 " in text for text in labels)  # "6 -> 8": the endpoints' labels
    assert figures["samples.png"].axes[0].get_title().startswith("samples")
    with Image.open(run / "reconstructions.png") as im:  # 8 rows of 32-pixel tiles, and the labels beside
        assert im.size[0] > 8 * 34 and im.size[1] > 8 * 34


def test_sample_writes_a_legible_png_and_a_real_jpeg(digits_run, tmp_path, capsys):
    run, _ = digits_run
    for name, fmt in (("s.png", "PNG"), ("s.jpg", "JPEG"), ("s.jpeg", "JPEG")):
        assert main(["sample", str(run), "-n", "16", "--out", str(tmp_path / name)]) == 0
        with Image.open(tmp_path / name) as im:
            im.load()
            assert im.format == fmt
            assert im.size == (2 + 8 * 34, 2 + 2 * 34)  # 8x8 digits enlarged to 32x32 tiles, 8 a row
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "16", "--out", str(tmp_path / "s.gif")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ".png, .jpg or .jpeg" in err and ".npy" in err
    assert not (tmp_path / "s.gif").exists()
    assert main(["sample", str(run), "-n", "16", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (16, 1, 8, 8)


# --------------------------------------------------------------------------- a labelled row per class

@pytest.mark.parametrize("model, extra, prefix", [
    ({"type": "m2", "classifier_hidden": [16]}, {"data.labelled": 50}, "y"),
    ({"type": "cvae"}, {}, "c"),
], ids=["m2", "cvae"])
def test_class_conditional_samples_have_one_labelled_row_per_class(model, extra, prefix, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        figures = _record_figures(mp)
        result = train_run(_config(tmp_path / "run", model, **extra), progress=False)
    run = result.run_dir
    assert {p.name for p in run.iterdir()} >= set(FIVE) and not (run / "figures.txt").exists()
    classes = [f"{prefix} = {k}" for k in range(10)]
    grid = result.vae.sample_grid(64)
    assert grid.row_labels == tuple(classes) and grid.nrow == 6 and len(grid.images) == 60
    samples = figures["samples.png"]
    assert _row_labels(samples) == classes
    with Image.open(run / "samples.png") as im:  # 10 rows of 32-pixel tiles
        assert im.size[1] > 10 * 34
    # interpolations stay within a class: the decoder takes the label
    assert _row_labels(figures["interpolation.png"]) == [f"class {k}" for k in range(6)]


# --------------------------------------------------------------------------- tabular data

def test_tabular_counts_are_drawn_in_labelled_blocks_on_a_log_scale(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "counts.npy"
    np.save(data, rng.poisson(rng.gamma(0.5, 4.0, size=(200, 12))).astype(np.float32))
    with pytest.MonkeyPatch.context() as mp:
        figures = _record_figures(mp)
        code, run = _train(tmp_path, "run", "--data", data, "--preprocess", "none", "--likelihood",
                           "negative-binomial", "--latent-dim", "2")
    assert code == 0
    assert {p.name for p in run.iterdir()} >= set(FIVE)
    recon = figures["reconstructions.png"]
    ax = recon.axes[0]
    assert isinstance(ax.images[0].norm, SymLogNorm)  # counts: a log colour scale
    assert _row_labels(recon) == ["data 1-8", "reconstruction 1-8", "data 9-16", "reconstruction 9-16"]
    assert "test data" in ax.get_title()
    assert "(top row)" in figures["interpolation.png"].axes[0].get_title()


def test_feature_rows_choose_the_colour_scale_by_the_values(tmp_path):
    from pyro_vae.plots import plot_feature_rows

    with pytest.MonkeyPatch.context() as mp:
        seen = _record_figures(mp)
        counts = torch.poisson(torch.full((16, 5), 3.0, dtype=torch.float64), torch.Generator().manual_seed(0))
        plot_feature_rows(counts, tmp_path / "counts.png", block=8, block_labels=["a", "b"])
        plot_feature_rows(torch.randn(16, 5), tmp_path / "normal.png")
        plot_feature_rows(torch.randint(0, 2, (16, 5)), tmp_path / "binary.png")
    assert isinstance(seen["counts.png"].axes[0].images[0].norm, SymLogNorm)
    assert _row_labels(seen["counts.png"]) == ["a", "b"]
    for name in ("normal.png", "binary.png"):
        assert not isinstance(seen[name].axes[0].images[0].norm, SymLogNorm)
    with pytest.raises(ValueError, match="3 block labels for 16 rows"):
        plot_feature_rows(counts, tmp_path / "bad.png", block=8, block_labels=["a", "b", "c"])


def test_image_grid_files_enlarged_framed_and_in_the_named_format(tmp_path):
    tiles = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    path = plots.save_image_grid(tiles, tmp_path / "big.png", nrow=8, min_size=32)
    with Image.open(path) as im:
        assert im.size == (274, 70)
    path = plots.save_image_grid(tiles, tmp_path / "big.jpg", nrow=8, min_size=32)
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (274, 70)
    with pytest.MonkeyPatch.context() as mp:
        seen = _record_figures(mp)
        path = plots.save_image_grid(tiles, tmp_path / "framed", nrow=8, min_size=32, title="two rows",
                                     row_labels=["first", "second"])
    assert path == tmp_path / "framed.png"
    assert seen["framed.png"].axes[0].get_title() == "two rows" and _row_labels(seen["framed.png"]) == [
        "first", "second"]
    with pytest.raises(ValueError, match="must end in .png, .jpg or .jpeg"):
        plots.save_image_grid(tiles, tmp_path / "x.gif")
    with pytest.raises(ValueError, match="3 row labels for a grid of 2 rows"):
        plots.save_image_grid(tiles, tmp_path / "y.png", nrow=8, row_labels=["a", "b", "c"])
    assert not (tmp_path / "x.gif").exists() and not (tmp_path / "y.png").exists()



def test_a_single_held_out_point_still_gets_every_figure(tmp_path):
    """One test point: the latent map shows it (PCA of one point) and interpolation sweeps each z_i around it."""
    from types import SimpleNamespace

    from pyro_vae import VAE
    from pyro_vae.artifacts import write_figures

    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    splits = SimpleNamespace(data_shape=(1, 8, 8), test=x[:1], test_labels=None, val=x[:0], val_labels=None,
                             train=x, train_labels=None)
    with pytest.MonkeyPatch.context() as mp:
        figures = _record_figures(mp)
        files = write_figures(VAE((1, 8, 8), latent_dim=3), splits, [{"epoch": 1, "train_elbo": -1.0}], tmp_path)
    assert [p.name for p in files.values()] == list(FIVE)
    assert _row_labels(figures["interpolation.png"]) == ["z1", "z2", "z3"]
    assert _row_labels(figures["reconstructions.png"]) == ["data 1", "reconstruction 1"]
