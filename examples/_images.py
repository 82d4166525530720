"""Image data for the hierarchical examples: MNIST when it can be had, else the embedded digits."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pyro_vae.data import load_dataset

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


def load_images(dataset: str, data_dir):
    """MNIST from ``data_dir`` or the shared archives (copied to a temporary root), else the digits."""
    if dataset == "mnist" and data_dir is None and SHARED_MNIST.is_dir():
        data_dir = tempfile.mkdtemp(prefix="pyro_vae_mnist_")
        shutil.copytree(SHARED_MNIST, Path(data_dir) / "MNIST" / "raw")
    if dataset == "mnist" and data_dir is None:
        print("MNIST not found (pass --data-dir); using the embedded digits")
        dataset = "digits"
    return load_dataset(dataset, data_dir=data_dir, download=data_dir is not None, preprocess="scale", seed=0)
