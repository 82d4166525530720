"""Quick start: a VAE on the embedded 8x8 digits in ten lines.

    python examples/quickstart.py            # ~30 s on 2 CPU cores
    python examples/quickstart.py --smoke    # a few seconds, used by the tests
"""

import sys

smoke = "--smoke" in sys.argv

# --- the ten lines -----------------------------------------------------------
from pyro_vae import VAE, elbo, fit  # noqa: E402
from pyro_vae.data import load_dataset  # noqa: E402

data = load_dataset("digits", preprocess="scale")  # embedded, [N, 1, 8, 8] in [0, 1]
vae = VAE(data.data_shape, latent_dim=8, prior="mog", likelihood="continuous-bernoulli")
before = elbo(vae, data.test)
result = fit(vae, data.train, epochs=3 if smoke else 40, val_data=data.val, progress=not smoke)
after = elbo(vae, data.test)
print(f"test ELBO per digit: {before:.1f} -> {after:.1f} nats")
samples = vae.sample(16)  # [16, 1, 8, 8], E[x | z] for z ~ p(z)
# -----------------------------------------------------------------------------

assert samples.shape == (16, *data.data_shape)
assert after > before + (5 if smoke else 30), "training did not improve the test ELBO"
