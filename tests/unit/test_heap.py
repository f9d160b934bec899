"""The worker's malloc: large blocks keep their own mapping after big ones were freed (inference/heap.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scanbridge.inference.heap import tune_malloc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


_PROBE = """
import ctypes, sys
import numpy as np
from scanbridge.inference.heap import MMAP_THRESHOLD, tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = getattr(ctypes.CDLL("libc.so.6"), "mallinfo2", None)
if mallinfo2 is None:
    print("no-mallinfo2"); sys.exit(0)
mallinfo2.restype = MallInfo2
tuned = tune_malloc() if sys.argv[1] == "tuned" else False
big = np.ones(16 * 2**20, np.uint8)
del big
before = mallinfo2().hblkhd
block = np.ones(2 * MMAP_THRESHOLD, np.uint8)
during = mallinfo2().hblkhd
del block
print(tuned, during - before, mallinfo2().hblkhd - before)
"""


def _probe(mode: str) -> tuple[str, int, int]:
    """In a fresh interpreter (a known heap, as a worker starts): free a 16 MiB block, then allocate 2 MiB;
    (tune_malloc's answer, mapped bytes gained by the 2 MiB block, mapped bytes left after freeing it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env=env, timeout=60).stdout.split()
    if out == ["no-mallinfo2"]:
        pytest.skip("glibc older than 2.33: no mallinfo2")
    return out[0], int(out[1]), int(out[2])


def test_a_large_block_is_still_mapped_after_a_larger_one_was_freed() -> None:
    # GIVEN fresh processes whose environment leaves glibc's thresholds alone, one tuned as the worker is
    # WHEN each frees a 16 MiB block (glibc alone then raises its threshold to 16 MiB) and allocates 2 MiB
    tuned, gained, left = _probe("tuned")
    _untuned, gained_untuned, _ = _probe("untuned")
    # THEN in the tuned one the 2 MiB block has a mapping of its own, given back to the system when freed;
    # untuned glibc serves it from the heap (which keeps it resident after the free)
    assert tuned == "True"
    assert gained >= 2 * 2**20 and left <= 0
    assert gained_untuned < 2 * 2**20


def test_a_threshold_set_in_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an environment that sets glibc's mmap threshold itself
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    # WHEN the worker tunes malloc THEN it leaves the threshold to the environment
    assert tune_malloc() is False
