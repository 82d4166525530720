"""The ``pyro-vae`` command: train, evaluate, sample, encode.

Flags map onto config keys (``--latent-dim`` -> ``model.latent_dim``) through one
table, :data:`TRAIN_FLAGS`; the work itself lives in :mod:`pyro_vae.run`.
Library exceptions are caught here only: a one-paragraph message on stderr and
exit code 2 for bad usage or configuration, 1 for a problem while running.
Set ``PYRO_VAE_DEBUG=1`` to see the traceback instead.

Building the parser imports neither torch nor Pyro, so ``--help`` and
``--version`` answer at once: the help lists each registry's declared built-in
names (``Registry.names(load=False)``), and the components are imported only
when a command runs, after its plugins.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .allocator import tune_allocator
from .config import Config, ConfigError, apply_overrides, load_config

__all__ = ["main", "build_parser", "TRAIN_FLAGS"]

PROG = "pyro-vae"
# the names of pyro_vae.data.DATASETS, for the help without importing torch (tests/test_startup.py compares them)
DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "kmnist")


def _int_list(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes such as 400,400, got {text!r}")
    if not sizes:
        raise argparse.ArgumentTypeError("expected at least one layer size, e.g. 256")
    return sizes


def _image_size(text: str):
    """``28`` or ``28,32``: an image size for ``data.image_size``."""
    sizes = _int_list(text)
    if len(sizes) > 2:
        raise argparse.ArgumentTypeError(f"expected a size S or H,W such as 28,28, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def _names(registry) -> str:
    return ", ".join(registry.names(load=False))  # imports nothing: the declared built-in names


def _train_flags():
    """(flag, config key, argparse options) for every config override of ``train``.

    Component names come before their options (``--net`` before ``--hidden``),
    as setting a component by name resets its options.
    """
    from ._registry import LIKELIHOODS, MODELS, NETS, OBJECTIVES, OPTIMIZERS, POSTERIORS, PREPROCESSINGS, PRIORS

    return [
        ("--dataset", "data.source", dict(metavar="NAME", help=f"built-in dataset: {', '.join(DATASET_NAMES)}")),
        ("--data", "data.source", dict(metavar="FILE", help="a user data file instead: .npy, .npz (dense or SciPy "
                                       "sparse), .csv, .pt, .h5ad, or a folder of images in class sub-folders")),
        ("--data-dir", "data.data_dir", dict(metavar="DIR", help="where torchvision datasets are stored")),
        ("--download", "data.download", dict(action="store_const", const=True,
                                             help="download a missing torchvision dataset")),
        ("--preprocess", "data.preprocess", dict(metavar="NAME", help=f"one of {_names(PREPROCESSINGS)}; unset: "
                                                 "the likelihood's default (bernoulli: scale, normal: standardize, "
                                                 "counts: none)")),
        ("--labelled", "data.labelled", dict(type=int, metavar="N", help="model m2: training points that keep "
                                             "their label, balanced over classes (the rest are unlabelled)")),
        ("--backed", "data.backed", dict(action="store_const", const=True, help=".h5ad: read X from disk a "
                                         "minibatch at a time (anndata backed mode) instead of into memory")),
        ("--layer", "data.layer", dict(metavar="NAME", help=".h5ad: this layer instead of X")),
        ("--labels", "data.labels", dict(metavar="COLUMN", help=".h5ad: the obs column holding the labels")),
        ("--groups", "data.groups", dict(metavar="COLUMN", help=".h5ad, model grouped: the obs column holding "
                                         "the groups")),
        ("--image-size", "data.image_size", dict(type=_image_size, metavar="H,W", help="a folder of images: "
                                                 "resize each to H x W (or S x S)")),
        ("--model", "model.type", dict(metavar="TYPE", help=f"model type: {_names(MODELS)} "
                                       "(options via --set model.latent_dims=[32,16])")),
        ("--prior", "model.prior", dict(metavar="NAME", help=f"p(z): {_names(PRIORS)}")),
        ("--posterior", "model.posterior", dict(metavar="NAME", help=f"q(z|x): {_names(POSTERIORS)} "
                                                "(options via --set model.posterior.n_flows=4)")),
        ("--likelihood", "model.likelihood", dict(metavar="NAME", help=f"p(x|z): {_names(LIKELIHOODS)}")),
        ("--net", "model.net", dict(metavar="NAME", help=f"encoder/decoder family: {_names(NETS)} "
                                                         "(resets its options; add --hidden)")),
        ("--latent-dim", "model.latent_dim", dict(type=int, metavar="D", help="size of z")),
        ("--hidden", "model.net.hidden", dict(type=_int_list, metavar="N,N", help="hidden layer sizes, e.g. 400,400")),
        ("--objective", "objective.name", dict(metavar="NAME", help=f"training objective: {_names(OBJECTIVES)}")),
        ("--jit", "objective.jit", dict(action="store_const", const=True,
                                        help="compile the objective (elbo: Pyro's JitTrace_ELBO; see README)")),
        ("--num-particles", "objective.num_particles", dict(type=int, metavar="K",
                                                            help="samples of z per point and step")),
        ("--kl-weight", "objective.kl_weight", dict(type=float, metavar="BETA", help="KL weight beta (beta-VAE)")),
        ("--kl-schedule", "objective.kl_schedule", dict(metavar="NAME", help="constant, linear (warm-up over "
                                                        "objective.kl_warmup epochs) or cyclical")),
        ("--lr-schedule", "optim.lr_schedule", dict(metavar="NAME", help="exponential, step, cosine or plateau "
                                                    "(options via --set optim.lr_schedule.gamma=0.99)")),
        ("--early-stopping", "train.early_stopping", dict(type=int, metavar="PATIENCE",
                                                          help="stop after PATIENCE validations without "
                                                               "improvement; best.pt keeps the best epoch")),
        ("--epochs", "train.epochs", dict(type=int, metavar="N", help="passes over the training data")),
        ("--batch-size", "data.batch_size", dict(type=int, metavar="B", help="minibatch size")),
        ("--lr", "optim.lr", dict(type=float, metavar="LR", help="learning rate")),
        ("--optimizer", "optim.name", dict(metavar="NAME", help=f"one of {_names(OPTIMIZERS)}")),
        ("--seed", "train.seed", dict(type=int, metavar="S", help="seed of weights, splits and Monte Carlo draws")),
        ("--device", "train.device", dict(metavar="DEV", help="cpu, cuda, cuda:1, ... or auto (cuda if "
                                          "available); under torchrun cuda is cuda:LOCAL_RANK")),
        ("--out", "output.run_dir", dict(metavar="RUN_DIR", help="run directory "
                                         "(default runs/<source>-<prior>-<likelihood>-<timestamp>)")),
        ("--tensorboard", "output.tensorboard", dict(action="store_const", const=True,
                                                     help="log the run for TensorBoard to RUN_DIR/tensorboard/ "
                                                          "(needs the tensorboard package; allowed with --resume)")),
    ]


TRAIN_FLAGS = _train_flags()


def _dest(flag: str) -> str:
    return "flag_" + flag.lstrip("-").replace("-", "_")


def _default(key: str):
    node = Config().to_dict()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --------------------------------------------------------------------------- parser

class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Variational autoencoders as Pyro programs: train a VAE from a TOML config or flags, "
                    "then evaluate, sample from and encode data with a saved run.",
        epilog="examples:\n  pyro-vae train                       # the embedded digits, 10-20 s on 2 CPU cores\n"
               "  pyro-vae train --config examples/configs/mnist_vamp.toml --download\n"
               "  pyro-vae evaluate runs/RUN --json\n  pyro-vae <command> --help")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    _add_train(commands)
    _add_evaluate(commands)
    _add_sample(commands)
    _add_encode(commands)
    return parser


def _add_train(commands) -> None:
    p = commands.add_parser(
        "train", formatter_class=_Formatter, help="train a VAE and write a run directory",
        description="Train a VAE by stochastic variational inference. Settings come from the built-in defaults "
                    "(digits, MLP [256], latent_dim 8, Bernoulli likelihood, standard normal prior, 60 epochs), "
                    "then --config FILE, then the flags below, then --set KEY=VALUE.\n\n"
                    "The run directory receives checkpoint.pt, config.toml (resolved: re-running it repeats "
                    "the run), metrics.jsonl and PNG figures (elbo, reconstructions, samples, latent, "
                    "interpolation).",
        epilog="examples:\n  pyro-vae train\n  pyro-vae train --prior mog --latent-dim 4 --epochs 50 --out runs/mog\n"
               "  pyro-vae train --data counts.npz --preprocess none --likelihood negative-binomial\n"
               "  pyro-vae train --config runs/mog/config.toml --out runs/mog-again\n"
               "  pyro-vae train --prior mog --set model.prior.n_components=20 --set train.val_every=5")
    p.add_argument("--config", metavar="FILE", help="TOML config (see examples/configs/)")
    p.add_argument("--plugin", metavar="MODULE", action="append", default=[], dest="plugins",
                   help="a module (or .py file) registering components (priors, likelihoods, model types, ...), "
                        "imported before the config is read and stored in the run [plugins] (repeatable)")
    source = p.add_mutually_exclusive_group()
    for flag, key, options in TRAIN_FLAGS:
        default = _default(key)
        shown = f"; default {json.dumps(default)}" if default is not None else ""
        options = dict(options, help=f"{options['help']} [{key}{shown}]", dest=_dest(flag), default=None)
        (source if key == "data.source" else p).add_argument(flag, **options)
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="any config key, value in TOML syntax, e.g. --set 'model.prior={name=\"mog\"}' (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint.pt exactly where it "
                   "stopped (with --epochs N: up to N epochs in total); takes no other settings")
    p.add_argument("--nproc", type=int, metavar="N", help="train data-parallel in N processes on this machine "
                   "(runs this command through torchrun; for several machines use torchrun itself, see README)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(run=_train)


def _add_evaluate(commands) -> None:
    p = commands.add_parser(
        "evaluate", formatter_class=_Formatter, help="ELBO of a saved run on held-out data",
        description="Rebuild the run's data split (or read a raw data file and preprocess it as the "
                    "training data was), load checkpoint.pt and report the ELBO per data point in nats.",
        epilog="examples:\n  pyro-vae evaluate runs/RUN\n  pyro-vae evaluate runs/RUN --split val --num-particles 10 "
               "--json\n  pyro-vae evaluate runs/RUN --data new_points.npy")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `pyro-vae train`")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="data split (default test)")
    p.add_argument("--data", metavar="FILE", help="evaluate a raw data file instead of a split")
    p.add_argument("--num-particles", type=int, default=1, metavar="K", help="samples of z per point (default 1)")
    p.add_argument("--iwae-samples", type=int, metavar="K", help="also the IWAE estimate of log p(x) with K "
                   "importance samples (Burda et al. 2016); writes evaluation-SPLIT.json in the run directory")
    p.add_argument("--psis", action="store_true", help="also per-point Pareto k-hat of q(z|x) (PSIS, Yao et al. "
                   "2018) with K = --iwae-samples or 1000; writes khat-SPLIT.png")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the Monte Carlo draws (default: the run's seed)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object (n, elbo, split, ...) instead of text")
    p.set_defaults(run=_evaluate)


def _add_sample(commands) -> None:
    p = commands.add_parser(
        "sample", formatter_class=_Formatter, help="draw new data from a saved run",
        description="Draw z ~ p(z) and decode: an image grid (.png) of E[x|z] (or of x ~ p(x|z) with --draw), "
                    "or the raw array (.npy).",
        epilog="example:\n  pyro-vae sample runs/RUN -n 64 --out samples.png")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `pyro-vae train`")
    p.add_argument("-n", "--num", type=int, default=64, metavar="N", help="number of samples (default 64)")
    p.add_argument("--out", default="samples.png", metavar="FILE", help="output image (.png, or .jpg/.jpeg, written "
                   "in that format; small images enlarged) or .npy (the array); default samples.png")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of the mean E[x|z]")
    p.add_argument("--nrow", type=int, metavar="K", help="images per grid row (default: the model's grid, 8, or "
                   "a row per class for M2 and the CVAE)")
    p.add_argument("--seed", type=int, metavar="S", help="seed (default: the run's seed)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.set_defaults(run=_sample)


def _add_encode(commands) -> None:
    p = commands.add_parser(
        "encode", formatter_class=_Formatter, help="posterior means of a data file",
        description="Map each row of a raw data file to the mean of q(z|x), saved as a float32 [N, latent_dim] "
                    ".npy. The file is preprocessed with the training statistics stored in the checkpoint "
                    "(e.g. 'scale' divides by the training range); binarisation is not applied.",
        epilog="example:\n  pyro-vae encode runs/RUN data.npy --out latents.npy")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `pyro-vae train`")
    p.add_argument("data_file", metavar="DATA_FILE", help="raw data like the training source (.npy, .npz, .csv, .pt, "
                   ".h5ad or a folder of images), read as the run read its own")
    p.add_argument("--out", default="latents.npy", metavar="FILE", help="output .npy (default latents.npy)")
    p.add_argument("--batch-size", type=int, default=1024, metavar="B", help="rows per forward pass (default 1024)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.set_defaults(run=_encode)


# --------------------------------------------------------------------------- commands

def _say(args, *lines) -> None:
    if not getattr(args, "quiet", False):
        print(*lines, sep="\n", flush=True)


def _parse_set(item: str):
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, e.g. --set model.latent_dim=4; got {item!r}")
    from .config import tomllib

    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: take it as a string
    return key.strip(), value


def train_config(args) -> Config:
    """The config for ``train``: ``--plugin`` modules imported, then defaults, ``--config``, flags, ``--set``."""
    from . import plugins

    try:
        added = plugins.load(getattr(args, "plugins", []))  # before anything names what they register
    except ValueError as err:
        raise ConfigError(f"--plugin: {err}") from err
    config = load_config(args.config) if args.config else Config()
    overrides = {key: getattr(args, _dest(flag)) for flag, key, _ in TRAIN_FLAGS
                 if getattr(args, _dest(flag)) is not None}
    if added:
        overrides["plugins"] = [*config.plugins, *(p for p in added if p not in config.plugins)]
    overrides.update(_parse_set(item) for item in args.sets)
    return apply_overrides(config, overrides) if overrides else config


def _resume_settings(args) -> int | None:
    """``--resume`` continues the saved config; only the total number of epochs may change (and
    ``--tensorboard`` may turn logging on, which changes nothing the run computes)."""
    given = [flag for flag, _, _ in TRAIN_FLAGS
             if flag not in ("--epochs", "--tensorboard") and getattr(args, _dest(flag)) is not None]
    if args.config or args.sets or given or args.plugins:
        extra = (["--config"] if args.config else []) + given + (["--set"] if args.sets else []) + \
            (["--plugin"] if args.plugins else [])
        raise ConfigError(f"--resume continues the run with its own saved config; it takes only --epochs, "
                          f"not {', '.join(extra)} (--tensorboard may be added). Start a new run with --config "
                          "RUN_DIR/config.toml instead")
    return getattr(args, _dest("--epochs"))


@contextlib.contextmanager
def _signals_as_interrupt():
    """Ctrl-C and SIGTERM (a scheduler's or `kill`'s stop) end training alike: the last epoch is saved.

    Yields the stop request handed to the training loop. The handler sets it and
    raises ``KeyboardInterrupt`` as Python's own does, so a run whose exception
    was lost inside C code (which can drop an exception raised while it calls
    back into Python) still stops at the end of its epoch.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop.set()
        raise KeyboardInterrupt

    # SIGINT ignored (a background job of a script) stays ignored, as Python itself leaves it
    caught = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield stop
    finally:
        for sig, saved in previous.items():
            signal.signal(sig, saved)


