"""``MultiTensorOptim`` against Pyro's own per-parameter optimisers: same trajectory, fused where torch can."""

import copy

import pyro
import pytest
import torch

from pyro_vae import VAE
from pyro_vae.objectives import SummedTrace_ELBO
from pyro_vae.optim import MultiTensorOptim, make_optimizer
from pyro_vae.step import Stepper


def _trajectory(optim, steps=25):
    """The VAE's parameters after ``steps`` steps on fixed digits-sized data, same seed, same noise."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, likelihood={"name": "normal", "scale": "feature"},
              net={"name": "mlp", "hidden": [16]})
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    step = Stepper(vae.model, vae.guide, optim, SummedTrace_ELBO())
    pyro.set_rng_seed(2)
    losses = [step(x[i % 4 * 10:(i % 4 + 1) * 10], torch.arange(10), 40) for i in range(steps)]
    return losses, {name: p.detach().clone() for name, p in vae.named_parameters()}


@pytest.mark.parametrize("name, pyro_optim", [("adam", pyro.optim.Adam), ("adamw", pyro.optim.AdamW)])
def test_one_fused_optimiser_follows_pyros_per_parameter_ones(name, pyro_optim):
    """25 steps with one fused torch optimiser over all parameters against Pyro's one-per-tensor optimisers."""
    args = {"lr": 3e-3, "betas": (0.8, 0.95), "weight_decay": 1e-2}
    ours = make_optimizer(name, **args)
    losses, params = _trajectory(ours)
    assert ours.optimizer.defaults["fused"] is True  # the fused kernel was taken on this CPU
    want_losses, want = _trajectory(pyro_optim(args))
    assert losses == pytest.approx(want_losses, rel=1e-4)
    assert params.keys() == want.keys()
    for key in params:
        torch.testing.assert_close(params[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
    # the update moved every tensor: equal trajectories are not two untouched networks
    torch.manual_seed(0)
    init = VAE((1, 8, 8), latent_dim=3, likelihood={"name": "normal", "scale": "feature"},
               net={"name": "mlp", "hidden": [16]})
    assert all(not torch.equal(p, params[k]) for k, p in init.named_parameters())


def test_an_explicit_kernel_choice_is_kept_and_an_unfused_optimiser_falls_back():
    x = torch.rand(10, 1, 8, 8)

    def built(optim):
        vae = VAE((1, 8, 8), latent_dim=2, net={"name": "mlp", "hidden": [8]})
        Stepper(vae.model, vae.guide, optim, SummedTrace_ELBO())(x, torch.arange(10), 10)
        return optim.optimizer.defaults

    chosen = built(make_optimizer("adam", foreach=False))
    assert chosen["foreach"] is False and not chosen["fused"]

    class NoFusedKernel(torch.optim.Adam):  # what torch does for a device or dtype it has no fused kernel for
        def __init__(self, params, lr=1e-3, foreach=None, fused=None):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices")
            super().__init__(params, lr, foreach=foreach, fused=fused)

    fallback = built(MultiTensorOptim(NoFusedKernel, {"lr": 1e-3}))
    assert fallback["foreach"] is True and not fallback["fused"]
    assert built(make_optimizer("clipped-adam"))["clip_norm"] == 10.0  # Pyro's ClippedAdam: no kernel choice


def test_a_checkpointed_state_restores_into_a_fused_optimiser_by_name():
    """``get_state`` from an optimiser whose kernel was ``foreach`` continues identically in a fused one."""
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3))

    def run(optim, state=None, steps=3):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = VAE((1, 8, 8), latent_dim=2, net={"name": "mlp", "hidden": [8]})
        if state is not None:  # a copy, as a checkpoint file gives: the optimiser updates its state in place
            vae.load_state_dict(state[0])
            optim.set_state(copy.deepcopy(state[1]))
        step = Stepper(vae.model, vae.guide, optim, SummedTrace_ELBO())
        pyro.set_rng_seed(5)
        for _ in range(steps):
            step(x, torch.arange(10), 10)
        return vae, optim

    vae, first = run(make_optimizer("adam", lr=1e-2, foreach=True))
    saved = ({k: v.clone() for k, v in vae.state_dict().items()}, first.get_state())
    assert first.optimizer.defaults["foreach"] is True
    resumed, fused = run(make_optimizer("adam", lr=1e-2), saved)
    assert fused.optimizer.defaults["fused"] is True
    continued, _ = run(make_optimizer("adam", lr=1e-2, foreach=True), saved)
    for (name, a), b in zip(resumed.state_dict().items(), continued.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert all(int(s["step"]) == 6 for s in fused.optimizer.state.values())
