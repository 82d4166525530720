"""`pyro-vae --help` and `--version` import neither torch nor Pyro; the components load when a command runs.

Every check that looks at ``sys.modules`` runs in a fresh interpreter (this one has
imported torch long ago). Speed itself is measured by benchmarks/bench_startup.py
(figures in benchmarks/RESULTS.md), not asserted here.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

HEAVY = ("torch", "pyro")


def _python(code: str, timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def _loaded(modules) -> list:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


ASKS = [["--version"], ["--help"], ["train", "--help"], ["evaluate", "--help"], ["sample", "--help"],
        ["encode", "--help"], []]


@pytest.mark.parametrize("argv", ASKS, ids=lambda a: " ".join(a) or "no-command")
def test_help_and_version_import_neither_torch_nor_pyro(argv):
    result = _python(f"""
        import contextlib, io, json, sys
        from pyro_vae.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main({argv!r})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps({{"code": code, "out": out.getvalue() + err.getvalue(), "heavy": heavy}}))
        """)
    assert result["heavy"] == []
    assert result["code"] == (2 if not argv else 0)  # no command: the help on stderr, exit code 2
    assert ("pyro-vae 0.1.0" if argv == ["--version"] else "usage: pyro-vae") in result["out"]


def test_python_m_pyro_vae_answers_without_torch():
    result = _python("""
        import contextlib, io, json, runpy, sys

        sys.argv = ["pyro-vae", "--version"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_module("pyro_vae", run_name="__main__")
            except SystemExit as done:
                code = done.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pyro"))
        print(json.dumps({"code": code, "out": out.getvalue(), "heavy": heavy}))
        """)
    assert result == {"code": 0, "out": "pyro-vae 0.1.0\n", "heavy": []}
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0 and "usage: pyro-vae train" in done.stdout


def test_the_help_still_lists_every_component_name():
    from pyro_vae._registry import LIKELIHOODS, MODELS, NETS, OBJECTIVES, OPTIMIZERS, PREPROCESSINGS, PRIORS
    from pyro_vae.cli import DATASET_NAMES

    done = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    out = " ".join(done.stdout.split())
    assert f"built-in dataset: {', '.join(DATASET_NAMES)}" in out
    assert f"p(z): {', '.join(PRIORS.builtin)}" in out and f"p(x|z): {', '.join(LIKELIHOODS.builtin)}" in out
    assert f"model type: {', '.join(MODELS.builtin)}" in out
    assert f"encoder/decoder family: {', '.join(NETS.builtin)}" in out
    assert f"training objective: {', '.join(OBJECTIVES.builtin)}" in out
    assert f"one of {', '.join(OPTIMIZERS.builtin)}" in out and f"one of {', '.join(PREPROCESSINGS.builtin)}" in out
    assert "negative-binomial" in out and "vamp" in out and "fashion-mnist" in out  # not empty tuples


def test_declared_builtin_names_are_the_registered_ones():
    """What the help lists without importing equals what each module registers (installed plugins left out)."""
    result = _python("""
        import json
        from pyro_vae import _registry, plugins
        from pyro_vae.cli import DATASET_NAMES

        plugins._entry_points_loaded = True  # only the package's own entries
        tables = {name: table for name, table in vars(_registry).items() if isinstance(table, _registry.Registry)}
        before = {name: table.names(load=False) for name, table in tables.items()}
        from pyro_vae.data import DATASETS

        print(json.dumps({"tables": {name: {"declared": list(t.builtin), "before": before[name],
                                            "registered": t.names(), "after": t.names(load=False),
                                            "source": t.source}
                                     for name, t in tables.items()},
                          "datasets": [list(DATASET_NAMES), list(DATASETS)]}))
        """)
    tables = result["tables"]
    assert set(tables) == {"PRIORS", "POSTERIORS", "LIKELIHOODS", "NETS", "MODELS", "OBJECTIVES", "KL_SCHEDULES", "OPTIMIZERS",
                           "LR_SCHEDULES", "PREPROCESSINGS"}
    for name, t in tables.items():
        assert t["declared"], name
        assert t["registered"] == t["declared"], name
        assert t["before"] == t["declared"] and t["after"] == t["registered"], name
    datasets, declared_datasets = result["datasets"][1], result["datasets"][0]
    assert declared_datasets == datasets


def test_lazy_import_keeps_the_public_names():
    result = _python("""
        import json, sys
        import pyro_vae

        version = pyro_vae.__version__
        before = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pyro"))
        VAE = pyro_vae.VAE
        from pyro_vae import fit, PRIORS
        from pyro_vae.models import VAE as direct
        from pyro_vae.train import fit as direct_fit
        from pyro_vae._registry import PRIORS as table
        every = {name: getattr(pyro_vae, name) is not None for name in pyro_vae.__all__}
        try:
            pyro_vae.no_such_name
            missing = "no error"
        except AttributeError as err:
            missing = str(err)
        star = {}
        exec("from pyro_vae import *", star)
        print(json.dumps({"version": version, "before": before, "same": [VAE is direct, fit is direct_fit,
                                                                          PRIORS is table],
                          "every": every, "missing": missing, "submodule": pyro_vae.priors.__name__,
                          "dir": sorted(set(pyro_vae.__all__) - set(dir(pyro_vae))),
                          "star": sorted(set(pyro_vae.__all__) - set(star)), "vae": VAE.__name__}))
        """)
    assert result["version"] == "0.1.0" and result["before"] == []
    assert result["same"] == [True, True, True] and result["vae"] == "VAE"
    assert all(result["every"].values()) and len(result["every"]) >= 30
    assert "no attribute 'no_such_name'" in result["missing"]
    assert result["submodule"] == "pyro_vae.priors"  # submodules stay reachable as attributes
    assert result["dir"] == [] and result["star"] == []


def test_a_registration_before_the_first_look_up_replaces_the_builtin_of_its_name():
    """As when the CLI loaded every table on import: built-in entries first, a plugin's same name wins."""
    result = _python("""
        import json
        from pyro_vae._registry import NETS, PRIORS

        NETS.register("linear", "mine", doc="a plugin's own linear net")  # before pyro_vae.nets is imported
        PRIORS.unregister("vamp")  # before pyro_vae.priors is imported
        print(json.dumps({"linear": NETS["linear"].factory, "nets": NETS.names(), "priors": PRIORS.names()}))
        """)
    assert result["linear"] == "mine"
    assert result["nets"] == ["mlp", "conv", "linear"]
    assert "vamp" not in result["priors"] and "mog" in result["priors"]


def test_a_plugin_still_registers_before_a_command_resolves_its_names(tmp_path):
    """--plugin is imported when the command runs, and its names resolve (the help lists only built-ins)."""
    plugin = tmp_path / "my_prior.py"
    plugin.write_text(textwrap.dedent("""
        from pyro_vae.priors import PRIORS, StandardNormal

        PRIORS.register("my-normal", lambda latent_dim, data_shape=None: StandardNormal(latent_dim),
                        doc="a standard normal under another name", target=None)
        """))
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--plugin", str(plugin), "--prior", "my-normal",
                           "--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--out", str(tmp_path / "run"),
                           "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'prior = "my-normal"' in (tmp_path / "run" / "config.toml").read_text()


def test_startup_benchmark_runs(tmp_path):
    """bench_startup.py --quick: every command timed in fresh processes, and none of the pyro-vae ones imports torch."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_startup.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "startup.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["python -c pass", "pyro-vae --version", "pyro-vae --help",
                                         "pyro-vae train --help"]
    for r in rows:
        assert len(r["times_s"]) == 2 and r["median_s"] > 0
        assert not r["imports_torch"] and not r["imports_pyro"], r["case"]
    assert "| `pyro-vae --help` |" in (tmp_path / "startup.md").read_text()
