"""Data-parallel training over several processes with PyTorch's DistributedDataParallel.

Launched by ``torchrun --nproc-per-node W -m pyro_vae train ...`` (or
``pyro-vae train --nproc W``, which runs that command on this machine), every
process ("rank") holds the whole model and a shard of every minibatch;
:func:`~pyro_vae.train.fit` switches to :class:`DistributedStepper` and
:class:`ShardSampler` as soon as a process group exists. Backends: gloo for CPU
tensors, NCCL for CUDA tensors.

How a global batch is shared, and why the ELBO keeps its meaning::

    Every epoch all ranks draw the same permutation of the N training points
    (a generator seeded with seed + epoch) and cut it into global batches of B
    points, as one process would. A global batch is split into W contiguous
    parts of b = B / W points; rank r takes part r, with its global indices
    and num_data = N, so the data plate scales rank r's loss by N / b:

        loss_r = -N/b  sum_{n in part r} elbo_n

    DDP averages the gradients over the ranks:

        1/W sum_r grad loss_r = 1/W * N/(B/W) sum_r sum_{n in part r} grad(-elbo_n)
                              = N/B  sum_{n in batch} grad(-elbo_n)

    the gradient one process takes on the whole global batch. The reported
    loss is the same average of the loss_r (an all-reduce), hence the
    single-process loss of the global batch.

The last, short batch of an epoch is rounded down to a multiple of W (fewer than
W points, a different few each epoch, sit that epoch out). Each rank draws its
own Monte Carlo noise: rank r > 0 reseeds from (seed, r, starting epoch), rank
0 keeps the stream that checkpoints save, so a resumed multi-process run is the
same in distribution, not bit for bit, as an uninterrupted one. Only rank 0
writes files, evaluates validation data (its value is broadcast) and shows
progress.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import warnings

import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .step import Stepper

__all__ = ["launched", "active", "rank", "world_size", "is_main", "process_group", "local_device", "on_main",
           "barrier", "ShardSampler", "DistributedStepper", "seed_rank", "free_port", "launch_command",
           "run_launcher"]


# ----------------------------------------------------------------------------- the process group
def launched() -> bool:
    """Whether this process was started by torchrun (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def active() -> bool:
    """Whether a process group is initialised: ``fit`` then trains data-parallel."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files and prints."""
    return rank() == 0


@contextlib.contextmanager
def process_group():
    """Join the process group torchrun describes (``MASTER_ADDR``/``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``)
    for the duration of the block; a no-op outside torchrun or when a group already exists."""
    if not launched() or active():
        yield
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend)
    try:
        yield
        barrier()  # rank 0 may still be writing figures: leave together, so no rank tears down under another
    finally:
        # DDP's reducer (in reference cycles of the wrapped module) holds the group and gloo's pending work;
        # left to interpreter shutdown, gloo's threads can abort the process (SIGABRT, "terminate called
        # without an active exception"), so it is collected while the group is still alive.
        gc.collect()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if device.type != "cuda" or not launched():
        return device
    local = int(os.environ.get("LOCAL_RANK", 0))
    count = torch.cuda.device_count()
    if local >= count:
        raise RuntimeError(f"process with LOCAL_RANK {local} has no GPU of its own: this machine has {count}; "
                           f"start at most {count} processes per node (--nproc-per-node / --nproc)")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def on_main(fn):
    """``fn()`` computed on rank 0 and handed to every rank (broadcast), so all ranks decide alike."""
    if not active():
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def barrier() -> None:
    """Wait for every rank (a CPU all-reduce, so it goes through gloo whatever the training device)."""
    if active():
        dist.all_reduce(torch.zeros(1))


def seed_rank(first_epoch: int) -> None:
    """Give rank r > 0 Monte Carlo noise of its own, derived from the run's seed, r and the starting epoch.

    Rank 0 keeps its stream (the one a checkpoint saves and a resume restores).
    """
    if rank() > 0:
        pyro.set_rng_seed((torch.initial_seed() + 1_000_003 * first_epoch + rank()) % 2 ** 63)


# ----------------------------------------------------------------------------- data
class ShardSampler:
    """Each rank's part of every global minibatch of an epoch (see the module docstring).

    Args:
        n: training points N.
        batch: global batch size B; a multiple of the world size W, unless it is
            the whole data set (full batch), which is rounded down.
        seed: with the epoch, seeds the permutation shared by all ranks.
        device: where the index tensors go.
    """

    def __init__(self, n: int, batch: int, seed: int, device=None, rank_: int | None = None,
                 world: int | None = None):
        self.rank = rank() if rank_ is None else int(rank_)
        self.world = world_size() if world is None else int(world)
        if batch < self.world:
            raise ValueError(f"the batch size {batch} is smaller than the {self.world} processes: every process "
                             f"takes an equal part of each batch; use a batch size of at least {self.world}")
        if batch % self.world and batch < n:
            lower, upper = batch // self.world * self.world, -(-batch // self.world) * self.world
            raise ValueError(f"the batch size {batch} does not split evenly over {self.world} processes: every "
                             f"process takes an equal part of each batch; set data.batch_size (--batch-size) to a "
                             f"multiple of {self.world}, e.g. {lower} or {upper}")
        self.n, self.batch, self.seed, self.device = int(n), int(batch), int(seed), device

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of the N points in ``epoch``, the same on every rank."""
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + int(epoch)))

    def global_batches(self, epoch: int) -> list[torch.Tensor]:
        """The epoch's global batches, each cut to a multiple of W points."""
        perm, w = self.permutation(epoch), self.world
        return [perm[lo:lo + len(perm[lo:lo + self.batch]) // w * w] for lo in range(0, self.n, self.batch)
                if len(perm[lo:lo + self.batch]) >= w]

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's indices ``[B / W]`` (global, into the training data) for every step of ``epoch``."""
        out = []
        for idx in self.global_batches(epoch):
            part = len(idx) // self.world
            out.append(idx[self.rank * part:(self.rank + 1) * part].to(self.device))
        return out

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch)
        return full + (rest >= self.world)


