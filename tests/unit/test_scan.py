"""The open scan the worker's steps share: one overview, one tissue mask, closed once."""

from __future__ import annotations

import numpy as np
import pytest

from scanbridge.imaging.readers.base import ScanMetadata
from scanbridge.imaging.readers.memory import MemoryReader
from scanbridge.imaging.scan import OpenedScan
from scanbridge.imaging.tiling import MASK_MIN_SIDE, MASK_UM, mask_downsample
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


def _meta(size: tuple[int, int], mpp: float | None, downsamples: tuple[float, ...] = (1.0,)) -> ScanMetadata:
    dims = tuple((round(size[0] / d), round(size[1] / d)) for d in downsamples)
    return ScanMetadata(format="memory", vendor=None, dimensions=size, level_dimensions=dims,
                        level_downsamples=downsamples, mpp=(mpp, mpp) if mpp else None, objective_power=None)


def test_the_mask_works_at_8_um_never_below_512_px_nor_finer_than_the_overview() -> None:
    # GIVEN slides of several sizes and pixel sizes, with the overview's downsample each
    small = _meta((1920, 1440), 0.5)  # overview: level 0
    large = _meta((20000, 20000), 0.25, (1.0, 4.0, 16.0, 64.0))  # overview: the 1250² level (ds 16)
    huge = _meta((40000, 40000), 0.25, (1.0, 4.0, 16.0, 64.0))  # overview: the 625² level (ds 64)
    # WHEN the mask's downsample is chosen / THEN a small image keeps 512 px on its long side (1920 / 512),
    # a large one is masked at 8 µm (32 px of 0.25 µm), a huge one at its overview (coarser than 8 µm
    # already), a slide without a pixel size and a tiny one at their overview, as before
    assert mask_downsample(small, 1.0) == pytest.approx(1920 / MASK_MIN_SIDE)
    assert mask_downsample(large, 16.0) == pytest.approx(MASK_UM / 0.25) == 32.0
    assert mask_downsample(huge, 64.0) == 64.0
    assert mask_downsample(_meta((1920, 1440), None), 1.0) == 1.0
    assert mask_downsample(_meta((16, 16), 0.5), 1.0) == 1.0


def test_a_scan_with_a_pixel_size_is_masked_at_its_working_resolution_whatever_asks_first() -> None:
    # GIVEN two open scans of a 2048 x 1024 slide at 0.5 µm/px whose left quarter is tissue
    rgb = np.full((1024, 2048, 3), 242, np.uint8)
    rgb[:, :512] = (190, 110, 170)
    first_tissue, first_overview = OpenedScan(_CountingReader(rgb, mpp=0.5)), OpenedScan(_CountingReader(rgb, mpp=0.5))
    # WHEN one is asked for its tissue first, the other for its overview first
    a = first_tissue.tissue
    first_tissue.overview()
    first_overview.overview()
    b = first_overview.tissue
    # THEN both masks are the same 512 x 256 (4 px per mask px: 512 on the long side), a quarter tissue,
    # made from the one overview read each scan makes
    assert a.mask.shape == (256, 512) and a.downsample == 4.0
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.fraction == pytest.approx(0.25) and a.area_mm2 == pytest.approx(512 * 1024 * 0.25 / 1e6)
    assert first_tissue.reader.reads == first_overview.reader.reads == 1  # type: ignore[attr-defined]
    assert first_tissue.overview()[0].shape == (1024, 2048, 3)  # the overview itself stays full size


def test_a_scan_without_a_pixel_size_is_masked_at_its_overview() -> None:
    # GIVEN the same slide without a pixel size / WHEN masked
    tissue = OpenedScan(_CountingReader(np.ascontiguousarray(np.tile(_slide(), (1, 5, 1))))).tissue
    # THEN at the overview's resolution, as before the working resolution existed
    assert tissue.mask.shape == (300, 2000) and tissue.downsample == 1.0
