"""The README stays true: its table names every registered component, and its commands match CI."""

import re

from conftest import REPO

from pyro_vae import LIKELIHOODS, NETS, PRIORS


def _own(registry) -> list:
    """The names pyro_vae registers itself (a plugin imported by another test may have added more)."""
    return [e.name for e in registry if (getattr(e.target, "__module__", "") or "").startswith("pyro_vae.")]


def test_readme_table_lists_every_config_name():
    text = (REPO / "README.md").read_text()
    rows = set(re.findall(r"^\| (prior|likelihood|net) \| `([^`]+)` \|", text, flags=re.M))
    expected = {("prior", n) for n in _own(PRIORS)} | {("likelihood", n) for n in _own(LIKELIHOODS)} | {
        ("net", n) for n in _own(NETS)}
    assert rows == expected and len(expected) == 16


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