def _train(args) -> int:
    from . import distributed

    if args.nproc is not None:
        return _launch(args)
    with _signals_as_interrupt() as stop, distributed.process_group():  # under torchrun: join the others
        if not distributed.is_main():
            args.quiet = True  # rank 0 reports
        return _train_run(args, stop)


def _launch(args) -> int:
    """``train --nproc N``: this command (without --nproc) in N processes through torchrun on this machine."""
    import torch

    from . import distributed
    from .checkpoint import CHECKPOINT, CONFIG, load_run_checkpoint
    from .run import _run_dir, resolve_device

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1 (the number of training processes), got {args.nproc}")
    if distributed.launched():
        raise ConfigError("--nproc starts its own processes, but this one was already started by torchrun; "
                          "leave --nproc out (torchrun's --nproc-per-node sets the number)")
    argv, skip = [], False
    for item in args.argv:  # the same command without --nproc N
        if skip or item == "--nproc" or item.startswith("--nproc="):
            skip = item == "--nproc"
            continue
        argv.append(item)
    if args.resume:
        _resume_settings(args)
        run_dir = Path(args.resume)
        saved = run_dir / CONFIG
        config = load_config(saved) if saved.is_file() else None
        device = config.train.device if config else "cpu"
        logging = getattr(args, _dest("--tensorboard")) or (config is not None and config.output.tensorboard)
    else:
        config = train_config(args)
        run_dir, device = _run_dir(config), config.train.device  # refuses a taken directory before starting
        logging = config.output.tensorboard
        if not config.output.run_dir:
            argv += ["--out", str(run_dir)]  # one name for all processes, known here for the report
    if logging:
        from .tensorboard import require

        require()  # refused here, not by each process
    if resolve_device(device).type == "cuda" and torch.cuda.device_count() < args.nproc:
        raise ConfigError(f"--nproc {args.nproc} with device {device!r} needs {args.nproc} GPUs (one per process); "
                          f"this machine has {torch.cuda.device_count()}: use --nproc {torch.cuda.device_count()}")
    _say(args, f"starting {args.nproc} training processes (torchrun, rendezvous on 127.0.0.1)")
    code = distributed.run_launcher(distributed.launch_command(args.nproc, ["-m", "pyro_vae", *argv]), args.nproc)
    if code == 0:
        return 0
    path = run_dir / CHECKPOINT
    try:
        epoch = load_run_checkpoint(path)["epoch"]
        state = (f"the last checkpoint {path} is intact (epoch {epoch}): continue with "
                 f"`{PROG} train --nproc {args.nproc} --resume {run_dir}`")
    except FileNotFoundError:
        state = f"no checkpoint had been written to {run_dir} yet"
    except ValueError as err:
        state = f"the checkpoint cannot be read: {err}"
    print(f"{PROG} train: error: a training process failed or was killed (torchrun exit code {code}, its report "
          f"is above); {state}", file=sys.stderr)
    return 1


