"""OpenSlide-backed reader: Aperio SVS, generic/pyramidal TIFF and what else OpenSlide reads.

OpenSlide gives the metadata, associated images and thumbnail; where every level is a tiled TIFF page
that imagecodecs decodes (JPEG, deflate, ...), regions are decoded from the compressed tiles instead
(imaging/readers/tiled_tiff.py: several times faster, pixel-identical at integer level coordinates), and
JPEG tiles decode at 1/2, 1/4 or 1/8 in the DCT domain when the model reads coarser (read_region_scaled).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import openslide

from scanbridge.domain.errors import CorruptScanError, UnsupportedFormatError
from scanbridge.imaging.readers.base import ClosingReader, ScanMetadata, rgba_to_rgb
from scanbridge.imaging.readers.tiled_tiff import TiledPyramid


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def unsupported_tiff_reason(path: Path) -> str | None:
    """Why a TIFF cannot be decoded at all (an unknown compression), or None when it looks decodable."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return unknown_compression(tif)
    except (tifffile.TiffFileError, ValueError, OSError):
        return None


def unknown_compression(tif: Any) -> str | None:
    """`unsupported_tiff_reason` for an open TiffFile."""
    import tifffile

    known = {int(c) for c in tifffile.COMPRESSION}
    for page in tif.pages:
        code = int(getattr(page, "compression", 1))
        if code not in known:
            return f"the TIFF uses compression {code}, which no reader supports"
    return None


class OpenSlideReader(ClosingReader):
    """A ScanReader over openslide.OpenSlide; native errors become scanbridge errors."""

    def __init__(self, path: Path, *, format: str = "openslide") -> None:
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise UnsupportedFormatError("OpenSlide does not support this file") from exc
        except openslide.OpenSlideError as exc:
            reason = unsupported_tiff_reason(path)
            if reason:
                raise UnsupportedFormatError(reason) from exc
            raise CorruptScanError(f"OpenSlide could not open the file: {exc}") from exc
        props = dict(self._slide.properties)
        mpp_x, mpp_y = _float(props.get(openslide.PROPERTY_NAME_MPP_X)), _float(props.get(openslide.PROPERTY_NAME_MPP_Y))
        self.metadata = ScanMetadata(
            format=format,
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR),
            dimensions=tuple(self._slide.dimensions),  # type: ignore[arg-type]
            level_dimensions=tuple(tuple(d) for d in self._slide.level_dimensions),  # type: ignore[misc]
            level_downsamples=tuple(float(d) for d in self._slide.level_downsamples),
            mpp=(mpp_x, mpp_y) if mpp_x and mpp_y else None,
            objective_power=_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
            associated_images=tuple(sorted(self._slide.associated_images.keys())),
            properties={k: v for k, v in props.items() if len(v) < 512},
        )
        self.tiles: TiledPyramid | None = None

    def use_tiles(self, tiles: TiledPyramid) -> None:
        """Decode regions from `tiles` (whose level i is this slide's level i) instead of OpenSlide."""
        self.tiles = tiles
        self.metadata = replace(self.metadata, properties={**self.metadata.properties,
                                                           "scanbridge.decoder": "tifffile+imagecodecs"})

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 region; a decoding failure is SCAN_CORRUPT."""
        if self.tiles is not None:
            if not 0 <= level < len(self.metadata.level_downsamples):
                raise ValueError(f"level {level} out of range")
            ds = self.metadata.level_downsamples[level]
            return self.tiles.read(level, round(location[0] / ds), round(location[1] / ds), int(size[0]), int(size[1]))
        try:
            region = self._slide.read_region(location, level, size)
        except openslide.OpenSlideError as exc:
            raise CorruptScanError(f"the scan's image data cannot be decoded: {exc}") from exc
        return rgba_to_rgb(np.asarray(region))

    def read_region_scaled(self, location: tuple[int, int], level: int, size: tuple[int, int],
                           scale: int) -> np.ndarray | None:
        """See base.ScaledRegions: JPEG tiles decoded at 1/scale (None without the tile path: OpenSlide
        decodes at full size only)."""
        if self.tiles is None or not 0 <= level < len(self.metadata.level_downsamples):
            return None
        ds = self.metadata.level_downsamples[level]
        return self.tiles.read_scaled(level, round(location[0] / ds), round(location[1] / ds), int(size[0]),
                                      int(size[1]), scale)

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """Thumbnail read from the best level (decoding errors are SCAN_CORRUPT)."""
        w, h = self.metadata.dimensions
        scale = max(w / max_size, h / max_size, 1.0)
        try:
            thumb = self._slide.get_thumbnail((max(1, int(w / scale)), max(1, int(h / scale))))
        except openslide.OpenSlideError as exc:
            raise CorruptScanError(f"the scan's image data cannot be decoded: {exc}") from exc
        arr = np.asarray(thumb.convert("RGB"))
        return arr, w / arr.shape[1]

    def associated_image(self, name: str) -> np.ndarray:
        """The named associated image as RGB uint8 (KeyError if absent)."""
        try:
            img = self._slide.associated_images[name]
        except openslide.OpenSlideError as exc:
            raise CorruptScanError(f"the {name} image cannot be decoded: {exc}") from exc
        return rgba_to_rgb(np.asarray(img))

    def close(self) -> None:
        """Close the slide."""
        if self.tiles is not None:
            self.tiles.close()
        self._slide.close()
