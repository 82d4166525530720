"""Scale benchmark (issue #20): the negative-binomial VAE on simulated single-cell-like counts read from every
kind of source, at N = 100,000 and N = 1,000,000 cells of 2,000 genes.

The data come from a known low-rank model, generated in chunks of rows (the generator holds one dense chunk
and the growing CSR arrays)::

    z ~ N(0, I_10),   log mu = W z + b   (W: 2000 x 10, b per gene),   x_g ~ NB(mean mu_g, inverse dispersion r)

with r = 2 for every gene and b shifted so that about 5% of the counts are nonzero. The training cells are
written as a CSR ``.npz`` (``scipy.sparse.save_npz``, uncompressed) and an ``.h5ad`` (anndata, X sparse CSR);
2,000 held-out cells of the same model (other seeds) as a dense ``.npy``.

Every case runs in its own process (peak RSS from ``os.wait4``'s rusage of that child, and the child's VmHWM
read right after training, before any evaluation) and trains the library's VAE
(``likelihood="negative-binomial"``, MLP [128], latent 10, batch 256, Adam 1e-3, the default ELBO):

* ``sparse``: ``scipy.sparse.load_npz`` -> ``SparseSource`` (rows densified per minibatch);
* ``h5ad-mem``: ``anndata.read_h5ad`` -> ``AnnDataSource`` (X sparse in memory);
* ``h5ad-backed``: ``anndata.read_h5ad(backed="r")`` -> ``AnnDataSource`` (chunked shuffle, 4096 rows);
* ``dense`` (N = 100,000 only): the same counts densified into one float32 tensor, the plain-tensor path;
* ``reference`` (N = 100,000 only): a hand-written PyTorch NB VAE of the same sizes and optimiser
  (``bench_train.Reference``: closed-form KL, the library's MC KL) looping over the dense tensor;
* ``baseline``: the library's VAE fitted on 512 cells, the process's size without the data.

Training is bounded: the first ``--steps`` steps (default 300) of an epoch whose permutation is drawn over all N
rows as usual, timed from the end of the 20th step's read to the last one's (points/s = timed steps x 256 / that
time); ``--epoch-up-to N`` trains one full epoch instead (``fit``'s epoch record) for sizes up to N (``--quick``
does). ``--repeats 2`` runs ``--repeat-cases`` again in reverse order, timing only; figures are medians.

After training each case estimates the held-out log-likelihood per cell with
``pyro_vae.iwae_log_likelihood`` (K = 100, fixed seed, the first ``--eval-cells`` of the 2,000 held-out cells; the reference by the same estimator written by hand).

    python benchmarks/bench_scale.py                     # everything: writes benchmarks/results/scale.{json,md}
    python benchmarks/bench_scale.py --quick             # tiny N, seconds (run by the test suite)
    python benchmarks/bench_scale.py --sizes 100000 --repeats 1
    python benchmarks/bench_scale.py --scvi /tmp/scvi-venv/bin/python   # add scvi-tools' SCVI at N = 100,000

Data go to ``--data-dir`` (default a folder under /tmp; ``--keep-data`` keeps them, else they are deleted).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GENES, LATENT, HIDDEN, BATCH, LR, DISPERSION, DENSITY = 2000, 10, 128, 256, 1e-3, 2.0, 0.05
IWAE_K, HELD_OUT, WARMUP = 100, 2000, 20


# ----------------------------------------------------------------------------- the simulator
def true_params(genes: int, seed: int = 0):
    """W, b of the low-rank model, b shifted (by bisection on 4000 simulated cells) to ~5% nonzero counts."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.4, (genes, LATENT))
    b0 = rng.normal(0.0, 1.0, genes)
    probe = np.random.default_rng(seed + 1).normal(size=(4000, LATENT))
    eta = probe @ w.T + b0

    def density(shift):  # P(x > 0) under NB(mu, r), averaged over cells and genes
        mu = np.exp(eta + shift)
        return float(np.mean(1.0 - (DISPERSION / (DISPERSION + mu)) ** DISPERSION))

    lo, hi = -20.0, 5.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if density(mid) < DENSITY else (lo, mid)
    return w, b0 + 0.5 * (lo + hi)