def _train_run(args, stop) -> int:
    from .run import resolve_config, resume_run, train_run

    start = time.perf_counter()
    if args.resume:
        epochs = _resume_settings(args)
        _say(args, f"resuming {args.resume}" + (f" up to epoch {epochs}" if epochs else ""))
        result = resume_run(args.resume, epochs=epochs, progress=not args.quiet, stop=stop,
                            say=lambda text: _say(args, text), tensorboard=getattr(args, _dest("--tensorboard")))
    else:
        config, notes = resolve_config(train_config(args))
        m = config.model
        _say(args, f"training: {config.data.source}, model {m.type}, prior {m.label('prior')}, posterior "
                   f"{m.label('posterior')}, likelihood "
                   f"{m.label('likelihood')}, net {m.label('net')}, latent_dim {m.latent_dim}, "
                   f"{config.train.epochs} epochs on {config.train.device} (seed {config.train.seed})", *notes)
        result = train_run(config, progress=not args.quiet, stop=stop, say=lambda text: _say(args, text))
    from .distributed import is_main

    if not is_main():  # a multi-process run: rank 0 reports
        return 0
    seconds = time.perf_counter() - start
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {last[k]:.3f}" for k in ("train_elbo", "val_elbo", "recon", "kl")
                        if last.get(k) is not None)
    s = result.splits
    _say(args, f"done in {seconds:.1f} s: {len(s.train)} train / {len(s.val)} val / {len(s.test)} test points; "
               f"{summary or 'no epochs'} ({result.units.description if result.units else 'nats per data point'})",
         f"run directory: {result.run_dir}")
    notes = {"checkpoint": "weights, optimiser, RNG state (pyro-vae train --resume continues it)",
             "best": "the epoch with the best validation ELBO", "config": "resolved config: "
             f"pyro-vae train --config {result.files['config']} --out NEW_DIR repeats the run",
             "metrics": "one JSON line per epoch", "accuracy": "test accuracy of the classifier q(y | x)",
             "figures": "the figures left out of this run, and why"}
    for name, path in result.files.items():
        _say(args, f"  {path.name:<20} {notes.get(name, 'figure')}")
    return 0


