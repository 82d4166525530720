"""Tests for pyro_vae.data: built-in datasets, user files, splits, preprocessing, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.data import (
    DATASETS,
    PREPROCESS,
    DataSplits,
    load_dataset,
    load_digits,
    load_file,
    load_torchvision,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
N_DIGITS = 1797


# --------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    return bunch.data.astype(np.float32), bunch.target


def test_registry_and_preprocess_names():
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "kmnist"}
    assert PREPROCESS == ("none", "scale", "binarize", "dynamic-binarize", "standardize")


def test_load_digits_raw():
    x, y = load_digits()
    assert x.shape == (N_DIGITS, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (N_DIGITS,) and y.dtype == torch.long
    assert x.min() == 0 and x.max() == 16
    assert set(y.tolist()) == set(range(10))


def test_digits_splits_shapes_and_sizes():
    d = load_dataset("digits", preprocess="none")
    assert isinstance(d, DataSplits)
    assert d.name == "digits" and d.preprocess == "none"
    assert d.data_shape == (1, 8, 8)
    assert len(d.train) + len(d.val) + len(d.test) == N_DIGITS
    assert len(d.val) == len(d.test) == round(0.1 * N_DIGITS)
    for x, y in [(d.train, d.train_labels), (d.val, d.val_labels), (d.test, d.test_labels)]:
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        assert y.dtype == torch.long and len(y) == len(x)
    # the three splits partition the data: together they are the full set of images
    allx = torch.cat([d.train, d.val, d.test]).flatten(1)
    ref, _ = load_digits()
    assert torch.equal(allx.sum(0), ref.flatten(1).sum(0))


def test_digits_custom_fractions():
    d = load_dataset("digits", val_fraction=0.2, test_fraction=0.0, preprocess="none")
    assert len(d.test) == 0 and len(d.val) == round(0.2 * N_DIGITS)
    assert len(d.train) == N_DIGITS - len(d.val)
    with pytest.raises(ValueError, match="fraction"):
        load_dataset("digits", val_fraction=0.6, test_fraction=0.5)


def test_digits_seeded_split_reproducible():
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.val_labels, c.val_labels)


def test_digits_labels_aligned(sk_digits):
    raw, target = sk_digits
    d = load_dataset("digits", preprocess="none", seed=1)
    for x, y in [(d.train, d.train_labels), (d.val, d.val_labels), (d.test, d.test_labels)]:
        for i in (0, 7, len(x) - 1):
            matches = np.flatnonzero((raw == x[i].flatten().numpy()).all(axis=1))
            assert matches.size >= 1
            assert int(y[i]) in set(target[matches].tolist())


def test_scale_range():
    d = load_dataset("digits", preprocess="scale")
    for x in (d.train, d.val, d.test):
        assert x.min() >= 0 and x.max() <= 1
    assert d.train.max() == 1
    raw = load_dataset("digits", preprocess="none")
    assert torch.allclose(d.train * 16, raw.train)
    assert d.train_epoch() is d.train


def test_static_binarize():
    a = load_dataset("digits", preprocess="binarize", seed=5)
    b = load_dataset("digits", preprocess="binarize", seed=5)
    for x in (a.train, a.val, a.test):
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val) and torch.equal(a.test, b.test)
    assert a.train_epoch() is a.train


def test_dynamic_binarize():
    d = load_dataset("digits", preprocess="dynamic-binarize", seed=2)
    scaled = load_dataset("digits", preprocess="scale", seed=2)
    assert torch.equal(d.train, scaled.train)  # train keeps the [0,1] intensities
    gen = torch.Generator().manual_seed(0)
    e1, e2 = d.train_epoch(gen), d.train_epoch(gen)
    assert e1.shape == d.train.shape and e1.dtype == torch.float32
    assert set(e1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(e1, e2)
    total = torch.zeros_like(d.train)
    for _ in range(200):
        total += d.train_epoch(gen)
    mean = total / 200  # per-entry sd <= 0.5 / sqrt(200) ~ 0.035
    assert (mean - d.train).abs().max() < 0.25
    assert (mean - d.train).abs().mean() < 0.02
    # evaluation data: one fixed binary draw, same on every load with the same seed
    again = load_dataset("digits", preprocess="dynamic-binarize", seed=2)
    for x, y in [(d.val, again.val), (d.test, again.test)]:
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(x, y)


def test_standardize():
    d = load_dataset("digits", preprocess="standardize")
    flat = d.train.flatten(1)
    std, mean = torch.std_mean(flat, dim=0, correction=0)
    raw = load_dataset("digits", preprocess="none")
    raw_std = raw.train.flatten(1).std(0)
    varying = raw_std > 0
    assert varying.sum() > 50 and (~varying).any()  # digits has constant corner pixels
    assert mean.abs().max() < 1e-4
    assert (std[varying] - 1).abs().max() < 1e-4
    assert torch.all(flat[:, ~varying] == 0)
    # a constant feature is only centred: the map stays affine and invertible on held-out data
    constant = raw.train.flatten(1)[0, ~varying]
    assert torch.equal(d.val.flatten(1)[:, ~varying], raw.val.flatten(1)[:, ~varying] - constant)
    assert (d.val.flatten(1)[:, ~varying] != 0).any()  # held-out digits do use some of those pixels
    assert torch.equal(d.preprocessing.scale.flatten()[~varying], torch.ones(int((~varying).sum())))
    assert torch.isfinite(d.test).all()


def test_unknown_names():
    with pytest.raises(ValueError, match=r"digits.*Did you mean 'mnist'"):
        load_dataset("mnsit")
    with pytest.raises(ValueError, match=r"dynamic-binarize.*Did you mean 'binarize'"):
        load_dataset("digits", preprocess="binarise")


# --------------------------------------------------------------------------- torchvision

def _staged_root(tmp_path_factory, folder: str) -> Path:
    src = SHARED_DATA / folder / "raw"
    archives = sorted(src.glob("*.gz")) if src.is_dir() else []
    if len(archives) != 4:
        pytest.skip(f"shared archives not available in {src}")
    root = tmp_path_factory.mktemp(folder.lower())
    (root / folder / "raw").mkdir(parents=True)
    for f in archives:
        shutil.copy(f, root / folder / "raw" / f.name)
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    return _staged_root(tmp_path_factory, "MNIST")


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    return _staged_root(tmp_path_factory, "FashionMNIST")


@pytest.mark.parametrize("name, root_fixture", [("mnist", "mnist_root"), ("fashion-mnist", "fashion_root")])
def test_torchvision_datasets(name, root_fixture, request):
    root = request.getfixturevalue(root_fixture)
    # download=True verifies the md5 of the staged archives and unpacks them; no network
    x, y = load_torchvision(name, root, download=True, train=True)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.long
    assert x.min() == 0 and x.max() == 255 and torch.equal(x, x.round())
    assert set(y.unique().tolist()) == set(range(10))

    d = load_dataset(name, data_dir=root, preprocess="none", val_fraction=0.1)
    assert len(d.train) == 54000 and len(d.val) == 6000 and len(d.test) == 10000
    assert d.data_shape == (1, 28, 28)
    assert d.test.min() == 0 and d.test.max() == 255
    assert d.test_labels.min() == 0 and d.test_labels.max() == 9
    xt, yt = load_torchvision(name, root, train=False)
    assert torch.equal(d.test, xt) and torch.equal(d.test_labels, yt)
    # validation rows come from the official train set, labels travel with them
    i = int(torch.argmax(d.val.flatten(1).sum(1)))
    j = torch.nonzero((x.flatten(1) == d.val[i].flatten()).all(1)).flatten()
    assert j.numel() >= 1 and int(d.val_labels[i]) in y[j].tolist()


def test_torchvision_missing_root(tmp_path):
    missing = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError, match=r"(?s)nothing_here.*download"):
        load_torchvision("kmnist", missing, download=False)
    with pytest.raises(FileNotFoundError, match="download"):
        load_dataset("mnist", data_dir=missing)


# --------------------------------------------------------------------------- user files

@pytest.fixture
def arr():
    return np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)


@pytest.fixture
def labels():
    return np.arange(40) % 3


def _check_roundtrip(path, expected, expected_labels=None):
    x, y = load_file(path)
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(np.asarray(expected, dtype=np.float32)))
    if expected_labels is None:
        assert y is None
    else:
        assert y.dtype == torch.long and torch.equal(y, torch.as_tensor(expected_labels).long())


def test_npy_roundtrip(tmp_path, arr):
    np.save(tmp_path / "a.npy", arr)
    _check_roundtrip(tmp_path / "a.npy", arr)
    images = np.random.default_rng(1).integers(0, 256, size=(6, 3, 4, 4)).astype(np.uint8)
    np.save(tmp_path / "img.npy", images)
    _check_roundtrip(tmp_path / "img.npy", images)  # shape kept as stored


def test_npz_roundtrip(tmp_path, arr, labels):
    np.savez(tmp_path / "lab.npz", x=arr, y=labels)
    _check_roundtrip(tmp_path / "lab.npz", arr, labels)
    np.savez(tmp_path / "lab2.npz", data=arr, labels=labels)
    _check_roundtrip(tmp_path / "lab2.npz", arr, labels)
    np.savez(tmp_path / "nolab.npz", X=arr)
    _check_roundtrip(tmp_path / "nolab.npz", arr)
    np.savez(tmp_path / "single.npz", whatever=arr)
    _check_roundtrip(tmp_path / "single.npz", arr)


def test_csv_roundtrip(tmp_path, arr):
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, arr, delimiter=",", fmt="%.9g")
    _check_roundtrip(plain, arr)
    header = tmp_path / "header.csv"
    np.savetxt(header, arr, delimiter=",", fmt="%.9g", header="a,b,c,d,e", comments="")
    _check_roundtrip(header, arr)


def test_pt_roundtrip(tmp_path, arr, labels):
    torch.save(torch.from_numpy(arr), tmp_path / "t.pt")
    _check_roundtrip(tmp_path / "t.pt", arr)
    torch.save({"x": torch.from_numpy(arr), "y": torch.from_numpy(labels)}, tmp_path / "d.pt")
    _check_roundtrip(tmp_path / "d.pt", arr, labels)
    torch.save({"data": torch.from_numpy(arr)}, tmp_path / "d2.pt")
    _check_roundtrip(tmp_path / "d2.pt", arr)


def test_load_dataset_from_file(tmp_path, arr, labels):
    path = tmp_path / "mine.npz"
    np.savez(path, x=arr * 10, y=labels)
    d = load_dataset(str(path), preprocess="scale", seed=0)
    assert d.name == "mine.npz" and d.data_shape == (5,)
    assert len(d.train) + len(d.val) + len(d.test) == 40 and len(d.test) == 4
    assert d.train.min() == 0 and d.train.max() == 1
    for x in (d.val, d.test):
        assert x.min() >= 0 and x.max() <= 1
    # labels stay aligned after the split: find each raw row in the original array
    orig = load_dataset(str(path), preprocess="none", seed=0)
    allraw = torch.cat([orig.train, orig.val, orig.test]).numpy()
    ally = torch.cat([orig.train_labels, orig.val_labels, orig.test_labels])
    assert torch.equal(ally, torch.cat([d.train_labels, d.val_labels, d.test_labels]))
    for i in (0, 20, 39):
        row = int(np.flatnonzero(((arr * 10).astype(np.float32) == allraw[i]).all(1))[0])
        assert int(ally[i]) == labels[row]


def test_file_already_in_unit_range_is_left_alone(tmp_path):
    x = np.random.default_rng(0).uniform(size=(30, 4)).astype(np.float32)
    np.save(tmp_path / "unit.npy", x)
    d = load_dataset(str(tmp_path / "unit.npy"), preprocess="scale")
    raw = load_dataset(str(tmp_path / "unit.npy"), preprocess="none")
    assert torch.equal(d.train, raw.train) and d.train_labels is None


# --------------------------------------------------------------------------- bad files

def _raises(path, pattern, exc=ValueError):
    with pytest.raises(exc, match=rf"(?s){re.escape(Path(path).name)}.*{pattern}"):
        load_file(path)


def test_missing_file(tmp_path):
    _raises(tmp_path / "absent.npy", "no such", FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        load_dataset(str(tmp_path / "absent.csv"))


def test_empty_files(tmp_path):
    for name in ("e.csv", "e.npy", "e.pt"):
        (tmp_path / name).write_bytes(b"")
        _raises(tmp_path / name, "empty")
    (tmp_path / "h.csv").write_text("a,b,c\n\n")
    _raises(tmp_path / "h.csv", "zero data rows")
    np.save(tmp_path / "z.npy", np.zeros((0, 3)))
    _raises(tmp_path / "z.npy", "empty")


def test_ragged_csv(tmp_path):
    (tmp_path / "rag.csv").write_text("a,b,c\n1,2,3\n4,5,6\n7,8\n")
    _raises(tmp_path / "rag.csv", r"line 4 has 2 values but line 2 has 3")


def test_non_numeric_csv(tmp_path):
    (tmp_path / "txt.csv").write_text("1,2,3\n4,oops,6\n")
    _raises(tmp_path / "txt.csv", r"non-numeric value 'oops' at line 2, column 2")
    (tmp_path / "gap.csv").write_text("x,y\n1,2\n3,\n")
    _raises(tmp_path / "gap.csv", r"empty \(missing\) value at line 3, column 2")
    np.save(tmp_path / "str.npy", np.array([["a", "b"], ["c", "d"]]))
    _raises(tmp_path / "str.npy", "non-numeric")


def test_nan_inf(tmp_path):
    x = np.ones((5, 3))
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    _raises(tmp_path / "nan.npy", r"2 NaN or Inf.*first at index \(2, 1\)")
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n")
    _raises(tmp_path / "nan.csv", r"1 NaN or Inf.*\(1, 1\)")


def test_wrong_rank(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    _raises(tmp_path / "flat.npy", r"reshape to \[N, 1\]")
    torch.save(torch.arange(4.0), tmp_path / "flat.pt")
    _raises(tmp_path / "flat.pt", r"reshape to \[N, 1\]")


def test_unsupported_suffix_and_bad_containers(tmp_path, arr):
    (tmp_path / "data.txt").write_text("1,2\n")
    _raises(tmp_path / "data.txt", r"unsupported file type '.txt'.*\.npy.*\.csv")
    np.savez(tmp_path / "two.npz", a=arr, b=arr)
    _raises(tmp_path / "two.npz", r"which entry.*'x'")
    np.savez(tmp_path / "badlab.npz", x=arr, y=np.arange(3))
    _raises(tmp_path / "badlab.npz", "labels have shape")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    _raises(tmp_path / "junk.pt", "torch.load")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    _raises(tmp_path / "junk.npy", "numpy.load")
