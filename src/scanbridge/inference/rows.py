"""Column-wise tables: read as sequences of rows (`self[i]`, negative indices, slices and iteration), and
rings stored back to back picked out by index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, overload

import numpy as np

T = TypeVar("T")


class Rows(Sequence[T]):
    """A Sequence whose subclasses give `__len__` and `row(i)` (0 <= i < len): indexing checks the range
    and turns negative indices round, a slice gives a list of rows."""

    def row(self, i: int) -> T:
        """Row `i` (0 <= i < len(self))."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self.row(i) for i in range(*index.indices(len(self)))]
        return self.row(range(len(self))[index])  # IndexError out of range


def take_rings(coords: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs at `idx` of runs stored back to back (`coords`, `offsets`: outlines' vertices, measurement
    values), back to back, and their offsets."""
    idx = np.asarray(idx, dtype=np.int64)
    starts, lengths = offsets[:-1][idx], np.diff(offsets)[idx]
    out = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    gather = np.repeat(starts - out[:-1], lengths) + np.arange(int(out[-1]))
    return coords[gather], out
