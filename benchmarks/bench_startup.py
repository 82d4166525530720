"""Start-up time of the ``pyro-vae`` command: ``--version`` and ``--help`` against a bare Python.

Each command runs in a fresh process, several interleaved rounds after one
warm-up round (so every command finds the files in the page cache alike); the
figure is the median wall-clock time from ``subprocess.run`` to exit. The
floor is ``python -c pass`` (the interpreter alone); ``python -c "import
torch"`` is there for comparison, as what any command that imports torch pays
at least. Whether a command imported torch is read from Python's own import
log (``PYTHONPROFILEIMPORTTIME``) in one extra run. Target: ``--version`` and
``--help`` under a second.

    python benchmarks/bench_startup.py                # writes benchmarks/results/startup.{json,md}
    python benchmarks/bench_startup.py --quick        # 2 rounds, no import-torch comparison (run by the tests)
    python benchmarks/bench_startup.py --pythonpath /tmp/old   # another copy of the package, e.g. an older commit
                                                               # (git archive OLD pyro_vae | tar -x -C /tmp/old)

The ``pyro-vae`` console script next to this Python is timed where there is one,
else ``python -m pyro_vae``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import write_report

HERE = Path(__file__).resolve().parent
TARGET_S = 1.0


def pyro_vae_command() -> list[str]:
    script = Path(sys.executable).parent / "pyro-vae"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "pyro_vae"]


def cases(quick: bool) -> list[tuple[str, list[str]]]:
    """(label, argv) of every timed command; the floor first."""
    cli = pyro_vae_command()
    out = [("python -c pass", [sys.executable, "-c", "pass"])]
    if not quick:
        out.append(("python -c 'import torch'", [sys.executable, "-c", "import torch"]))
    out += [("pyro-vae --version", [*cli, "--version"]), ("pyro-vae --help", [*cli, "--help"]),
            ("pyro-vae train --help", [*cli, "train", "--help"])]
    return out


def environment(pythonpath: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_once(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit code {done.returncode}): {done.stderr[-2000:]}")
    return seconds


def imported(argv: list[str], env: dict) -> set[str]:
    """The top-level packages the command imported, from ``PYTHONPROFILEIMPORTTIME``'s log on stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def markdown(rows: list, meta: dict) -> str:
    head = ("| command | median (s) | min (s) | above `python -c pass` (s) | imports torch / pyro |\n"
            "|---|---|---|---|---|\n")
    body = "".join(f"| `{r['case']}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['above_floor_s']:.3f} | "
                   f"{'yes' if r['imports_torch'] else 'no'} / {'yes' if r['imports_pyro'] else 'no'} |\n"
                   for r in rows)
    source = f", package from {meta['pythonpath']}" if meta["pythonpath"] else ""
    return (f"Python {meta['python']}, {meta['cores']} cores, median of {meta['repeats']} fresh processes each "
            f"(interleaved, after a warm-up round), `{meta['command']}`{source}; load average "
            f"{', '.join(f'{v:.2f}' for v in meta['load_average'])}\n\n" + head + body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15, help="fresh processes per command (default 15)")
    p.add_argument("--quick", action="store_true", help="2 rounds, without the import-torch comparison")
    p.add_argument("--pythonpath", help="put this directory first on PYTHONPATH: time another copy of pyro_vae")
    p.add_argument("--out", default=str(HERE / "results"), help="directory for startup.json and startup.md")
    args = p.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    env = environment(args.pythonpath)
    todo = cases(args.quick)
    for _, command in todo:  # warm-up: page cache, .pyc files
        run_once(command, env)
    times = {label: [] for label, _ in todo}
    for r in range(repeats):
        for label, command in (todo if r % 2 == 0 else todo[::-1]):
            times[label].append(run_once(command, env))
    floor = statistics.median(times[todo[0][0]])
    rows = []
    for label, command in todo:
        modules = imported(command, env)
        med = statistics.median(times[label])
        rows.append({"case": label, "argv": command, "times_s": times[label], "median_s": med,
                     "min_s": min(times[label]), "above_floor_s": med - floor,
                     "imports_torch": "torch" in modules, "imports_pyro": "pyro" in modules})
    located = subprocess.run([sys.executable, "-c", "import pyro_vae; print(pyro_vae.__file__)"], env=env,
                             capture_output=True, text=True).stdout.strip()
    meta = {"python": platform.python_version(), "cores": os.cpu_count(), "repeats": repeats, "quick": args.quick,
            "command": " ".join(Path(part).name if i == 0 else part for i, part in enumerate(pyro_vae_command())),
            "pythonpath": args.pythonpath, "pyro_vae": located, "load_average": list(os.getloadavg()),
            "target_s": TARGET_S}
    write_report(args.out, "startup", meta, rows, markdown(rows, meta))
    slow = [r["case"] for r in rows if r["case"].startswith("pyro-vae") and r["median_s"] >= TARGET_S]
    print(f"target: pyro-vae --version and --help under {TARGET_S:.0f} s: " + (f"missed by {', '.join(slow)}"
                                                                                if slow else "met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
