"""examples/compare_models.py runs end to end in its smoke mode, as a user would run it."""

import csv
import subprocess
import sys

from conftest import REPO

from pyro_vae import PRIORS
from pyro_vae.posteriors import POSTERIORS


def test_compare_models_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "compare_models.py"), "--smoke", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "self-check passed" in out.stdout
    with open(tmp_path / "compare_models.csv") as f:
        rows = list(csv.DictReader(f))
    # the baseline, one row per other prior, one per other posterior, one per other [0, 1] likelihood
    assert len(rows) == len(PRIORS.names()) + len(POSTERIORS.names()) + 1
    assert {r["prior"] for r in rows} == set(PRIORS.names())
    assert {r["posterior"] for r in rows} == set(POSTERIORS.names())
    assert all(r["prior"] == "normal" and r["likelihood"] == "bernoulli" for r in rows if r["posterior"] != "normal")
    assert {r["likelihood"] for r in rows} == {"bernoulli", "continuous-bernoulli", "normal"}
    for r in rows:
        assert float(r["iwae"]) >= float(r["elbo"]) - 0.5
        assert 0.0 <= float(r["khat_above_07"]) <= 1.0
    assert (tmp_path / "compare_models.png").stat().st_size > 1000
