"""Keep large freed buffers in the C heap between training steps (glibc, Linux).

Every training step allocates and frees the same minibatch-sized temporaries
(activations, their gradients, the decoder's output). glibc's ``malloc``
serves those of a few MiB from the heap and, once the free space at the top
of the heap passes its trim threshold, hands it back to the kernel, so the
next step page-faults the same memory in again. Measured here (2 cores,
torch 2.14): 7,000-10,000 minor page faults a step for the conv VAE at batch
128, ~1,000 for the 784-400-50 MLP, and a Pyro step, whose many small Python
objects sit between those buffers, trims more often than a hand-written loop
(18 against 13 ``brk`` calls a step for the conv net). With the thresholds
raised both run without faults and the conv step's ratio to the hand-written
loop went from 1.31 to 1.07 (``benchmarks/RESULTS.md``).

:func:`tune_allocator` sets the two thresholds with ``mallopt``, as the
environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
would at start-up. It changes the whole process, so the library does not call
it behind a user's back: the ``pyro-vae`` command does, Python users may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether it was done.

    Buffers up to ``mmap_threshold`` bytes (glibc's maximum, 32 MiB, by
    default) come from the heap, and up to ``trim_threshold`` bytes of free
    heap are kept rather than returned to the kernel. Nothing is done off
    Linux, without glibc, or when either environment variable is set (the
    user's choice stands).
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                  int(trim_threshold)))