def simulate_chunks(n: int, w, b, seed: int, chunk: int = 20000):
    """Dense float32 count chunks ``[<= chunk, genes]`` of n cells; each chunk's draws from its own seed."""
    for k, lo in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng([seed, k])
        m = min(chunk, n - lo)
        mu = np.exp(rng.standard_normal((m, LATENT)) @ w.T + b)
        lam = rng.gamma(DISPERSION, mu / DISPERSION)
        yield rng.poisson(lam).astype(np.float32)


def simulate_csr(n: int, w, b, seed: int):
    import scipy.sparse as sp

    data, indices, indptr, nnz = [], [], [np.zeros(1, np.int64)], 0
    for x in simulate_chunks(n, w, b, seed):
        c = sp.csr_matrix(x)
        data.append(c.data.astype(np.float32))
        indices.append(c.indices.astype(np.int32))
        indptr.append(c.indptr[1:].astype(np.int64) + nnz)
        nnz += c.nnz
    indptr = np.concatenate(indptr)
    if nnz < 2 ** 31:
        indptr = indptr.astype(np.int32)
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=(n, w.shape[0]))


def write_data(folder: Path, n: int, genes: int, held_out: int) -> dict:
    """``train_{n}.npz``, ``train_{n}.h5ad`` and ``held_out.npy`` (shared by every N) under ``folder``."""
    import anndata
    import scipy.sparse as sp

    folder.mkdir(parents=True, exist_ok=True)
    w, b = true_params(genes)
    held = folder / f"held_out_{genes}.npy"
    if not held.exists():
        np.save(held, np.concatenate(list(simulate_chunks(held_out, w, b, seed=999))))
    npz, h5ad = folder / f"train_{n}_{genes}.npz", folder / f"train_{n}_{genes}.h5ad"
    info = {"n": n, "genes": genes, "npz": str(npz), "h5ad": str(h5ad), "held_out": str(held)}
    if not (npz.exists() and h5ad.exists()):
        t = time.perf_counter()
        x = simulate_csr(n, w, b, seed=1)
        sp.save_npz(npz, x, compressed=False)
        anndata.AnnData(X=x).write_h5ad(h5ad)
        info["generate_s"] = time.perf_counter() - t
        del x
    x = sp.load_npz(npz)
    info.update(nnz=int(x.nnz), density=x.nnz / (x.shape[0] * x.shape[1]),
                csr_bytes=int(x.data.nbytes + x.indices.nbytes + x.indptr.nbytes),
                npz_file_bytes=npz.stat().st_size, h5ad_file_bytes=h5ad.stat().st_size,
                mean_count=float(x.data.sum() / (x.shape[0] * x.shape[1])))
    return info


