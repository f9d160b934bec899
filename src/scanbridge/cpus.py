"""How many cores this process may use (for the thread counts of the readers, the model and the mask)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: os.process_cpu_count (Python 3.13+: affinity and -X cpu_count),
    else the scheduler affinity mask (Linux), else os.cpu_count."""
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return max(1, int(counter() or 1))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 2
