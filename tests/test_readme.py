"""The README stays true: its table names every registered component, and its commands match CI."""

import re
import subprocess
import sys

from conftest import REPO

from pyro_vae import LIKELIHOODS, NETS, POSTERIORS, PRIORS


def _own(registry) -> list:
    """The names pyro_vae registers itself (a plugin imported by another test may have added more)."""
    return [e.name for e in registry if (getattr(e.target, "__module__", "") or "").startswith("pyro_vae.")]


def test_readme_table_lists_every_config_name():
    text = (REPO / "README.md").read_text()
    rows = set(re.findall(r"^\| (prior|posterior|likelihood|net) \| `([^`]+)` \|", text, flags=re.M))
    expected = {("prior", n) for n in _own(PRIORS)} | {("likelihood", n) for n in _own(LIKELIHOODS)} | {
        ("net", n) for n in _own(NETS)} | {("posterior", n) for n in _own(POSTERIORS)}
    assert rows == expected and len(expected) == 26


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in readme
    assert re.search(r"^python -m pytest$", ci, flags=re.M)
    install = 'pip install torch==2.14.1 torchvision==0.29.1 -e ".[dev]"'
    assert install in readme and install.replace("pip install", "pip install --quiet") in ci


def test_readme_model_type_table_lists_every_type_and_its_options():
    """Each row of the model-type table names exactly the `[model]` keys that type accepts."""
    from pyro_vae.config import ModelConfig
    from pyro_vae.hierarchical import MODELS

    text = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9]+)` \| ((?:`[^|]*`[^|]*)?)\| [^|]*\|$", text, flags=re.M))
    assert set(rows) >= set(_own(MODELS)) == {"vae", "stacked", "m2", "cvae", "grouped"}
    for name in _own(MODELS):
        listed = set(re.findall(r"`([a-z_]+)`", rows[name])) - {"bottom-up", "ladder"}
        listed = {k for k in listed if not k.startswith("latent_dim ")}
        assert listed == set(ModelConfig.type_options(MODELS[name])), name


_RUN_BLOCKS = """
import re, sys, traceback
text = open(sys.argv[1], encoding="utf-8").read()
namespace = {"__name__": "__readme__"}
for i, block in enumerate(re.findall(r"```python\\n(.*?)```", text, flags=re.S)):
    try:
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    except Exception:
        traceback.print_exc()
        sys.exit(f"README.md python block {i} failed:\\n{block}")
print("ran", i + 1, "blocks")
"""


def test_every_python_block_of_the_readme_runs_as_pasted(tmp_path):
    """The blocks run in order in one namespace, as a reader pastes them into one session."""
    done = subprocess.run([sys.executable, "-c", _RUN_BLOCKS, str(REPO / "README.md")], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    blocks = re.findall(r"```python\n", (REPO / "README.md").read_text())
    assert f"ran {len(blocks)} blocks" in done.stdout and len(blocks) >= 4
