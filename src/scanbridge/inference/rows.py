"""Column-wise tables read as sequences of rows: `self[i]`, negative indices, slices and iteration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, overload

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
