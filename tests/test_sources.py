"""Streamed formats (issue #20) in ``fit`` and in runs: each must train exactly as the same data held as a tensor.

Every format here is read a minibatch at a time (a memory-mapped .npy, a SciPy sparse .npz in CSR and CSC,
an .h5ad in memory and backed, a folder of images, a torch Dataset). The ground truth is the tensor run from
the same seed: the same minibatches (indices and values, recorded at the model's call) and the same weights
after two epochs. Through the CLI a sparse and an .h5ad run equal a memory-mapped dense run (the splits of a
streamed file are sorted, so a streamed run compares with a streamed run), a backed run equals an in-memory
one with the same chunk, and a resumed streamed run equals an uninterrupted one. Bad input gets one line
naming the problem and the fix, and leaves nothing behind.
"""

import json
import math
import os
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pyro_vae.data as data_module
from pyro_vae import VAE
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.config import ConfigError, load_config
from pyro_vae.data import KeyedBernoulli, MissingPackage, fit_preprocessing, load_dataset, open_source
from pyro_vae.sources import ArraySource, chunked_permutation
from pyro_vae.train import fit

anndata = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")
Image = pytest.importorskip("PIL.Image")

N, D, BATCH = 300, 20, 32
PER_EPOCH = math.ceil(N / BATCH)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Counts [300, 20] as .npy, CSR and CSC .npz and .h5ad (sparse X, a dense layer, obs labels and groups, a
    boolean var column), and 2 classes x 24 grey 8x8 PNG images."""
    d = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    x = (rng.poisson(1.5, (N, D)) * (rng.random((N, D)) < 0.6)).astype(np.float32)
    cell, batch = rng.integers(0, 3, N), rng.integers(0, 2, N)
    np.save(d / "dense.npy", x)
    sp.save_npz(d / "csr.npz", sp.csr_matrix(x))
    sp.save_npz(d / "csc.npz", sp.csc_matrix(x))
    obs = pd.DataFrame({"cell": pd.Categorical(np.array(["a", "b", "c"])[cell]),
                        "batch": pd.Categorical(np.array(["p", "q"])[batch])}, index=[f"c{i}" for i in range(N)])
    var = pd.DataFrame({"hv": np.arange(D) % 3 == 0}, index=[f"g{j}" for j in range(D)])
    anndata.AnnData(X=sp.csr_matrix(x), obs=obs, var=var, layers={"counts": x * 2}).write_h5ad(d / "cells.h5ad")
    images, labels = [], []
    for k, name in enumerate(("cats", "dogs")):  # ImageFolder's order: classes sorted, files sorted
        (d / "images" / name).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(d / "images" / name / f"{i:02d}.png")
            images.append(pixels)
            labels.append(k)
    bad = d / "bad"
    bad.mkdir()
    x_neg, x_frac = x.copy(), x.copy()
    x_neg[7, 3], x_frac[7, 3] = -1.0, 0.5
    sp.save_npz(bad / "negative.npz", sp.csr_matrix(x_neg))
    sp.save_npz(bad / "fraction.npz", sp.csr_matrix(x_frac))
    (bad / "empty" / "cats").mkdir(parents=True)
    (bad / "empty" / "cats" / "notes.txt").write_text("no image here")
    (bad / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "flat" / "a.png")  # no class sub-folder
    (bad / "mixed" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "mixed" / "a" / "1.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad / "mixed" / "a" / "2.png")
    return SimpleNamespace(dir=d, x=torch.from_numpy(x), cell=torch.from_numpy(cell), hv=np.arange(D) % 3 == 0,
                           images=torch.from_numpy(np.stack(images)).float().unsqueeze(1),
                           image_labels=torch.tensor(labels))


def _fit(data, data_shape=(D,), likelihood="poisson", epochs=2):
    """Weights after ``epochs`` epochs from seed 0, and every minibatch the model saw: ``(idx, x)``."""
    torch.manual_seed(0)
    vae = VAE(data_shape, latent_dim=2, likelihood=likelihood, net={"name": "mlp", "hidden": [16]})
    seen, model = [], vae.model

    def recording(x=None, idx=None, *args, **kwargs):
        seen.append((idx.clone(), x.detach().clone()))
        return model(x, idx, *args, **kwargs)

    vae.model = recording  # fit calls vae.model: this instance attribute, then the model itself
    fit(vae, data, epochs=epochs, batch_size=BATCH, seed=0, progress=False)
    del vae.model
    return vae.state_dict(), seen


def _assert_same_run(a, b, tol=1e-6):
    (weights_a, seen_a), (weights_b, seen_b) = a, b
    assert len(seen_a) == len(seen_b) > 0
    for (idx_a, x_a), (idx_b, x_b) in zip(seen_a, seen_b):
        assert torch.equal(idx_a, idx_b)
        assert torch.equal(x_a, x_b)
    gap = max(float((weights_a[k] - weights_b[k]).abs().max()) for k in weights_a)
    assert gap <= tol, gap
    return gap


# --------------------------------------------------------------------------- fit: each source against the tensor

@pytest.mark.parametrize("name, options", [("dense.npy", {"mmap": True}), ("csr.npz", {}), ("csc.npz", {}),
                                           ("cells.h5ad", {})])
def test_each_file_source_trains_as_the_tensor(files, name, options):
    source = open_source(files.dir / name, **options).source
    assert source.shape == (N, D) and torch.equal(source[:], files.x)
    _assert_same_run(_fit(source), _fit(files.x))


def test_backed_h5ad_trains_as_in_memory_with_the_same_chunk(files):
    backed = open_source(files.dir / "cells.h5ad", backed=True, chunk=40).source
    memory = open_source(files.dir / "cells.h5ad", chunk=40).source
    assert backed.adata.isbacked and not memory.adata.isbacked and torch.equal(backed[:], files.x)
    assert _assert_same_run(_fit(backed), _fit(memory), tol=0.0) == 0.0
    tensor = _fit(files.x)
    assert not torch.equal(_fit(memory)[1][0][0], tensor[1][0][0])  # chunks, then rows: other minibatches


def test_h5ad_layer_var_subset_and_labels(files):
    opened = open_source(files.dir / "cells.h5ad", layer="counts", var_subset="hv", labels="cell")
    assert torch.equal(opened.source[:], 2 * files.x[:, files.hv])
    assert torch.equal(opened.labels, files.cell)  # categories a, b, c -> codes 0, 1, 2
    shape = (int(files.hv.sum()),)
    _assert_same_run(_fit(opened.source, shape), _fit(2 * files.x[:, files.hv], shape))


def test_image_folder_trains_as_the_images_read_with_pil(files):
    opened = open_source(files.dir / "images")
    assert opened.raw_max == 255.0 and torch.equal(opened.labels, files.image_labels)
    assert torch.equal(opened.source[:], files.images)
    scaled = opened.source.map(lambda b: b / 255)  # Bernoulli intensities, as 'scale' makes them
    _assert_same_run(_fit(scaled, (1, 8, 8), "bernoulli"), _fit(files.images / 255, (1, 8, 8), "bernoulli"))
    resized = open_source(files.dir / "images", image_size=[4, 6], channels=3).source
    assert resized.point_shape == (3, 4, 6)
    first = Image.open(files.dir / "images" / "cats" / "00.png").convert("RGB").resize((6, 4), Image.BILINEAR)
    first = np.asarray(first)
    assert torch.equal(resized[0], torch.from_numpy(first.astype(np.float32)).permute(2, 0, 1))


def test_a_torch_dataset_trains_as_its_tensor(files):
    dataset = torch.utils.data.TensorDataset(files.x, files.cell)
    _assert_same_run(_fit(dataset), _fit(files.x))


def test_a_dataset_with_items_of_other_shapes_is_refused_before_training():
    class Ragged(torch.utils.data.Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return torch.ones(5 if i == 7 else 4)

    vae = VAE((4,), latent_dim=2, likelihood="normal")
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(ValueError, match=r"Ragged: item 7 has shape \[5\] but item 0 has \[4\]; give every item"):
        fit(vae, Ragged(), epochs=1, progress=False)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())


# --------------------------------------------------------------------------- the chunked shuffle, statistics, splits

def test_chunked_shuffle_visits_every_row_once_and_few_chunks_per_minibatch(files):
    for n, chunk in ((1000, 64), (300, 300), (7, 3)):
        assert torch.equal(chunked_permutation(n, chunk).sort().values, torch.arange(n))
    chunk = 20  # 15 whole chunks: a minibatch of 32 spans at most 3 of them
    _, seen = _fit(open_source(files.dir / "cells.h5ad", backed=True, chunk=chunk).source)
    _, plain = _fit(files.x)
    for epoch in range(2):
        rows = torch.cat([idx for idx, _ in seen[epoch * PER_EPOCH:(epoch + 1) * PER_EPOCH]])
        assert torch.equal(rows.sort().values, torch.arange(N))
    touched = [len(set((idx // chunk).tolist())) for idx, _ in seen]
    assert max(touched) <= math.ceil(BATCH / chunk) + 1
    assert np.mean([len(set((idx // chunk).tolist())) for idx, _ in plain]) > 10  # a plain shuffle: most chunks


def test_streaming_statistics_equal_the_in_memory_ones():
    rng = np.random.default_rng(1)
    a = (rng.normal(100.0, 3.0, (10_000, 20)) * rng.uniform(0.1, 10.0, 20)).astype(np.float32)  # 3 blocks
    a[:, 4] = 7.0  # a constant feature: only centred
    tensor, source = torch.from_numpy(a), ArraySource(a)
    for name in ("scale", "binarize"):
        streamed, whole = fit_preprocessing(name, source), fit_preprocessing(name, tensor)
        assert torch.equal(streamed.shift, whole.shift) and torch.equal(streamed.scale, whole.scale)
        assert streamed.clamped(ArraySource(a * 1.01)) == whole.clamped(torch.from_numpy(a * 1.01)) > 0
    streamed, whole = fit_preprocessing("standardize", source), fit_preprocessing("standardize", tensor)
    exact = a.astype(np.float64)
    torch.testing.assert_close(streamed.shift, torch.from_numpy(exact.mean(0)).float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(streamed.shift, whole.shift, rtol=1e-6, atol=0)
    std = exact.std(0)
    std[4] = 1.0
    torch.testing.assert_close(streamed.scale, torch.from_numpy(std).float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(streamed.scale, whole.scale, rtol=1e-5, atol=0)


def test_streamed_splits_are_the_in_memory_points_in_increasing_order(files, monkeypatch):
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    parts = {"test": perm[:30], "val": perm[30:60], "train": perm[60:]}
    memory = load_dataset(str(files.dir / "dense.npy"), preprocess="none", seed=3)
    mapped = load_dataset(str(files.dir / "dense.npy"), preprocess="none", seed=3, mmap=True)
    cells = load_dataset(str(files.dir / "cells.h5ad"), preprocess="none", seed=3, labels="cell", backed=True)
    for split, rows in parts.items():
        assert torch.equal(getattr(memory, split), files.x[rows])  # today's split, unchanged
        assert torch.equal(getattr(mapped, split)[:], files.x[rows.sort().values])
        assert torch.equal(getattr(cells, split)[:], files.x[rows.sort().values])
        assert torch.equal(getattr(cells, f"{split}_labels"), files.cell[rows.sort().values])
    assert memory.notes == mapped.notes == [] and mapped.fingerprint["size"] == os.path.getsize(files.dir / "dense.npy")
    monkeypatch.setattr(data_module, "MMAP_THRESHOLD", 1000)
    auto = load_dataset(str(files.dir / "dense.npy"), preprocess="none", seed=3)
    assert torch.equal(auto.train[:], mapped.train[:]) and "memory-mapped" in auto.notes[0]
    assert isinstance(load_dataset(str(files.dir / "dense.npy"), preprocess="none", mmap=False).train, torch.Tensor)


def test_static_binarisation_of_a_source_is_one_draw_per_point():
    p = torch.full((20_000, 6), 0.3)
    p[:, 4], p[:, 5] = 0.0, 1.0
    drawn = KeyedBernoulli(ArraySource(p.numpy()), key=11)
    whole = drawn[:]
    rows = torch.randperm(len(p))[:500]
    assert torch.equal(drawn[rows], whole[rows])  # the same draw whatever minibatch a row comes in
    mean, se = whole[:, :4].mean(), math.sqrt(0.3 * 0.7 / whole[:, :4].numel())
    assert abs(float(mean) - 0.3) < 4 * se
    assert float(torch.corrcoef(whole[:, :4].T).fill_diagonal_(0).abs().max()) < 0.05
    assert whole[:, 4].sum() == 0 and whole[:, 5].sum() == len(p)
    assert not torch.equal(KeyedBernoulli(ArraySource(p.numpy()), key=12)[:], whole)


def test_binarised_sparse_splits_are_the_same_at_every_load(files):
    a, b = (load_dataset(str(files.dir / "csr.npz"), preprocess="binarize", seed=2) for _ in range(2))
    assert torch.equal(a.val[:], b.val[:]) and torch.equal(a.train[:], b.train[:])
    assert set(a.train[:].unique().tolist()) == {0.0, 1.0}
    dynamic, again = (load_dataset(str(files.dir / "csr.npz"), preprocess="dynamic-binarize", seed=2) for _ in "ab")
    assert torch.equal(dynamic.val[:], again.val[:])  # held-out splits: one keyed draw
    epochs = [dynamic.train_epoch()[:] for _ in range(2)]  # the training split: a fresh draw at each read
    assert set(epochs[0].unique().tolist()) == {0.0, 1.0} and not torch.equal(epochs[0], epochs[1])


def test_cli_says_when_it_memory_maps_and_saves_the_choice(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_module, "MMAP_THRESHOLD", 1000)
    argv = ["train", "--epochs", "1", "--hidden", "8", "--data", str(files.dir / "dense.npy"),
            "--preprocess", "dynamic-binarize", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert "dense.npy is 23.6 KiB, over the 1000 B threshold: memory-mapped" in capsys.readouterr().out
    assert load_config(tmp_path / "run" / "config.toml").data.mmap is True


# --------------------------------------------------------------------------- runs through the CLI

COMMON = ["train", "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--likelihood", "poisson",
          "--batch-size", str(BATCH), "--quiet"]


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def _gap(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for name, argv in {"dense": ["--data", f"{files.dir}/dense.npy", "--set", "data.mmap=true"],
                       "csr": ["--data", f"{files.dir}/csr.npz"], "h5ad": ["--data", f"{files.dir}/cells.h5ad"],
                       "backed": ["--data", f"{files.dir}/cells.h5ad", "--backed", "--set", "data.chunk=40"],
                       "chunked": ["--data", f"{files.dir}/cells.h5ad", "--set", "data.chunk=40"]}.items():
        assert main([*COMMON, *argv, "--out", str(out / name)]) == 0, name
    return out


def test_cli_sparse_and_h5ad_runs_equal_the_dense_run(runs, files, capsys):
    dense = _weights(runs / "dense")
    assert _gap(_weights(runs / "csr"), dense) <= 1e-6 and _gap(_weights(runs / "h5ad"), dense) <= 1e-6
    assert _gap(_weights(runs / "backed"), _weights(runs / "chunked")) == 0.0
    assert _gap(_weights(runs / "chunked"), dense) > 1e-3  # the chunked shuffle is other minibatches
    for name in ("dense", "csr", "h5ad", "backed"):
        assert (runs / name / "reconstructions.png").is_file() and (runs / name / "latent.png").is_file()
    reports = []
    for name in ("dense", "csr", "h5ad"):
        assert main(["evaluate", str(runs / name), "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["n"] == reports[1]["n"] == reports[2]["n"] == 30
    assert abs(reports[1]["elbo"] - reports[0]["elbo"]) < 1e-4 and abs(reports[2]["elbo"] - reports[0]["elbo"]) < 1e-4
    latents = []
    for name, file in (("dense", "dense.npy"), ("csr", "csc.npz"), ("h5ad", "cells.h5ad")):
        assert main(["encode", str(runs / name), str(files.dir / file), "--out", str(runs / f"{name}.npy")]) == 0
        latents.append(np.load(runs / f"{name}.npy"))
    capsys.readouterr()
    assert latents[0].shape == (N, 2)
    assert np.abs(latents[1] - latents[0]).max() < 1e-5 and np.abs(latents[2] - latents[0]).max() < 1e-5
    assert main(["evaluate", str(runs / "h5ad"), "--data", str(files.dir / "csr.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == N
    payload = load_checkpoint(runs / "backed" / "checkpoint.pt")
    assert payload["data_fingerprint"]["size"] == os.path.getsize(files.dir / "cells.h5ad")
    assert "data_fingerprint" not in load_checkpoint(runs / "h5ad" / "checkpoint.pt")  # read whole: nothing to watch


def test_cli_obs_columns_label_cvae_m2_and_groups_and_images_train_a_vampprior(files, tmp_path):
    base = [*COMMON, "--epochs", "1", "--data", f"{files.dir}/cells.h5ad"]
    assert main([*base, "--model", "cvae", "--labels", "cell", "--out", str(tmp_path / "cvae")]) == 0
    assert load_checkpoint(tmp_path / "cvae" / "checkpoint.pt")["config"]["model"]["n_classes"] == 3
    assert main([*base, "--model", "grouped", "--groups", "batch", "--backed", "--out", str(tmp_path / "g")]) == 0
    assert load_checkpoint(tmp_path / "g" / "checkpoint.pt")["config"]["model"]["num_groups"] == 2
    assert main([*base, "--model", "m2", "--labels", "cell", "--labelled", "30", "--out", str(tmp_path / "m2")]) == 0
    assert json.loads((tmp_path / "m2" / "accuracy.json").read_text())["labelled"] == 30  # on the streamed test split
    assert main([*base[:-2], "--data", f"{files.dir}/images", "--likelihood", "bernoulli", "--net", "conv",
                 "--prior", "vamp", "--set", "model.prior.n_components=8", "--out", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img" / "interpolation.png").is_file()


def test_cli_resume_of_a_streamed_run_is_exact(runs, files, tmp_path):
    part = tmp_path / "part"
    argv = [*COMMON, "--data", f"{files.dir}/cells.h5ad", "--backed", "--set", "data.chunk=40", "--out", str(part)]
    assert main([*argv, "--epochs", "1"]) == 0  # the last --epochs wins
    assert main(["train", "--resume", str(part), "--epochs", "2", "--quiet"]) == 0
    assert _gap(_weights(part), _weights(runs / "backed")) == 0.0


def test_cli_refuses_to_resume_on_a_changed_file(files, tmp_path, capsys):
    data = tmp_path / "cells.h5ad"
    shutil.copy(files.dir / "cells.h5ad", data)
    run = tmp_path / "run"
    assert main([*COMMON, "--epochs", "1", "--data", str(data), "--backed", "--out", str(run)]) == 0
    before = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl", "config.toml")}
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{data}: the data file changed since" in err and "put back the file it trained on" in err
    assert {name: (run / name).read_bytes() for name in before} == before  # nothing written
    assert main(["evaluate", str(run), "--json"]) == 0
    assert "changed since the run trained on it" in json.loads(capsys.readouterr().out)["notes"][0]


# --------------------------------------------------------------------------- bad input: one line, nothing left

TRAIN = ["train", "--epochs", "1", "--hidden", "8", "--quiet"]
MATRIX = [
    ("missing-layer", ValueError, ["--data", "{d}/cells.h5ad", "--layer", "raw"], 1,
     ["cells.h5ad: no layer 'raw' (its layers: 'counts')", "set data.layer to one of them"]),
    ("missing-obs-column", ValueError, ["--data", "{d}/cells.h5ad", "--labels", "type", "--model", "cvae"], 1,
     ["no obs column 'type' for the labels (its obs columns: 'cell', 'batch')", "set data.labels to one of them"]),
    ("missing-groups-column", ValueError, ["--data", "{d}/cells.h5ad", "--groups", "donor", "--model", "grouped"], 1,
     ["no obs column 'donor' for the groups", "set data.groups to one of them"]),
    ("missing-var-column", ValueError, ["--data", "{d}/cells.h5ad", "--set", "data.var_subset=\"highly_variable\""], 1,
     ["no var column 'highly_variable' (its var columns: 'hv')", "set data.var_subset"]),
    ("negative-sparse-counts", ValueError, ["--data", "{d}/bad/negative.npz", "--likelihood", "poisson"], 1,
     ["negative.npz (training split), rows", "outside the support of the 'poisson' likelihood", "raw counts"]),
    ("fractional-sparse-counts", ValueError, ["--data", "{d}/bad/fraction.npz", "--likelihood", "negative-binomial"],
     1, ["fraction.npz (training split), rows", "expected non-negative integer counts", "raw counts"]),
    ("image-folder-without-images", ValueError, ["--data", "{d}/bad/empty"], 1,
     ["empty: holds no images in its sub-folders (cats)", "in one sub-folder per class"]),
    ("image-folder-without-classes", ValueError, ["--data", "{d}/bad/flat"], 1,
     ["flat: holds no class sub-folders of images", "in one sub-folder per class"]),
    ("mixed-image-sizes", ValueError, ["--data", "{d}/bad/mixed"], 1,
     ["holds images of different sizes (1.png is 8x8, 2.png is 10x12", "set data.image_size = [height, width]"]),
    ("option-of-another-format", ValueError, ["--data", "{d}/dense.npy", "--backed"], 1,
     ["dense.npy: data.backed applies to .h5ad files only, and this is a .npy file", "unset data.backed"]),
    ("chunk-of-a-file-read-whole", ValueError, ["--data", "{d}/dense.npy", "--set", "data.chunk=10"], 1,
     ["data.chunk applies to streamed data", "set data.mmap = true"]),
    ("groups-without-grouped-model", ConfigError, ["--data", "{d}/cells.h5ad", "--groups", "batch"], 2,
     ["data.groups: only model type 'grouped' takes groups", "unset data.groups"]),
    ("option-of-a-built-in-set", ValueError, ["--layer", "counts"], 1,
     ["data.layer applies to data files, and 'digits' is a built-in data set", "unset data.layer"]),
    ("bad-image-size", ConfigError, ["--data", "{d}/images", "--set", "data.image_size=[0, 8]"], 2,
     ["data.image_size: must be a size S >= 1 or [height, width]"]),
]


@pytest.mark.parametrize("exc, argv, code, words", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_bad_input_matrix(files, exc, argv, code, words, capsys, tmp_path, monkeypatch):
    argv = [*TRAIN, *(a.format(d=files.dir) for a in argv), "--out", str(tmp_path / "run")]
    with monkeypatch.context() as debug:  # PYRO_VAE_DEBUG: the CLI re-raises, showing the exception type
        debug.setenv("PYRO_VAE_DEBUG", "1")
        with pytest.raises(exc) as raised:
            main(argv)
        assert all(w in str(raised.value) for w in words), str(raised.value)
    code_got, err = main(argv), capsys.readouterr().err
    assert code_got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


def test_h5ad_without_anndata_names_the_install(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "anndata", None)  # import anndata raises ImportError
    with pytest.raises(MissingPackage, match=r"needs the anndata package.*pip install \"pyro-vae\[anndata\]\""):
        open_source(files.dir / "cells.h5ad")
    assert main([*TRAIN, "--data", str(files.dir / "cells.h5ad"), "--out", str(tmp_path / "run")]) == 1
    assert "needs the anndata package" in capsys.readouterr().err and not (tmp_path / "run").exists()