def _device(args):
    from .run import resolve_device

    return resolve_device(args.device)


def _evaluate(args) -> int:
    from .run import evaluate_run

    if args.iwae_samples is not None and args.iwae_samples < 1:
        raise ConfigError(f"--iwae-samples must be >= 1, got {args.iwae_samples}")
    report = evaluate_run(args.run_dir, split=args.split, data_file=args.data, num_particles=args.num_particles,
                          seed=args.seed, device=_device(args), iwae_samples=args.iwae_samples, psis=args.psis)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['split']} ELBO: {report['elbo']:.4f} nats per data point "
          f"(n={report['n']}, {report['num_particles']} particle(s), seed {report['seed']}, "
          f"checkpoint epoch {report['epoch']})")
    if "iwae_log_likelihood" in report:
        print(f"IWAE log-likelihood ({report['iwae_samples']} samples): {report['iwae_log_likelihood']:.4f} "
              f"+- {report['iwae_stderr']:.4f} nats per data point")
    if "khat_fraction_above_0_7" in report:
        print(f"PSIS: {report['khat_fraction_above_0_7']:.1%} of points have k-hat > 0.7; plot {report['khat_plot']}")
    print(f"units: {report['units']}")
    for note in report.get("notes", []):
        print(f"note: {note}")
    if report.get("clamped_values"):
        print(f"note: {report['clamped_values']} values lay outside the training range and were clamped into "
              "[0, 1]; the log-Jacobian does not hold for them")
    return 0


