"""The worker's malloc: large blocks keep their own mapping after big ones were freed (inference/heap.py)."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pytest

from scanbridge.inference.heap import MMAP_THRESHOLD, tune_malloc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mapped_bytes() -> int:
    """Bytes in mapped blocks (glibc >= 2.33's mallinfo2)."""
    mallinfo2 = getattr(ctypes.CDLL("libc.so.6"), "mallinfo2", None)
    if mallinfo2 is None:
        pytest.skip("glibc older than 2.33: no mallinfo2")
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().hblkhd)


def test_a_large_block_is_still_mapped_after_a_larger_one_was_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a process whose environment leaves glibc's thresholds alone, tuned as the worker is
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert tune_malloc() is True
    # WHEN a 16 MiB block is freed (glibc alone would raise its threshold to 16 MiB) and 2 MiB are allocated
    big = np.ones(16 * 2**20, np.uint8)
    del big
    before = _mapped_bytes()
    block = np.ones(2 * MMAP_THRESHOLD, np.uint8)
    # THEN the 2 MiB block has a mapping of its own, which goes back to the system when it is freed
    assert _mapped_bytes() - before >= block.nbytes
    del block
    assert _mapped_bytes() <= before


def test_a_threshold_set_in_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an environment that sets glibc's mmap threshold itself
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    # WHEN the worker tunes malloc THEN it leaves the threshold to the environment
    assert tune_malloc() is False
