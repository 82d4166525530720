"""The MODELS table, the Model interface fit/elbo rely on, and the examples run as a user would."""

import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SHARED_DATA
from pyro_vae import VAE, Model, elbo, fit
from pyro_vae.hierarchical import MODELS, make_model  # the former home's re-exports stay importable
from pyro_vae.objectives import model_objective


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest


OPTIONS = {"vae": {}, "stacked": {"latent_dims": [4, 2]}, "m2": {"alpha": 1.0}, "cvae": {},
           "grouped": {"num_groups": 3}}


def inputs_for(model, n=24):
    x = torch.rand(n, 1, 8, 8)
    extra = {"y": torch.where(torch.arange(n) < 8, torch.arange(n) % 10, -1), "c": torch.arange(n) % 10,
             "g": torch.arange(n) % 3}
    return (x,) + tuple(extra[name] for name in getattr(model, "inputs", ("x",))[1:])


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_fits_and_evaluates(name):
    model = MODELS.build({"name": name, **OPTIONS[name]}, data_shape=(1, 8, 8), latent_dim=4, prior="normal",
                         likelihood="bernoulli", net={"name": "mlp", "hidden": [16]})
    assert isinstance(model, Model)
    for attr in ("model", "guide", "check_data", "device", "name", "latent_sites"):
        assert hasattr(model, attr), attr
    assert not isinstance(model, VAE) or name == "vae"  # composition, not a VAE subclass per variant
    data = inputs_for(model)
    objective = model_objective(model, "enum" if name == "m2" else "elbo")
    result = fit(model, data, epochs=2, batch_size=8, objective=objective, progress=False)
    assert math.isfinite(result.final_elbo)
    loss = None
    if name == "m2":
        from pyro.infer import TraceEnum_ELBO

        loss = TraceEnum_ELBO(max_plate_nesting=1)
    assert math.isfinite(elbo(model, data, loss=loss))


@pytest.mark.filterwarnings("ignore:.*was not registered in the param store")
@pytest.mark.parametrize("name,prior", [(n, "normal") for n in MODELS.names()] + [("vae", "vamp"), ("stacked", "mog")])
def test_each_parameter_is_registered_once_by_its_program(name, prior):
    """The guide registers its networks, the model the rest: names as ``pyro.module`` gives, none twice or lost."""
    import pyro
    from pyro import poutine

    model = MODELS.build({"name": name, **OPTIONS[name]}, data_shape=(1, 8, 8), latent_dim=4, prior=prior,
                         likelihood="bernoulli", net={"name": "mlp", "hidden": [16]})
    frozen = next(iter(model.decoder.parameters())).requires_grad_(False)
    with poutine.trace(param_only=True) as reference:  # Pyro's own registration of the whole module
        pyro.module(model.name, model)
    want = set(reference.trace.nodes)
    sites = {}
    for program in ("model", "guide"):
        with poutine.trace(param_only=True) as tr:
            getattr(model, program)(*inputs_for(model))
        sites[program] = set(tr.trace.nodes)
    assert sites["model"] | sites["guide"] == want and not sites["model"] & sites["guide"] and sites["model"]
    frozen_name = f"{model.name}$$$" + next(k for k, p in model.named_parameters() if p is frozen)
    assert len(want) == sum(p.requires_grad for p in model.parameters()) and frozen_name not in want
    for part in model.guide_parts:  # each guide part exists and every parameter under it is the guide's
        owned = {f"{model.name}$$${k}" for k, _ in model.named_parameters() if k.partition(".")[0] == part}
        assert isinstance(getattr(model, part), (torch.nn.Module, torch.nn.Parameter)) and owned <= sites["guide"], part
    assert any(k.partition(".")[0] in model.guide_parts for k, _ in model.named_parameters())


def test_the_former_homes_reexport_the_same_objects():
    import pyro_vae.hierarchical as old
    import pyro_vae.hierarchical.registry as old_registry
    from pyro_vae import models
    from pyro_vae.models import registry

    assert old.__all__ and old_registry.__all__
    for name in old.__all__:
        assert getattr(old, name) is getattr(models, name), name
    for name in old_registry.__all__:
        assert getattr(old_registry, name) is getattr(registry, name), name
    import importlib

    from pyro_vae.model import VAE

    assert VAE is models.VAE
    for module in ("conditional", "grouped", "parts", "semisupervised", "stacked"):  # the old module paths
        assert importlib.import_module(f"pyro_vae.hierarchical.{module}") is getattr(models, module), module


def test_builder_defaults_and_errors():
    stacked = make_model("stacked", (5,), latent_dim=6)
    assert stacked.latent_dims == [6, 3]
    assert make_model("cvae", (5,)).context_shape == (10,)
    with pytest.raises(ValueError, match="num_groups"):
        make_model("grouped", (5,))
    with pytest.raises(ValueError, match="Did you mean 'latent_dims'"):
        make_model({"name": "stacked", "latent_dim": [3]}, (5,))
    with pytest.raises(ValueError, match="unknown model"):
        make_model("ladder-vae", (5,))
    # each hidden-size option is named in its error, with what to do
    for spec, prior, match in [
        ({"name": "m2", "classifier_hidden": []}, "normal",
         r"classifier_hidden must be a non-empty list.*got \[\]; the classifier q\(y \| x\) needs one"),
        ({"name": "stacked", "stage_hidden": [0]}, "normal",
         r"stage_hidden must be a list of positive layer sizes, got \[0\]; \[\] makes the stages linear"),
        ("cvae", {"name": "conditional", "hidden": [-1]},
         r"hidden must be a list of positive layer sizes, got \[-1\]; \[\] makes a conditional Gaussian linear"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_model(spec, (5,), prior=prior)


@pytest.mark.parametrize("script, expect", [
    ("stacked_vae.py", "IWAE"),
    ("ss_vae_m2.py", "M2 test accuracy"),
    ("cvae_digits.py", "quadrant"),
    ("grouped_counts.py", "R^2"),
])
def test_example_smoke(script, expect):
    out = subprocess.run([sys.executable, str(REPO / "examples" / script), "--smoke"], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert expect in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no local MNIST archives")
def test_stacked_example_on_mnist():
    out = subprocess.run([sys.executable, str(REPO / "examples" / "stacked_vae.py"), "--epochs", "1"],
                         capture_output=True, text=True, timeout=3600, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("mnist")