# ----------------------------------------------------------------------------- one case, in a child process
def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Enough(Exception):
    pass


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    import pyro
    from pyro_vae import VAE, Callback, fit, iwae_log_likelihood, make_optimizer
    from pyro_vae.sources import Source

    case, info = spec["case"], spec["data"]
    genes = info["genes"]
    held = torch.from_numpy(np.load(info["held_out"])[:spec.get("eval_cells", HELD_OUT)])
    t_open = time.perf_counter()
    if case == "sparse":
        import scipy.sparse as sp
        from pyro_vae.sources import SparseSource

        data = SparseSource(sp.load_npz(info["npz"]), path=info["npz"])
    elif case in ("h5ad-mem", "h5ad-backed"):
        import anndata
        from pyro_vae.sources import AnnDataSource

        backed = case == "h5ad-backed"
        data = AnnDataSource(anndata.read_h5ad(info["h5ad"], backed="r" if backed else None), path=info["h5ad"])
    elif case in ("dense", "reference"):
        import scipy.sparse as sp

        m = sp.load_npz(info["npz"])
        data = torch.empty(m.shape, dtype=torch.float32)
        for lo in range(0, m.shape[0], 10000):  # densify in blocks: the tensor is the only full-size copy
            data[lo:lo + 10000] = torch.from_numpy(m[lo:lo + 10000].toarray())
        del m
    elif case == "baseline":
        data = held[:512].clone()
    else:
        raise ValueError(case)
    open_s = time.perf_counter() - t_open
    n = data.shape[0]

    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE((genes,), latent_dim=LATENT, likelihood="negative-binomial",
              net={"name": "mlp", "hidden": [HIDDEN]})
    out = {"case": case, "n": n, "open_s": open_s, "params": sum(p.numel() for p in vae.parameters())}
    max_steps = None if case == "baseline" else spec.get("steps")  # 512 cells: two steps, one epoch

    if case == "reference":
        sys.path.insert(0, str(HERE))
        from bench_train import Reference, _ref_adam, _reference_epoch

        ref = Reference(vae, "negative-binomial")
        assert sum(p.numel() for p in ref.parameters()) == out["params"]
        opt = _ref_adam(ref)
        torch.manual_seed(0)
        if max_steps is None:
            t = time.perf_counter()
            _reference_epoch(ref, opt, data, None, BATCH)
            out.update(train_s=time.perf_counter() - t, steps=math.ceil(n / BATCH), points=n, timing="one epoch")
        else:  # the same loop, stopped as the library's runs are
            perm, marks = torch.randperm(n), []
            for k, lo in enumerate(range(0, n, BATCH)):
                if k == max_steps:
                    break
                xb = data[perm[lo:lo + BATCH]]
                marks.append(time.perf_counter())
                opt.zero_grad(set_to_none=True)
                ref.loss(xb, n).backward()
                opt.step()
            marks.append(time.perf_counter())
            timed = len(marks) - 1 - WARMUP
            out.update(train_s=marks[-1] - marks[WARMUP], steps=timed, points=timed * BATCH,
                       timing=f"steps {WARMUP + 1}..{len(marks) - 1} of the epoch")
        out["train_peak_rss_mib"] = _vm_hwm_mib()
        if not spec.get("evaluate", True):
            return out
        ref.k, ll = IWAE_K, []
        torch.manual_seed(spec.get("eval_seed", 0))
        with torch.no_grad():
            for lo in range(0, held.shape[0], 100):
                xb = held[lo:lo + 100]
                ll.append(-ref.loss(xb, xb.shape[0]).item())
        out["heldout_ll_per_cell"] = sum(ll) / held.shape[0]
        return out

    if max_steps is None:
        seconds = []

        class Epoch(Callback):
            def on_epoch_end(self, state, record):
                seconds.append(record["seconds"])

        fit(vae, data, epochs=1, batch_size=BATCH, optim=make_optimizer("adam", LR), seed=0, progress=False,
            callbacks=[Epoch()])
        out.update(train_s=seconds[0], steps=math.ceil(n / BATCH), points=n, timing="one epoch")
    else:
        marks = []

        class Bounded(Source):
            """``data``, read through: stops training after ``max_steps`` minibatches, noting when each came."""

            def __init__(self, base):
                super().__init__(len(base), tuple(base.shape[1:]), getattr(base, "name", "tensor"))
                self.base, self.chunk = base, base.chunk if isinstance(base, Source) else None

            def __getitem__(self, key):
                if isinstance(key, slice):  # fit's data check reads the whole source in blocks: not a step
                    return self.base[key]
                if len(marks) == max_steps + 1:
                    raise _Enough
                rows = self.base[key]
                marks.append(time.perf_counter())
                return rows

        try:
            fit(vae, Bounded(data), epochs=1, batch_size=BATCH, optim=make_optimizer("adam", LR), seed=0,
                progress=False)
        except _Enough:
            pass
        timed = len(marks) - 1 - WARMUP
        out.update(train_s=marks[-1] - marks[WARMUP], steps=timed, points=timed * BATCH,
                   timing=f"steps {WARMUP + 1}..{len(marks) - 1} of the epoch")
    out["train_peak_rss_mib"] = _vm_hwm_mib()
    if spec.get("evaluate", True):
        res = iwae_log_likelihood(vae, held, num_samples=IWAE_K, batch_size=64, particle_chunk=25,
                                  seed=spec.get("eval_seed", 0))
        out["heldout_ll_per_cell"], out["heldout_ll_stderr"] = res.mean, res.stderr
    return out


