"""glibc's malloc set up for the tile pipeline: blocks from 1 MiB up get a mapping of their own, returned to
the system when freed.

glibc maps blocks of 128 KiB and more, but each time such a block is freed it raises that threshold to the
block's size (up to 32 MiB) and the heap trim threshold to twice it. After the first few large frees
(decoded windows, tile outputs and their copies, post-processing images: 0.1-24 MiB each) those blocks
come from the heaps of the threads that allocate them (reader threads, the post-processing pool, the main
thread) and, once freed, stay resident wherever a live block above them keeps the heap from shrinking:
at the peak of a nuclei run 66 MiB of the heaps were free yet resident on a 100 MP slide, 93 MiB on a
400 MP one (mallinfo2), and that difference was most of the run's growth with the slide. Fixed at
MMAP_THRESHOLD (setting it turns the adjustment off) the heaps kept 10-24 MiB free at both sizes. Not lower:
at 256 KiB every decoded window (768 KiB) was a fresh mapping, and its page faults made decoding ~25 %
slower; at 1 MiB decoding is as fast as before (docs/performance.md).

Hand-written (ctypes, two calls): no maintained package wraps mallopt.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 2**20
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD for this process (and the children it forks); False
    where the environment sets the threshold itself (MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES) or the C
    library is not glibc."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
