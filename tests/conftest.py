import time
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """A clean param store and a fixed seed before every test."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and many times faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """The embedded 8x8 digits scaled to [0, 1], as [1797, 1, 8, 8], with labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(d.target)


def _cpu_ticks(proc) -> int:
    """A child's CPU time so far (Linux); 0 where /proc is not there."""
    try:
        fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def wait_for_child(predicate, proc, run_dir, stalled: float = 120.0) -> None:
    """Wait until ``predicate()`` for a child training into ``run_dir``: a progress-based deadline, failing
    only if the child exits first or neither its CPU time nor its run's files move for ``stalled`` s."""
    def progress():
        files = [Path(run_dir) / name for name in ("metrics.jsonl", "checkpoint.pt")]
        return _cpu_ticks(proc), tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in files)

    seen, since = progress(), time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the child ended early: {proc.communicate()}")
        now = progress()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since > stalled:
            proc.kill()
            pytest.fail(f"the child made no progress for {stalled:.0f} s")
        time.sleep(0.02)
