"""Training on the embedded digits improves the held-out ELBO for every likelihood that fits the data."""

import pytest
import torch

from pyro_vae import VAE, elbo, fit

# (likelihood spec, transform of the [0, 1] digits into the likelihood's support, asserted gain in nats/point)
CASES = {
    "bernoulli": ({"name": "bernoulli"}, lambda x: x, 10.0),
    "continuous-bernoulli": ({"name": "continuous-bernoulli"}, lambda x: x, 10.0),
    "normal": ({"name": "normal", "scale": "feature"}, lambda x: x, 20.0),
    "laplace": ({"name": "laplace", "scale": "feature"}, lambda x: x, 20.0),
    "poisson": ({"name": "poisson"}, lambda x: (x * 16).round(), 20.0),
    "negative-binomial": ({"name": "negative-binomial"}, lambda x: (x * 16).round(), 20.0),
    "zinb": ({"name": "zinb"}, lambda x: (x * 16).round(), 20.0),
    "categorical": ({"name": "categorical", "levels": 17}, lambda x: (x * 16).round(), 20.0),
}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_training_improves_heldout_elbo(digits, name):
    spec, transform, margin = CASES[name]
    x = transform(digits[0])
    train, test = x[:1500], x[1500:]
    vae = VAE((1, 8, 8), latent_dim=8, likelihood=spec, net={"name": "mlp", "hidden": [128]})
    before = elbo(vae, test, num_particles=4)
    result = fit(vae, train, epochs=15, batch_size=64, lr=3e-3, progress=False, val_data=test, val_every=5)
    after = elbo(vae, test, num_particles=4)
    assert after > before + margin, (before, after)
    assert [r["epoch"] for r in result.history] == list(range(1, 16))
    assert [r["epoch"] for r in result.history if "val_elbo" in r] == [5, 10, 15]
    assert len(result.step_losses) == 15 * 24


def test_fit_is_reproducible_under_a_seed(digits):
    """Same initial weights and seed: identical losses; another fit seed: different minibatches and noise."""
    x = digits[0][:300]
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(0)  # the weights are drawn at construction, before fit seeds
        vae = VAE((1, 8, 8), latent_dim=2, net={"name": "mlp", "hidden": [32]})
        runs.append(fit(vae, x, epochs=2, seed=seed, progress=False).step_losses)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
