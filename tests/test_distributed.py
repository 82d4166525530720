"""Data-parallel training (pyro_vae.distributed): two gloo processes on the loopback interface against one.

Every multi-process run is a subprocess with a timeout, so a hang fails the test instead of blocking.
"""

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

import ddp_case
from pyro_vae.distributed import ShardSampler, launch_command
from pyro_vae.evaluate import elbo as evaluate_elbo
from pyro_vae.objectives import LatentScale, model_objective
from pyro_vae.train import Stepper, sync_param_store

TIMEOUT = 120
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _torchrun(args, **kwargs):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(launch_command(1, [])[8]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=ENV, cwd=REPO, **kwargs)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """``tests/ddp_case.py`` trained by two processes: each rank's weights, step losses and history."""
    out = tmp_path_factory.mktemp("ddp")
    done = _torchrun([str(REPO / "tests" / "ddp_case.py"), str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_process():
    """The single-process reference: the same case stepped by the library's plain :class:`Stepper`
    (``loss_and_grads``, no process group) on the whole of each global batch, in the order the sampler
    deals them, with the KL warm-up and validation of ``fit``."""
    vae, train, val, kwargs = ddp_case.make_case()
    sync_param_store(vae)
    scaler = LatentScale(vae.latent_sites)
    stepper = Stepper(scaler(vae.model), scaler(vae.guide), kwargs["optimizer"], model_objective(vae, "elbo"))
    sampler = ShardSampler(len(train), ddp_case.BATCH, seed=ddp_case.SEED, rank_=0, world=2)
    schedule, step, losses, val_elbos = kwargs["kl_weight"], 0, [], []
    for epoch in range(1, ddp_case.EPOCHS + 1):
        vae.train()
        for idx in sampler.global_batches(epoch):
            scaler.weight = schedule(step / sampler.steps_per_epoch)
            losses.append(stepper(train[idx], idx=idx, num_data=len(train)) / len(train))
            step += 1
        vae.eval()
        val_elbos.append(evaluate_elbo(vae, val))
    return {"params": {k: v.detach().clone() for k, v in vae.state_dict().items()}, "step_losses": losses,
            "val_elbo": val_elbos, "start": ddp_case.make_case()[0].state_dict()}


def test_two_ranks_hold_identical_weights_equal_to_one_process_on_the_global_batches(two_ranks, one_process):
    """Ground truth for sharding, scaling and averaging. The case's guide fixes each data point's noise
    (``FixedNoiseVAE``), so a point's loss does not depend on which process evaluates it; plain SGD makes
    the update proportional to the gradient (a summed instead of averaged gradient, a plate scaled by
    N/B instead of N/(B/W), or a rank taking the wrong part of a batch all change the weights by far more
    than 1e-5). The reference never calls DDP or ``differentiable_loss``: it is one process stepping the
    library's ``Stepper`` on each whole global batch."""
    rank0, rank1 = two_ranks[0]["params"], two_ranks[1]["params"]
    assert rank0.keys() == one_process["params"].keys()
    moved = 0.0
    for name, ref in one_process["params"].items():
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], ref, rtol=0, atol=1e-5, msg=name)
        moved = max(moved, float((ref - one_process["start"][name]).abs().max()))
    assert moved > 1e-2  # the check is not vacuous: training moved the weights well beyond the tolerance
    assert len(two_ranks[0]["step_losses"]) == ddp_case.EPOCHS * 6  # 5 full batches + the last 3 points cut to 2


def test_reported_elbos_equal_the_single_process_elbos(two_ranks, one_process):
    """Every step's loss (all-reduced over ranks), each epoch's train ELBO and the validation ELBO (rank 0's,
    broadcast) equal the single-process values on the same data, on both ranks."""
    for rank in two_ranks:
        torch.testing.assert_close(torch.tensor(rank["step_losses"]), torch.tensor(one_process["step_losses"]),
                                   rtol=1e-5, atol=1e-5)
        per_epoch = torch.tensor(one_process["step_losses"]).reshape(ddp_case.EPOCHS, -1).mean(1)
        torch.testing.assert_close(torch.tensor([-r["train_elbo"] for r in rank["history"]]), per_epoch,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.tensor([r["val_elbo"] for r in rank["history"]]),
                                   torch.tensor(one_process["val_elbo"]), rtol=1e-5, atol=1e-5)
