"""Soak test: many short training runs with random valid configs, counting what ran, what was refused, what failed.

Each run draws a config at random (model type, prior, posterior, likelihood matched to the
data, net, objective, KL and lr schedules, batch size, early stopping), trains
it for a few epochs on the embedded digits through ``pyro_vae.run.train_run``,
then reloads the run directory and evaluates it, as a user would. Outcomes:

* ``ok``: trained, reloaded, and the reloaded model's ELBO is finite;
* ``refused``: rejected before training with a ``ValueError`` (a config error
  for a combination the library does not support, e.g. a VampPrior in M2); the
  message is recorded, and must name the key or component;
* ``failed``: anything else, with the traceback's last line.

    python benchmarks/soak.py --runs 200             # minutes; prints a summary, writes results/soak.json
    python benchmarks/soak.py --runs 5 --seed 3      # quick
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from pyro_vae.checkpoint import load_run
from pyro_vae.config import Config, ConfigError, apply_overrides
from pyro_vae.evaluate import elbo
from pyro_vae.models.registry import model_data
from pyro_vae.run import load_splits, resolve_config, train_run

UNIT = ["bernoulli", "continuous-bernoulli", {"name": "normal", "scale": "shared"},
        {"name": "normal", "scale": "decoder"}, {"name": "laplace", "scale": "feature"}]
COUNTS = ["poisson", "negative-binomial", {"name": "zinb", "dispersion": "decoder"},
          {"name": "categorical", "levels": 17}]


POSTERIORS = ["normal", "normal", "normal", "student-t", {"name": "lowrank", "rank": 1}, "fullrank",
              {"name": "iaf", "hidden": [8], "context": 4}, {"name": "planar", "n_flows": 2, "hidden": [8], "context": 4},
              {"name": "householder", "hidden": [8], "context": 4}, {"name": "sylvester", "n_flows": 2},
              {"name": "spline", "hidden": [8], "context": 4}]


def random_config(rng: random.Random, run_dir: Path) -> dict:
    """A dict of overrides for one run; every draw is a valid value on its own."""
    counts = rng.random() < 0.3  # raw digit intensities 0..16 as counts
    model = rng.choice(["vae", "vae", "vae", "stacked", "m2", "cvae", "grouped"])
    o = {
        "data.preprocess": "none" if counts else rng.choice(["scale", "scale", "dynamic-binarize", "binarize"]),
        "data.batch_size": rng.choice([16, 64, 128, 500]),
        "model.type": model,
        "model.latent_dim": rng.choice([1, 2, 4, 8]),
        "model.prior": rng.choice(["normal", "laplace", "student-t", {"name": "mog", "n_components": 3},
                                   {"name": "vamp", "n_components": 10}]),
        "model.posterior": rng.choice(POSTERIORS),
        "model.likelihood": rng.choice(COUNTS if counts else UNIT),
        "model.net": rng.choice([{"name": "mlp", "hidden": [rng.choice([8, 32])]},
                                 {"name": "mlp", "hidden": [16, 16], "activation": "relu"},
                                 {"name": "conv", "channels": [4, 8], "hidden": [16]}, "linear"]),
        "objective.name": rng.choice(["elbo", "elbo", "meanfield", "iwae", "renyi", "tracegraph"]),
        "objective.kl_schedule": rng.choice(["constant", "linear", "cyclical"]),
        "optim.name": rng.choice(["adam", "clipped-adam", "adamw"]),
        "optim.lr": rng.choice([1e-3, 3e-3]),
        "train.epochs": rng.choice([1, 2, 3]),
        "train.seed": rng.randrange(1000),
        "train.checkpoint_every": rng.choice([0, 1, 2]),
        "output.run_dir": str(run_dir),
    }
    if o["objective.name"] in ("iwae", "renyi"):
        o["objective.num_particles"] = rng.choice([2, 5])
    if rng.random() < 0.3:
        o["optim.lr_schedule"] = rng.choice(["exponential", "cosine", "plateau"])
    if rng.random() < 0.3:
        o["train.early_stopping"] = 1
    if model == "m2":
        o["data.labelled"] = rng.choice([20, 100])
    if model == "stacked":
        o["model.latent_dims"] = [o["model.latent_dim"], max(1, o["model.latent_dim"] // 2)]
    return o


def one_run(overrides: dict) -> tuple[str, str]:
    try:
        config = apply_overrides(Config(), overrides)
        start = time.perf_counter()
        result = train_run(config, progress=False)
    except ValueError as err:  # ConfigError included: refused before any training
        if isinstance(err, ConfigError) or "Did you mean" in str(err) or "needs" in str(err):
            return "refused", str(err)[:300]
        return "failed", "".join(traceback.format_exception_only(err)).strip()[:500]
    except Exception as err:  # noqa: BLE001 - a soak test records every failure
        return "failed", "".join(traceback.format_exception(err)[-3:]).strip()[:800]
    try:
        vae, config, _ = load_run(result.run_dir)
        config, _ = resolve_config(config)  # data.preprocess as the run used it (every draw here sets it)
        splits = load_splits(config.data, config.train.seed)
        data = model_data(vae, splits.test, splits.test_labels, split="test")
        value = elbo(vae, data)
        if not torch.isfinite(torch.tensor(value)):
            return "failed", f"reloaded ELBO is {value}"
    except Exception as err:  # noqa: BLE001
        return "failed", "reload: " + "".join(traceback.format_exception(err)[-3:]).strip()[:800]
    return "ok", f"{time.perf_counter() - start:.1f} s, test ELBO {value:.2f}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    records = []
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        for i in range(args.runs):
            overrides = random_config(rng, Path(tmp) / f"run{i}")
            outcome, detail = one_run(overrides)
            records.append({"run": i, "outcome": outcome, "detail": detail,
                            "config": {k: v for k, v in overrides.items() if k != "output.run_dir"}})
            print(f"{i:4d} {outcome:8s} {detail.splitlines()[-1] if detail else ''}", flush=True)
    counts = {k: sum(r["outcome"] == k for r in records) for k in ("ok", "refused", "failed")}
    summary = {"runs": args.runs, "seed": args.seed, **counts, "records": records}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\n{args.runs} runs: {counts['ok']} ok, {counts['refused']} refused, {counts['failed']} failed")
    return summary


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:])["failed"] else 0)