def _sample(args) -> int:
    import numpy as np

    from .plots import figure_kind, image_path, save_image_grid
    from .run import sample_run

    if args.num < 1:
        raise ConfigError(f"-n must be >= 1, got {args.num}")
    if args.nrow is not None and args.nrow < 1:
        raise ConfigError(f"--nrow must be >= 1, got {args.nrow}")
    out = Path(args.out)
    if out.suffix.lower() != ".npy":
        try:
            out = image_path(out)  # .png, .jpg or .jpeg: the format written is the one the name says
        except ValueError as err:
            raise ConfigError(f"--out {args.out}: {err}, or .npy for the array") from None
    grid = sample_run(args.run_dir, args.num, mean=not args.draw, seed=args.seed, device=_device(args))
    shape = tuple(grid.images.shape[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, grid.images.numpy())
    else:
        if figure_kind(shape) is None:
            raise ConfigError(f"--out {args.out}: samples of shape {list(shape)} are not images or vectors, so "
                              "they have no picture; write them with --out FILE.npy")
        nrow = args.nrow or grid.nrow
        labels = grid.row_labels if nrow == grid.nrow else None  # a row per class only in the model's own layout
        out = save_image_grid(grid.images, out, nrow=nrow, min_size=32, row_labels=labels)
    print(f"wrote {len(grid.images)} samples of shape {shape} to {out}")
    return 0


def _encode(args) -> int:
    import numpy as np

    from .run import encode_run

    z = encode_run(args.run_dir, args.data_file, batch_size=args.batch_size, device=_device(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, z.numpy().astype(np.float32))
    print(f"wrote posterior means [{z.shape[0]}, {z.shape[1]}] to {out}")
    return 0


# --------------------------------------------------------------------------- entry point

def _one_paragraph(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def main(argv=None) -> int:
    """Run ``pyro-vae`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
    except SystemExit as done:  # argparse printed help (0) or a usage error (2)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    tune_allocator()  # this process is ours: keep each step's large buffers in the heap (pyro_vae.allocator)
    from . import plugins

    plugins.load_entry_points()  # installed plugins before --plugin and a config's plugins, which may replace them
    try:
        return args.run(args)
    except Exception as err:
        if os.environ.get("PYRO_VAE_DEBUG"):
            raise
        if not isinstance(err, (ConfigError, ValueError, TypeError, OSError, RuntimeError, ArithmeticError)):
            raise
        from .models.base import Unsupported

        print(f"{PROG} {args.command}: error: {_one_paragraph(err)}", file=sys.stderr)
        return 2 if isinstance(err, (ConfigError, Unsupported)) else 1
    except KeyboardInterrupt as err:
        print(f"{PROG} {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
