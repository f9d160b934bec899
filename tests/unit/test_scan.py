"""The open scan the worker's steps share: one overview, one tissue mask, closed once."""

from __future__ import annotations

import numpy as np
import pytest

from scanbridge.imaging.readers.memory import MemoryReader
from scanbridge.imaging.scan import OpenedScan
from scanbridge.imaging.tissue import percent_text, tissue_mask


class _CountingReader(MemoryReader):
    """The in-memory reader, counting its region reads and closes."""

    def __init__(self, rgb: np.ndarray, mpp: float | None = None) -> None:
        super().__init__(rgb, mpp=mpp)
        self.reads = 0
        self.closes = 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        self.reads += 1
        return super().read_region(location, level, size)

    def close(self) -> None:
        self.closes += 1


def _slide() -> np.ndarray:
    """A 400 x 300 glass image whose left 100 columns are stained tissue (a quarter)."""
    rgb = np.full((300, 400, 3), 242, np.uint8)
    rgb[:, :100] = (190, 110, 170)
    return rgb


def test_overview_and_tissue_are_read_once_and_shared() -> None:
    # GIVEN an open scan over a reader whose left quarter is tissue, at 0.5 µm/px
    reader = _CountingReader(_slide(), mpp=0.5)
    scan = OpenedScan(reader)
    # WHEN the tissue, the overview and two thumbnails are asked for, several times
    tissue = scan.tissue
    again = scan.tissue
    overview, ds = scan.overview()
    small, small_ds = scan.thumbnail(100)
    whole, whole_ds = scan.thumbnail(1024)
    # THEN the reader was read once, and every answer comes from that one overview
    assert reader.reads == 1 and again is tissue
    assert ds == 1.0 and overview.shape == (300, 400, 3)
    assert small.shape == (75, 100, 3) and small_ds == pytest.approx(4.0)
    assert whole is overview and whole_ds == 1.0  # never enlarged
    # AND the tissue figure is the mask's: a quarter of the slide, its area in mm², written one way
    np.testing.assert_array_equal(tissue.mask, tissue_mask(overview))
    assert tissue.fraction == pytest.approx(0.25)
    assert tissue.area_mm2 == pytest.approx(100 * 300 * 0.25 / 1e6)
    assert tissue.to_json()["percent"] == percent_text(tissue.fraction) == "25.00 %"


def test_a_scan_closes_its_reader_once_and_keeps_what_it_read() -> None:
    # GIVEN two open scans over counting readers, one of them wrapping a reader it does not own
    owned, borrowed = _CountingReader(_slide()), _CountingReader(_slide())
    with OpenedScan(owned) as scan, OpenedScan(borrowed, owned=False) as other:
        fraction = scan.tissue.fraction
    # WHEN it is closed again
    scan.close()
    # THEN its reader was closed once, the borrowed one never
    assert (owned.closes, borrowed.closes) == (1, 0)
    # AND what it computed stays readable, while what it never read cannot be read any more
    assert scan.tissue.fraction == fraction and scan.thumbnail(64)[0].shape[1] == 64
    with pytest.raises(ValueError, match="closed"):
        other.overview()


def test_a_reader_is_a_context_manager() -> None:
    # GIVEN a reader / WHEN used in a with block / THEN it is the reader inside and closed on exit
    reader = _CountingReader(_slide())
    with reader as inside:
        assert inside is reader and reader.closes == 0
    assert reader.closes == 1
