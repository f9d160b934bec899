"""A scan opened once per worker run: its reader, its files, one overview and one tissue mask.

QC, the analysis and the artifacts share one `OpenedScan` (`with OpenedScan.open(paths) as scan:`): the
files are opened (a ZIP unpacked) once, the overview is read once and the tissue mask computed once, on
first use. The mask has its own working resolution (`tiling.mask_downsample`: ~8 µm/px, at least 512 px
on the long side), read from the pyramid for it, so it is the same whichever step asks first. Every report
of the scan states the same tissue figure, `scan.tissue` (QC's NO_TISSUE value, the summary's "Tissue
fraction" / "Tissue area", the artifacts' metadata), whatever model runs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from scanbridge.imaging.readers.base import ScanMetadata, ScanReader, resize_rgb, thumbnail_size
from scanbridge.imaging.tiling import mask_downsample, mask_image, overview_level, strip_mask, tissue_overview
from scanbridge.imaging.tissue import percent_text, shared_masker, tissue_fraction

#: the overview's longest side (px): the finest the scan's tissue mask can be (see tiling.mask_downsample)
OVERVIEW_MAX = 2048


@dataclass(frozen=True)
class ScanTissue:
    """The scan's tissue mask, and the tissue figure every report states from it."""

    mask: np.ndarray
    downsample: float  # level-0 px per mask px
    mpp: tuple[float, float] | None

    @property
    def fraction(self) -> float:
        """The share of the slide that is tissue (0-1, rounded to 6 places as every report gives it)."""
        return round(tissue_fraction(self.mask), 6)

    @property
    def area_px(self) -> float:
        """The tissue's area in level-0 pixels."""
        return float(self.mask.sum()) * self.downsample * self.downsample

    @property
    def area_mm2(self) -> float | None:
        """The tissue's area in mm² (None when the scan has no pixel size)."""
        return self.area_px * self.mpp[0] * self.mpp[1] / 1e6 if self.mpp else None

    def to_json(self) -> dict[str, Any]:
        """The figure as the artifacts' metadata keeps it."""
        area = self.area_mm2
        return {"fraction": self.fraction, "percent": percent_text(self.fraction),
                "area_mm2": round(area, 6) if area is not None else None, "mask_downsample": self.downsample}


class OpenedScan:
    """One open scan shared by the worker's steps; closes its reader (and a ZIP's folder) on exit.

    >>> with OpenedScan.open([Path("scan.zip")]) as scan:
    ...     scan.tissue.fraction, scan.thumbnail(1024), scan.files  # read once, whoever asks first

    Wrapping a reader someone else owns (`owned=False`) gives it the same cached overview and mask
    without closing it.
    """

    def __init__(self, reader: ScanReader, files: Sequence[Path] = (), *, owned: bool = True) -> None:
        self.reader = reader
        self.files = list(files)  # what the reader reads: a ZIP's unpacked entries, not the ZIP
        self._owned = owned
        self._lock = threading.Lock()
        self._tissue_lock = threading.Lock()  # held while the mask is made (which may read the overview)
        self._overview: tuple[np.ndarray, float] | None = None
        self._tissue: ScanTissue | None = None
        self._closed = False

    @classmethod
    def open(cls, paths: Sequence[Path]) -> OpenedScan:
        """Open the scan's files with the reader that fits them (raises the readers' ScanErrors)."""
        from scanbridge.imaging.readers import open_scan_files

        reader, files = open_scan_files(paths)
        return cls(reader, files)

    @property
    def metadata(self) -> ScanMetadata:
        """The reader's metadata."""
        return self.reader.metadata

    def overview(self) -> tuple[np.ndarray, float]:
        """The RGB overview (the finest level within OVERVIEW_MAX, read whole) and its downsample."""
        with self._lock:
            if self._overview is None:
                if self._closed:
                    raise ValueError("the scan is closed and its overview was never read")
                self._overview = tissue_overview(self.reader, OVERVIEW_MAX)
            return self._overview

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """The overview resized to fit `max_side` (never enlarged), and its downsample from level 0."""
        rgb, ds = self.overview()
        width, height = self.metadata.dimensions
        size = thumbnail_size((width, height), max_side)
        if size[0] >= rgb.shape[1] and size[1] >= rgb.shape[0]:
            return rgb, ds
        return resize_rgb(rgb, size), max(width / size[0], height / size[1])

    @property
    def tissue(self) -> ScanTissue:
        """The scan's tissue mask (at `mask_downsample`, strip by strip) and its figure, computed once."""
        with self._tissue_lock:
            if self._tissue is None:
                if self._closed:
                    raise ValueError("the scan is closed and its tissue mask was never computed")
                meta = self.metadata
                level = overview_level(meta.level_dimensions, OVERVIEW_MAX)
                first_ds = float(meta.level_downsamples[level]) if level is not None else self.overview()[1]
                rgb, ds = mask_image(self.reader, OVERVIEW_MAX, mask_downsample(meta, first_ds), self.overview)
                self._tissue = ScanTissue(strip_mask(rgb, shared_masker()), ds, meta.mpp)
            return self._tissue

    def close(self) -> None:
        """Close the reader (when owned); what was computed stays readable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owned:
            self.reader.close()

    def __enter__(self) -> Self:
        """The scan itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the scan."""
        self.close()
