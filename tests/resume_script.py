"""Helper for tests/test_train.py: one training run per process (straight, interrupted, or resumed)."""

import sys

import torch
from sklearn.datasets import load_digits

from pyro_vae import VAE, fit, make_optimizer
from pyro_vae.objectives import KLSchedule
from pyro_vae.train import Callback, TrainState

mode, ckpt, out = sys.argv[1:4]
x = torch.tensor(load_digits().data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
torch.manual_seed(0)
vae = VAE((1, 8, 8), latent_dim=3, prior="mog", net={"name": "mlp", "hidden": [32]})
kwargs = dict(epochs=4, batch_size=128, val_data=x[1500:], early_stopping=5, progress=False, seed=11,
              optim=make_optimizer("clipped-adam", lr=1e-3, clip_norm=10.0,
                                   schedule={"name": "exponential", "gamma": 0.8}, epochs=4),
              kl_schedule=KLSchedule("linear", 1.0, warmup=3), train_transform=torch.bernoulli)


class Interrupt(Exception):
    pass


class SaveAndStopAfterTwo(Callback):
    def on_epoch_end(self, state, record):
        torch.save(state.to_payload(), ckpt)
        if mode == "interrupt" and record["epoch"] == 2:
            raise Interrupt


try:
    resume = TrainState.from_payload(torch.load(ckpt, weights_only=False)) if mode == "resume" else None
    result = fit(vae, x[:1500], resume=resume, callbacks=[SaveAndStopAfterTwo()], **kwargs)
except Interrupt:
    sys.exit(0)
torch.save({"params": [p.detach().clone() for p in vae.parameters()], "step_losses": result.step_losses,
            "history": [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]}, out)