def run_child(spec: dict, python: str = sys.executable, script: Path | None = None) -> dict:
    """One case in a fresh process; adds its peak RSS (wait4's ru_maxrss, KiB on Linux) and wall time."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as fh:
        result_path = fh.name
    cmd = [python, str(script or Path(__file__)), "--child", json.dumps(spec), "--result", result_path]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        os.unlink(result_path)
        raise RuntimeError(f"case {spec['case']} (N={spec['data']['n']}) failed:\n{stderr[-4000:]}")
    out = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    out["wall_s"] = wall
    out["peak_rss_mib"] = _child_maxrss_mib.get(proc.pid, float("nan"))
    out["points_per_s"] = out["points"] / out["train_s"]
    return out


_child_maxrss_mib: dict[int, float] = {}


def _install_reaper() -> None:
    """Popen reaps its child itself; wrap its wait so the child's own rusage (wait4) is kept per pid."""
    original = subprocess.Popen._try_wait

    def _try_wait(self, wait_flags):
        try:
            pid, sts, usage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return original(self, wait_flags)
        if pid == self.pid:
            _child_maxrss_mib[pid] = usage.ru_maxrss / 1024
        return pid, sts

    subprocess.Popen._try_wait = _try_wait


# ----------------------------------------------------------------------------- the report
def summarise(rows: list[dict]) -> dict:
    """Median of each case's runs at each N."""
    keys = ("peak_rss_mib", "train_peak_rss_mib", "points_per_s", "train_s", "heldout_ll_per_cell", "open_s")
    out = {}
    for r in rows:
        out.setdefault((r["n"], r["case"]), []).append(r)
    table = []
    for (n, case), runs in out.items():
        row = {"n": n, "case": case, "runs": len(runs), "timing": runs[0]["timing"]}
        for k in keys:
            vals = [r[k] for r in runs if k in r]
            row[k] = statistics.median(vals) if vals else float("nan")
        row["points_per_s_runs"] = [r["points_per_s"] for r in runs]
        table.append(row)
    return table


def targets(table: list[dict], datas: dict) -> list[dict]:
    get = {(r["n"], r["case"]): r for r in table}
    checks = []
    sizes = sorted(datas)
    big, small = sizes[-1], sizes[0]
    base = get.get((small, "baseline"))
    if (big, "h5ad-backed") in get and (small, "h5ad-backed") in get and big != small:
        a, b = get[(small, "h5ad-backed")]["peak_rss_mib"], get[(big, "h5ad-backed")]["peak_rss_mib"]
        checks.append({"target": f"backed .h5ad peak RSS at N={big} < 2 GiB", "value": f"{b:.0f} MiB",
                       "met": b < 2048})
        checks.append({"target": f"backed .h5ad peak RSS at N={big} within 10% of N={small}",
                       "value": f"{b:.0f} / {a:.0f} MiB = {b / a:.3f}", "met": b <= 1.1 * a})
    for n in sizes:
        if (n, "sparse") in get and base is not None:
            s, csr = get[(n, "sparse")]["peak_rss_mib"], datas[n]["csr_bytes"] / 2 ** 20
            limit = 1.5 * csr + base["peak_rss_mib"]
            checks.append({"target": f"sparse in-memory peak RSS at N={n} < 1.5 x CSR ({csr:.0f} MiB) + model "
                                     f"process ({base['peak_rss_mib']:.0f} MiB)",
                           "value": f"{s:.0f} MiB (limit {limit:.0f}; over baseline {(s - base['peak_rss_mib']) / csr:.2f} x CSR)",
                           "met": s < limit})
    if (small, "sparse") in get and (small, "dense") in get:
        s, d = get[(small, "sparse")]["points_per_s"], get[(small, "dense")]["points_per_s"]
        checks.append({"target": f"sparse throughput at N={small} within 1.3x of dense",
                       "value": f"dense/sparse = {d / s:.2f}", "met": d / s <= 1.3})
        ls, ld = get[(small, "sparse")]["heldout_ll_per_cell"], get[(small, "dense")]["heldout_ll_per_cell"]
        checks.append({"target": f"sparse held-out log-lik per cell at N={small} no worse than dense",
                       "value": f"{ls:.4f} vs {ld:.4f}", "met": ls >= ld - 1e-6})
    return checks


