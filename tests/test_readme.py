"""The README stays true: its table names every registered component, and its commands match CI."""

import re

from conftest import REPO

from pyro_vae import LIKELIHOODS, NETS, PRIORS


def test_readme_table_lists_every_config_name():
    text = (REPO / "README.md").read_text()
    rows = set(re.findall(r"^\| (prior|likelihood|net) \| `([^`]+)` \|", text, flags=re.M))
    expected = {("prior", n) for n in PRIORS.names()} | {("likelihood", n) for n in LIKELIHOODS.names()} | {
        ("net", n) for n in NETS.names()}
    assert rows == expected


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
    assert set(rows) >= set(MODELS.names())
    for name in MODELS.names():
        listed = set(re.findall(r"`([a-z_]+)`", rows[name])) - {"bottom-up", "ladder"}
        listed = {k for k in listed if not k.startswith("latent_dim ")}
        assert listed == set(ModelConfig.type_options(MODELS[name])), name
