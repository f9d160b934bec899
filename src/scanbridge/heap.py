"""The cyclic garbage collector around a process's start-up and its long-lived objects.

A process of the stack imports its libraries once and keeps them for its life (the worker: numpy, scipy,
scikit-image, onnxruntime, highdicom's standard tables; ~600,000 objects). At Python's default thresholds the
collector runs all through those imports, walking objects that will never be garbage: ~0.65 of the warm-worker
server's ~2.75 s of start-up CPU here. So the entry points import with the collector paused (`gc_paused`),
then take what the start-up made out of its reach (`freeze_heap`), the order the `gc` module's documentation
gives for a process that forks: `gc.disable()` early, `gc.freeze()` before the fork, collector on in the
children (the warm worker's forks start with it on, their collections leaving the server's pages alone).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Cyclic garbage collection off for the block (back to how it was after, also on an exception)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze_heap() -> None:
    """Put every object alive now (modules, the app, clients) out of the cyclic garbage collector's reach.

    They live as long as the process. Left in, each full collection walks all of them while every request in
    flight waits (40-110 ms pauses measured in the API and in moto under load), and in a forked child it
    writes to the parent's pages. Frozen, a full collection walks only what was allocated since. The garbage
    already there is collected first, so none of it is kept.
    """
    gc.collect()
    gc.freeze()
