"""Data-parallel training (pyro_vae.distributed): two gloo processes on the loopback interface against one.

Every multi-process run is a subprocess with a timeout, so a hang fails the test instead of blocking.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

import ddp_case
from pyro_vae.checkpoint import CHECKPOINT, load_run, load_run_checkpoint
from pyro_vae.distributed import ShardSampler, launch_command
from pyro_vae.evaluate import elbo as evaluate_elbo
from pyro_vae.objectives import LatentScale, model_objective
from pyro_vae.train import Stepper, sync_param_store

TIMEOUT = 120
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _torchrun(args, **kwargs):
    return subprocess.run(launch_command(2, args), capture_output=True, text=True, timeout=TIMEOUT, env=ENV, cwd=REPO,
                          **kwargs)


@pytest.fixture(scope="module", params=sorted(ddp_case.CASES))
def posterior(request):
    """The case: ``normal``, ``planar`` (a flow posterior) or ``sparse`` (the ranks read a SciPy CSR source; the
    one-process reference trains on the same data dense)."""
    return request.param


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, posterior):
    """``tests/ddp_case.py`` trained by two processes: each rank's weights, step losses and history."""
    out = tmp_path_factory.mktemp("ddp")
    done = _torchrun([str(REPO / "tests" / "ddp_case.py"), str(out), posterior])
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_process(posterior):
    """The single-process reference: the same case stepped by the library's plain :class:`Stepper`
    (``loss_and_grads``, no process group) on the whole of each global batch, in the order the sampler
    deals them, with the KL warm-up and validation of ``fit``."""
    vae, train, val, kwargs = ddp_case.make_case(posterior, dense=True)
    sync_param_store(vae)
    scaler = LatentScale(vae.latent_sites)
    stepper = Stepper(scaler(vae.model), scaler(vae.guide), kwargs["optim"], model_objective(vae, "elbo"))
    sampler = ShardSampler(len(train), ddp_case.BATCH, seed=ddp_case.SEED, rank_=0, world=2)
    schedule, step, losses, val_elbos = kwargs["kl_schedule"], 0, [], []
    for epoch in range(1, ddp_case.EPOCHS + 1):
        vae.train()
        for idx in sampler.global_batches(epoch):
            scaler.weight = schedule(step / sampler.steps_per_epoch)
            losses.append(stepper(train[idx], idx, num_data=len(train)) / len(train))
            step += 1
        vae.eval()
        val_elbos.append(evaluate_elbo(vae, val))
    return {"params": {k: v.detach().clone() for k, v in vae.state_dict().items()}, "step_losses": losses,
            "val_elbo": val_elbos, "start": ddp_case.make_case(posterior)[0].state_dict()}


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


def _cli(args, cwd, **kwargs):
    return subprocess.run([sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=ENV, cwd=cwd, **kwargs)


TINY = ["--hidden", "16", "--latent-dim", "2", "--quiet", "--set", "train.checkpoint_every=1"]


def test_nproc_2_writes_one_run_from_rank_0_and_resumes(tmp_path):
    """``pyro-vae train --nproc 2`` end to end: one run directory (rank 0 chose the name and wrote it), with the
    config, every epoch's metrics and the checkpoint; ``--resume`` under two processes continues it."""
    done = _cli(["train", "--nproc", "2", "--epochs", "2", *TINY], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    run = runs[0]
    assert {"config.toml", "checkpoint.pt", "metrics.jsonl", "elbo.png"} <= {p.name for p in run.iterdir()}
    assert load_run_checkpoint(run / CHECKPOINT)["epoch"] == 2
    done = _cli(["train", "--nproc", "2", "--resume", str(run), "--epochs", "3", "--quiet"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = load_run_checkpoint(run / CHECKPOINT)
    assert payload["epoch"] == 3 and [r["epoch"] for r in payload["history"]] == [1, 2, 3]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert len(list((tmp_path / "runs").iterdir())) == 1


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _rank_of(pid: int):
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_killing_one_rank_fails_the_launcher_clearly_and_keeps_the_checkpoint(tmp_path):
    """SIGKILL of rank 1 mid-run: torchrun stops the other rank, the launcher exits non-zero with one line
    saying what happened, and checkpoint.pt (written atomically by rank 0) still loads."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", "--nproc", "2", "--epochs", "10000",
                             "--out", str(run), *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (run / CHECKPOINT).exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (run / CHECKPOINT).exists(), proc.communicate(timeout=5)
        victim = next(pid for pid in _descendants(proc.pid) if _rank_of(pid) == 1)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("pyro-vae train: error: a training process failed or was killed"), err[-3000:]
    assert f"the last checkpoint {run / CHECKPOINT} is intact" in last and f"--resume {run}" in last
    vae, config, payload = load_run(run)
    assert payload["epoch"] >= 1 and config.train.epochs == 10000


def test_bad_settings_are_refused_with_the_fix(capsys):
    from pyro_vae.cli import main

    assert main(["train", "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"does not split evenly over 3 processes.*e\.g\. 126 or 129"):
        ShardSampler(1000, 128, seed=0, rank_=0, world=3)
    with pytest.raises(ValueError, match="smaller than the 4 processes"):
        ShardSampler(1000, 2, seed=0, rank_=0, world=4)


def test_nproc_under_torchrun_and_an_objective_without_differentiable_loss_are_refused(monkeypatch, capsys):
    from pyro_vae.cli import main
    from pyro_vae.distributed import DistributedStepper
    from pyro_vae.objectives import make_objective

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--nproc", "2"]) == 2
    assert "already started by torchrun; leave --nproc out" in capsys.readouterr().err
    vae = ddp_case.make_case()[0]
    with pytest.raises(ValueError, match="needs an objective with differentiable_loss; TraceGraph_ELBO has none"):
        DistributedStepper(vae, vae.model, vae.guide, None, make_objective("tracegraph"))


def test_shards_partition_each_global_batch_and_the_permutation_is_seeded():
    parts = [ShardSampler(103, 20, seed=5, rank_=r, world=2).batches(epoch=3) for r in (0, 1)]
    whole = ShardSampler(103, 20, seed=5, rank_=0, world=2).global_batches(epoch=3)
    assert [len(b) for b in whole] == [20] * 5 + [2]
    for a, b, g in zip(*parts, whole):
        assert torch.equal(torch.cat([a, b]), g)
    assert not torch.equal(whole[0], ShardSampler(103, 20, seed=5, rank_=0, world=2).global_batches(epoch=4)[0])
