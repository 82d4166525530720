"""Helper for tests/test_distributed.py: one small training case, run by each rank under torchrun.

``python -m torch.distributed.run --nproc-per-node 2 ... tests/ddp_case.py OUT [CASE]`` trains the case with
``fit`` in a gloo process group and saves each rank's weights, step losses and history to ``OUT/rank{r}.pt``.
The test imports the same case to compute the single-process reference.
"""

import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pyro_vae import VAE
from pyro_vae.objectives import KLSchedule
from pyro_vae.optim import MultiTensorOptim

N, N_VAL, DIM, BATCH, EPOCHS, SEED = 103, 40, 16, 20, 2, 0  # 103 = 5 batches of 20 + 3 (cut to 2 over 2 ranks)


class FixedNoiseVAE(VAE):
    """A VAE whose guide draws ``z = loc + scale * eps[n]`` with the noise ``eps[n]`` fixed per data point
    (for a flow posterior, that base draw pushed through the flow's transforms).

    The reparameterised sample and ``log q(z|x)`` are those of the ordinary guide (a ``Delta`` at the
    sample carrying the posterior's log density), but the loss becomes a deterministic function of the
    weights and of which points a batch holds, whichever process evaluates them. That makes a sharded
    run exactly comparable with one process on the same global batches.
    """

    def __init__(self, *args, n_noise: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("eps", torch.randn(n_noise, self.latent_dim, generator=torch.Generator().manual_seed(1)))

    def guide(self, x=None, idx=None, num_data=None, n=None):
        pyro.module(self.name, self)
        with self.data_plate(x, idx, num_data, n) as ind:
            params = self.encoder(x)
            q, (loc, scale) = self.posterior(*params), params[:2]
            z = loc + scale * self.eps[ind]
            for transform in getattr(q, "transforms", ()):  # a flow: its own draw, so log_prob uses the cache
                z = transform(z)
            return pyro.sample("z", dist.Delta(z, log_density=q.log_prob(z), event_dim=1))


CASES = {  # case -> (posterior, prior, data as a sparse source): the VampPrior runs the encoder in the model too
    "normal": ("normal", {"name": "vamp", "n_components": 3}, False),
    "planar": ("planar", {"name": "mog", "n_components": 3}, False),  # a flow: it takes no VampPrior
    "sparse": ("normal", {"name": "vamp", "n_components": 3}, True),
}


def make_case(case: str = "normal", dense: bool = False):
    """``(vae, train, val, fit_kwargs)``: random binary data (for the ``sparse`` case a SciPy CSR matrix read
    a minibatch at a time, unless ``dense``), a VampPrior (the encoder also runs in the model) or, with the
    planar flow posterior (whose parameters are trained by every rank), a learned mixture prior, a KL
    warm-up, and plain SGD, whose step is proportional to the gradient (Adam would hide a wrong gradient
    scale)."""
    posterior, prior, sparse = CASES[case]
    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((N + N_VAL, DIM), 0.3), generator=g)
    torch.manual_seed(0)
    vae = FixedNoiseVAE((DIM,), latent_dim=2, prior=prior, posterior=posterior,
                        net={"name": "mlp", "hidden": [8]}, n_noise=N)
    kwargs = dict(epochs=EPOCHS, batch_size=BATCH, seed=SEED, kl_schedule=KLSchedule("linear", 1.0, warmup=2),
                  optim=sgd(), progress=False)
    train = x[:N]
    if sparse and not dense:
        import scipy.sparse

        from pyro_vae.sources import SparseSource

        train = SparseSource(scipy.sparse.csr_matrix(train.numpy()))
    return vae, train, x[N:], kwargs


def sgd():
    return MultiTensorOptim(torch.optim.SGD, {"lr": 2e-4})


if __name__ == "__main__":
    import torch.distributed as torch_dist

    from pyro_vae import distributed, fit

    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    with distributed.process_group():
        vae, train, val, kwargs = make_case(sys.argv[2] if len(sys.argv) > 2 else "normal")
        result = fit(vae, train, val_data=val, **kwargs)
        rank = torch_dist.get_rank()
    torch.save({"params": {k: v.detach().clone() for k, v in vae.state_dict().items()},
                "step_losses": result.step_losses,
                "history": [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]},
               out / f"rank{rank}.pt")