def markdown(report: dict) -> str:
    lines = ["| N | case | runs | timing | points/s | train s | peak RSS (MiB) | RSS after training (MiB) | "
             "held-out log p(x) per cell (IWAE K=100) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["table"]:
        lines.append(f"| {r['n']:,} | {r['case']} | {r['runs']} | {r['timing']} | {r['points_per_s']:,.0f} | "
                     f"{r['train_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['train_peak_rss_mib']:.0f} | "
                     f"{r['heldout_ll_per_cell']:.3f} |")
    lines += ["", "| N | nnz | density | CSR bytes (MiB) | .npz file (MiB) | .h5ad file (MiB) |",
              "|---|---|---|---|---|---|"]
    for n, d in sorted(report["data"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {int(n):,} | {d['nnz']:,} | {d['density']:.4f} | {d['csr_bytes'] / 2 ** 20:.0f} | "
                     f"{d['npz_file_bytes'] / 2 ** 20:.0f} | {d['h5ad_file_bytes'] / 2 ** 20:.0f} |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for c in report["targets"]:
        lines.append(f"| {c['target']} | {c['value']} | {'yes' if c['met'] else 'NO'} |")
    if report.get("scvi"):
        lines += ["", "| scvi-tools SCVI, one epoch | points/s | train s | peak RSS (MiB) | RSS after training (MiB) | "
                  "get_marginal_ll (K=100) | get_elbo | reconstruction |", "|---|---|---|---|---|---|---|---|"]
        for s in report["scvi"]:
            if "error" in s:
                lines.append(f"| failed | {s['error'][-300:]!r} | | | | | | |")
                continue
            lines.append(f"| {s['version']}, use_observed_lib_size={s['use_observed_lib_size']} | "
                         f"{s['points_per_s']:,.0f} | {s['train_s']:.1f} | {s['peak_rss_mib']:.0f} | "
                         f"{s['train_peak_rss_mib']:.0f} | {s['get_marginal_ll']:.3f} | {s['get_elbo']:.3f} | "
                         f"{s['get_reconstruction_error']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 2000 cells of 100 genes, K = 10: seconds")
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--cases", default=None, help="cases at the smallest N (default all; '' none, e.g. with "
                   "--scvi); larger N: sources only")
    p.add_argument("--epoch-up-to", type=int, default=0, help="N up to which a case trains one full epoch")
    p.add_argument("--merge", nargs="+", default=None, help="combine the rows of earlier reports into one")
    p.add_argument("--eval-cells", type=int, default=1000, help="held-out cells evaluated (of 2000 written)")
    p.add_argument("--steps", type=int, default=300, help="steps timed at N > 100,000 (bounded runs)")
    p.add_argument("--repeats", type=int, default=2, help="passes over the smallest N's cases (order reversed; "
                   "the later passes time training only, over --repeat-cases)")
    p.add_argument("--repeat-cases", default="sparse,dense,reference")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--scvi", default=None, help="python of a venv with scvi-tools: add SCVI at the smallest N")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        Path(args.result).write_text(json.dumps(child(json.loads(args.child))))
        return 0

    global GENES, IWAE_K, HELD_OUT
    if args.merge:
        reports = [json.loads(Path(f).read_text()) for f in args.merge]
        report = {"meta": reports[0]["meta"], "data": {}, "rows": [], "scvi": []}
        for r in reports:
            report["data"].update({int(k): v for k, v in r["data"].items()})
            report["rows"] += r["rows"]
            report["scvi"] += r.get("scvi") or []
        return _finish(report, args, "scale")
    if args.quick:
        GENES, IWAE_K, HELD_OUT = 100, 10, 256
        sizes, args.repeats, args.epoch_up_to = [2000], 1, 10 ** 9
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
    small = min(sizes)
    all_cases = ["sparse", "h5ad-mem", "h5ad-backed", "dense", "reference", "baseline"]
    cases = [c for c in args.cases.split(",") if c] if args.cases is not None else all_cases
    folder = Path(args.data_dir or tempfile.mkdtemp(prefix="bench_scale_", dir="/tmp"))
    _install_reaper()
    report = {"meta": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                       "genes": GENES, "latent": LATENT, "hidden": [HIDDEN], "batch": BATCH, "lr": LR,
                       "true_dispersion": DISPERSION, "iwae_k": IWAE_K, "held_out": min(args.eval_cells, HELD_OUT),
                       "quick": args.quick, "steps_at_large_n": args.steps},
              "data": {}, "rows": []}
    try:
        for n in sizes:
            t = time.perf_counter()
            info = write_data(folder, n, GENES, HELD_OUT)
            info["write_s"] = time.perf_counter() - t
            report["data"][n] = info
            print(f"data N={n}: nnz {info['nnz']:,} density {info['density']:.4f} CSR "
                  f"{info['csr_bytes'] / 2 ** 20:.0f} MiB ({info['write_s']:.0f} s)", flush=True)
            here = cases if n == small else [c for c in cases if c in ("sparse", "h5ad-mem", "h5ad-backed")]
            repeats = args.repeats if n == small else 1
            for r in range(repeats):
                these = here if r == 0 else [c for c in here if c in args.repeat_cases.split(",")]
                for case in (these if r % 2 == 0 else these[::-1]):
                    spec = {"case": case, "data": info, "steps": None if n <= args.epoch_up_to else args.steps,
                            "evaluate": r == 0, "eval_cells": min(args.eval_cells, HELD_OUT)}
                    row = run_child(spec)
                    report["rows"].append(row)
                    print(f"  {case:12s} {row['points_per_s']:9,.0f} points/s  peak {row['peak_rss_mib']:6.0f} MiB "
                          f"(after training {row['train_peak_rss_mib']:6.0f})  ll/cell {row.get('heldout_ll_per_cell', float('nan')):.3f}",
                          flush=True)
            if args.scvi and n == small:
                report["scvi"] = run_scvi(args.scvi, info)
                print("  scvi:", report["scvi"], flush=True)
    finally:
        if not args.keep_data and args.data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return _finish(report, args, "scale_quick" if args.quick else "scale")


def _finish(report: dict, args, name: str) -> int:
    report["table"] = summarise(report["rows"])
    report["targets"] = targets(report["table"], report["data"])
    report["data"] = {str(k): v for k, v in report["data"].items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


# ----------------------------------------------------------------------------- scvi-tools, in its own venv
SCVI_CHILD = r'''
import json, os, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
import anndata, scvi, torch
torch.set_num_threads(os.cpu_count())
scvi.settings.seed = 0
ad = anndata.read_h5ad(spec["h5ad"])
scvi.model.SCVI.setup_anndata(ad)
m = scvi.model.SCVI(ad, n_hidden=spec["hidden"], n_latent=spec["latent"], n_layers=1, gene_likelihood="nb",
                    dispersion="gene", use_observed_lib_size=spec["observed_lib"])
t = time.perf_counter()
m.train(max_epochs=1, batch_size=spec["batch"], train_size=1.0, early_stopping=False,
        plan_kwargs={"lr": spec["lr"]}, accelerator="cpu", enable_progress_bar=False)
train_s = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
held = anndata.AnnData(X=np.load(spec["held_out"]))
scvi.model.SCVI.setup_anndata(held)
torch.manual_seed(0)
ll = m.get_marginal_ll(held, n_mc_samples=spec["k"], batch_size=100)
elbo = m.get_elbo(held, batch_size=256)
recon = m.get_reconstruction_error(held, batch_size=256)
print(json.dumps({"version": scvi.__version__, "use_observed_lib_size": spec["observed_lib"], "train_s": train_s,
                  "train_peak_rss_mib": int(hwm) / 1024, "get_marginal_ll": float(ll), "get_elbo": float(elbo),
                  "get_reconstruction_error": {k: float(v) for k, v in dict(recon).items()}}))
'''


def run_scvi(python: str, info: dict) -> list[dict]:
    """SCVI (n_hidden 128, n_latent 10, one layer, gene-wise NB, scvi's other defaults) for one epoch on the
    same .h5ad, with the observed library size (scvi's default) and with a latent log-normal library."""
    return [_run_scvi(python, info, observed) for observed in (True, False)]


def _run_scvi(python: str, info: dict, observed_lib: bool) -> dict:
    spec = {"h5ad": info["h5ad"], "held_out": info["held_out"], "hidden": HIDDEN, "latent": LATENT,
            "batch": BATCH, "lr": LR, "k": IWAE_K, "observed_lib": observed_lib}
    t = time.perf_counter()
    proc = subprocess.Popen([python, "-c", SCVI_CHILD, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        return {"error": stderr[-3000:]}
    out = json.loads(stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t
    out["peak_rss_mib"] = _child_maxrss_mib.get(proc.pid, float("nan"))
    out["points_per_s"] = info["n"] / out["train_s"]
    return out


if __name__ == "__main__":
    sys.exit(main())
