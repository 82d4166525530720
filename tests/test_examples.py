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


def test_plugin_example_smoke():
    """examples/my_components.py: factor analysis in plain Pyro on the model interface, its IWAE checked
    against the exact marginal inside the script."""
    out = subprocess.run([sys.executable, str(REPO / "examples" / "my_components.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exact log p(x)" in out.stdout and "IWAE-2000" in out.stdout
