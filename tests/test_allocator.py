"""The allocator setting the pyro-vae command applies: large freed buffers stay in the heap."""

import os
import subprocess
import sys

import pytest

CHILD = r"""
import resource, sys, torch
from pyro_vae import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else False
faults = 0
for i in range(6):  # a step's worth of large temporaries, allocated, touched and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.ones(3 << 18) for _ in range(4)]  # 4 x 3 MiB
    del buffers
    if i >= 2:  # after warm-up
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, faults)
"""


def _faults(mode: str, **setting):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **setting}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_freed_buffers_instead_of_faulting_them_in_again():
    applied, tuned = _faults("tuned")
    _, default = _faults("default")
    assert applied
    # 4 x 3 MiB a round is 3,072 pages: with glibc's defaults they are handed back and faulted in every round
    assert default > 8000 and tuned < default / 4, (default, tuned)  # measured: 12,160 against 768
    applied, _ = _faults("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert not applied  # the user's own setting stands
