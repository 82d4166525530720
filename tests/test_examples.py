"""The examples run end to end in their smoke mode, as a user would run them."""

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("script", ["quickstart.py", "custom_prior.py"])
def test_example_smoke(script):
    out = subprocess.run([sys.executable, str(REPO / "examples" / script), "--smoke"], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test ELBO" in out.stdout
