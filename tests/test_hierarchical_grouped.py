"""Group-level latents: plates, their scaling, and recovery of known group offsets from counts."""

import math

import pytest
import torch
from pyro import poutine

from pyro_vae import fit, make_optimizer
from pyro_vae.models import GroupedVAE


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest

G, LATENT, D, N = 12, 2, 30, 2400


def test_plates_shapes_and_scaling():
    vae = GroupedVAE(D, num_groups=5, latent_dim=3, net={"name": "mlp", "hidden": [8]})
    x = torch.poisson(torch.full((4, D), 3.0))
    g = torch.tensor([0, 4, 4, 2])
    kwargs = dict(idx=torch.tensor([3, 7, 8, 20]), num_data=40)
    guide_tr = poutine.trace(vae.guide).get_trace(x, g, **kwargs)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, g, **kwargs)
    for tr in (guide_tr, model_tr):
        u, z = tr.nodes["u"], tr.nodes["z"]
        assert u["value"].shape == (5, 3) and [f.name for f in u["cond_indep_stack"]] == ["groups"]
        assert u["scale"] == 1.0  # global terms: never scaled by the minibatch
        assert z["value"].shape == (4, 3) and [f.name for f in z["cond_indep_stack"]] == ["data"]
        assert z["scale"] == 10.0  # num_data / batch
    assert model_tr.nodes["x"]["scale"] == 10.0
    # the per-point prior is centred on the point's group offset
    prior_z = model_tr.nodes["z"]["fn"]
    u = guide_tr.nodes["u"]["value"]
    log_p = prior_z.log_prob(guide_tr.nodes["z"]["value"])
    expected = torch.distributions.Normal(u[g], 1.0).log_prob(guide_tr.nodes["z"]["value"]).sum(-1)
    assert torch.allclose(log_p, expected, atol=1e-5)


def test_group_labels_are_checked():
    vae = GroupedVAE(3, num_groups=2, latent_dim=1, net={"name": "mlp", "hidden": [4]})
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="0..1"):
        vae.model(x, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="group labels"):
        vae.guide(x, None)
    with pytest.raises(ValueError, match="group_scale"):
        GroupedVAE(3, num_groups=2, group_scale=-1.0)


@pytest.fixture(scope="module")
def batch_effect_counts():
    """Counts whose latent state is a strong per-group offset plus a small per-point spread."""
    g = torch.Generator().manual_seed(2)
    offsets = 2.0 * torch.randn(G, LATENT, generator=g)
    groups = torch.arange(N) % G
    z = offsets[groups] + 0.5 * torch.randn(N, LATENT, generator=g)
    w = 0.6 * torch.randn(D, LATENT, generator=g)
    return torch.poisson(torch.exp(z @ w.T + 1.5), generator=g), groups, offsets


def r_squared(estimate, truth):
    """Per true dimension, R^2 of the best affine map from the estimates (latents are identified up to one)."""
    design = torch.cat([estimate, torch.ones(len(estimate), 1)], 1)
    fitted = design @ torch.linalg.lstsq(design, truth).solution
    return 1 - ((truth - fitted) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)


def between_groups(z, groups):
    """Fraction of the variance of ``z`` explained by the group means."""
    means = torch.stack([z[groups == k].mean(0) for k in range(G)])[groups]
    return (((means - z.mean(0)) ** 2).sum() / ((z - z.mean(0)) ** 2).sum()).item()


def test_inferred_offsets_track_true_group_offsets(batch_effect_counts):
    x, groups, offsets = batch_effect_counts
    vae = GroupedVAE(D, G, latent_dim=LATENT, likelihood="negative-binomial", net={"name": "mlp", "hidden": [64]})
    result = fit(vae, (x, groups), epochs=40, batch_size=256, optim=make_optimizer("adam", lr=1e-2), progress=False)
    assert math.isfinite(result.final_elbo)
    assert (r_squared(vae.offsets(), offsets) > 0.85).all()
    # a shuffled assignment of offsets to groups is not explained: the check can fail
    assert (r_squared(vae.offsets()[torch.randperm(G, generator=torch.Generator().manual_seed(0))], offsets)
            < 0.85).any()
    # the population scale learned is of the order of the offsets' spread
    assert vae.group_scale.item() > 0.5
    # removing the offsets removes much of the group structure from the representation
    # (measured over three seeds: from 0.82 of the variance between groups to 0.44-0.54)
    raw, corrected = vae.encode(x)[0], vae.corrected(x, groups)
    assert between_groups(corrected, groups) < between_groups(raw, groups) - 0.2
    assert vae.sample(4, g=torch.tensor([0, 1, 2, 3])).shape == (4, D)
