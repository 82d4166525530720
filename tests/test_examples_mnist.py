"""examples/mnist_vae.py in smoke mode, as a subprocess: on the shared MNIST archives when present, else digits."""

import shutil
import subprocess
import sys

from PIL import Image

from conftest import REPO, SHARED_DATA


def test_mnist_example_smoke(tmp_path):
    raw = SHARED_DATA / "MNIST" / "raw"
    if raw.is_dir() and list(raw.glob("*.gz")):
        root = tmp_path / "data"  # torchvision unpacks next to the archives: copy them somewhere writable
        (root / "MNIST" / "raw").mkdir(parents=True)
        for archive in raw.glob("*.gz"):
            shutil.copy(archive, root / "MNIST" / "raw" / archive.name)
        source = ["--data-dir", str(root), "--download"]  # finds the archives by checksum: no network
        expected = "mnist: 500 training / 300 test points"
    else:
        source = ["--dataset", "digits"]
        expected = "digits: 500 training"
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "examples" / "mnist_vae.py"), "--smoke", "--out", str(out),
                           *source], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout and "test ELBO" in done.stdout
    for name in ("elbo.png", "reconstructions.png", "samples.png"):
        with Image.open(out / name) as im:
            im.load()
