"""Rows: a column-wise table read as a Sequence of rows."""

from __future__ import annotations

import pytest

from scanbridge.inference.rows import Rows


class Squares(Rows[int]):
    def __init__(self, n: int) -> None:
        self.n, self.asked = n, []

    def __len__(self) -> int:
        return self.n

    def row(self, i: int) -> int:
        self.asked.append(i)
        return i * i


def test_indices_slices_and_iteration_reach_row_with_indices_in_range() -> None:
    # GIVEN a table of 5 rows
    rows = Squares(5)
    # WHEN it is indexed, sliced, iterated / THEN row() only ever sees 0 <= i < 5
    assert rows[1] == 1 and rows[-1] == 16 and rows[-5] == 0
    assert rows[1:4] == [1, 4, 9] and rows[::-2] == [16, 4, 0] and rows[7:] == []
    assert list(rows) == [0, 1, 4, 9, 16] and 9 in rows and rows.index(4) == 2
    assert all(0 <= i < 5 for i in rows.asked)
    # AND indices out of range are IndexErrors, not rows
    for bad in (5, -6):
        with pytest.raises(IndexError):
            rows[bad]