# ----------------------------------------------------------------------------- one step
class _Loss(nn.Module):
    """The Pyro objective as a module, so DDP can wrap it: ``forward`` returns the differentiable loss."""

    def __init__(self, vae, model, guide, objective):
        super().__init__()
        self.vae = vae  # the parameters DDP keeps in sync; model/guide close over them
        self.model, self.guide, self.objective = model, guide, objective

    def forward(self, *args, **kwargs):
        return self.objective.differentiable_loss(self.model, self.guide, *args, **kwargs)


class DistributedStepper(Stepper):
    """:class:`~pyro_vae.step.Stepper` over ranks: DDP averages the gradients, the loss is all-reduced.

    Called like the ``Stepper``, with this rank's part of the global batch and
    its global indices; returns the loss of the global batch (the mean of the
    ranks' losses, each scaled by N / b), or ``None`` when the loss or the
    averaged gradient is NaN/Inf. Every rank sees the same averaged loss and
    gradients, so all ranks skip or stop together. The update is the pyro
    optimiser's, on the parameters found in the trace, so checkpoints keep the
    single-process format.

    Args:
        vae: the ``nn.Module`` holding every trained parameter.
        model, guide: its Pyro programs (possibly wrapped, e.g. by ``LatentScale``).
        optim: a ``pyro.optim`` optimiser.
        objective: a Pyro ELBO with ``differentiable_loss`` (``Trace_ELBO``,
            ``TraceEnum_ELBO``, ``LocalRenyiELBO``, ...).
        validate: Pyro's distribution validation inside the step.
    """

    def __init__(self, vae, model, guide, optim, objective, validate: bool = False):
        if not hasattr(objective, "differentiable_loss"):
            raise ValueError(f"training in several processes needs an objective with differentiable_loss; "
                             f"{type(objective).__name__} has none: choose another objective (e.g. 'elbo') or "
                             "train in one process")
        super().__init__(model, guide, optim, objective, validate)
        self.module, self.ddp = _Loss(vae, model, guide, objective), None
        self.world = dist.get_world_size()

    def _wrap(self, args, kwargs) -> DistributedDataParallel:
        """DDP around the loss module, after one probe of the first batch (RNG restored after).

        The probe refuses Pyro parameters outside the module (DDP could not
        average them), and finds parameters without a gradient on any rank:
        only then is ``find_unused_parameters`` asked for, since it costs a
        graph traversal every step.
        """
        device = next(self.module.parameters()).device
        params = [p for p in self.module.parameters() if p.requires_grad]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings(), \
                poutine.trace(param_only=True) as capture:
            warnings.filterwarnings("ignore", message="Encountered NaN")
            grads = torch.autograd.grad(self.module(*args, **kwargs), params, allow_unused=True)
        trained = {id(p) for p in params}
        outside = [name for name, site in capture.trace.nodes.items()
                   if id(site["value"].unconstrained()) not in trained]
        if outside:
            raise ValueError(f"parameters {outside} are not part of the model's nn.Module, so DDP cannot average "
                             "their gradients; make them parameters of the model (or of its prior/likelihood)")
        unused = torch.tensor([float(any(g is None for g in grads))])
        dist.all_reduce(unused, op=dist.ReduceOp.MAX)  # every rank must build DDP alike
        return DistributedDataParallel(self.module, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=bool(unused))

    def loss_and_grads(self, *args, **kwargs) -> float:
        if self.ddp is None:
            self.ddp = self._wrap(args, kwargs)
        loss = self.ddp(*args, **kwargs)
        loss.backward()  # DDP's reducer averages the gradients over ranks here
        total = loss.detach().reshape(1).clone()
        dist.all_reduce(total)
        return float(total) / self.world


# ----------------------------------------------------------------------------- launching
def free_port() -> int:
    """A TCP port free on the loopback interface now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(nproc: int, program: list[str]) -> list[str]:
    """``python -m torch.distributed.run`` running ``program`` in ``nproc`` processes on this machine, the
    rendezvous on the loopback interface. ``program`` is what follows ``python``: ``["-m", "pyro_vae",
    "train", ...]`` or a script and its arguments."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(int(nproc)),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *program]


def run_launcher(command: list[str], nproc: int) -> int:
    """Run the torchrun command; Ctrl-C or SIGTERM reach the workers, which save their last epoch first.

    Unless ``OMP_NUM_THREADS`` is set, each process gets its share of the cores (torchrun would give it 1).
    """
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(nproc))))
    proc = subprocess.Popen(command, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the workers too (same process group); SIGTERM is passed on
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
