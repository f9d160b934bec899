"""tifffile-based reader for TIFFs OpenSlide refuses or misreads: stripped images, OME-TIFF and SubIFD
pyramids (tifffile's series levels), WebP / JPEG 2000 / JPEG XL / zstd tiles (imagecodecs).

Tiled levels are read tile by tile (imaging/readers/tiled_tiff.py); only untiled levels are decoded whole.
"""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from scanbridge.domain.errors import CorruptScanError, ScanbridgeError, UnsupportedFormatError
from scanbridge.imaging.readers.base import (
    ClosingReader,
    ScanMetadata,
    best_level,
    resize_rgb,
    thumbnail_size,
)
from scanbridge.imaging.readers.tiled_tiff import TiledPyramid, open_pyramid

MAX_LEVEL_BYTES = 2 * 1024**3  # the whole level is decoded into memory: refuse what cannot fit
_UNIT_TO_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_mpp(xml: str | None) -> tuple[float, float] | None:
    """(x, y) µm per pixel from the first OME Pixels element, or None."""
    if not xml:
        return None
    m = re.search(r"<Pixels\b[^>]*>", xml)
    if not m:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(0)))
    out: list[float] = []
    for axis in ("X", "Y"):
        try:
            value = float(attrs[f"PhysicalSize{axis}"])
        except (KeyError, ValueError):
            return None
        value *= _UNIT_TO_UM.get(attrs.get(f"PhysicalSize{axis}Unit", "µm"), float("nan"))
        if not math.isfinite(value) or value <= 0:
            return None
        out.append(value)
    return out[0], out[1]


def _resolution_mpp(page: Any) -> tuple[float, float] | None:
    try:
        unit = int(page.resolutionunit)
        xres, yres = page.resolution
    except (AttributeError, TypeError, ValueError):
        return None
    per = {3: 1e4, 2: 25400.0}.get(unit)
    if per is None or not xres or not yres:
        return None
    return per / float(xres), per / float(yres)


def to_rgb8(arr: np.ndarray, axes: str) -> np.ndarray:
    """Reduce a tifffile array with `axes` to one RGB uint8 (h, w, 3) plane."""
    index: list[Any] = []
    keep: list[str] = []
    for i, ax in enumerate(axes):
        if ax in "YX" or (ax in "SC" and arr.shape[i] in (3, 4) and not any(k in "SC" for k in keep)):
            index.append(slice(None))
            keep.append(ax)
        else:
            index.append(0)
    arr = arr[tuple(index)]
    order = [keep.index("Y"), keep.index("X")] + [i for i, k in enumerate(keep) if k not in "YX"]
    arr = arr.transpose(order)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            hi = float(np.nanmax(arr)) or 1.0
            arr = np.clip(arr / (max(1.0, hi)) * 255.0, 0, 255)
        elif arr.dtype.kind == "b":
            arr = arr.astype(np.uint8) * 255
        else:
            arr = arr.astype(np.int64) >> max(arr.dtype.itemsize * 8 - 8, 0)
        arr = arr.astype(np.uint8)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:  # unassociated alpha: composite onto white
        rgb = arr[:, :, :3].astype(np.float32)
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        return np.clip(rgb * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, :3])


class TiffFileReader(ClosingReader):
    """A ScanReader over tifffile: tiled levels read tile by tile, untiled ones decoded whole and kept."""

    def __init__(self, path: Path) -> None:
        import tifffile

        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            self._levels = list(series.levels)
            self._axes = [str(lv.axes) for lv in self._levels]
            dims = []
            for lv, axes in zip(self._levels, self._axes, strict=True):
                if "Y" not in axes or "X" not in axes:
                    raise UnsupportedFormatError(f"the TIFF image has no Y/X axes ({axes})")
                dims.append((int(lv.shape[axes.index("X")]), int(lv.shape[axes.index("Y")])))
        except ScanbridgeError:
            raise
        except Exception as exc:
            raise CorruptScanError(f"the TIFF cannot be parsed: {exc}") from exc
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._tiles: TiledPyramid | None = open_pyramid(path, tuple(dims), self._tif)
        w0, h0 = dims[0]
        is_ome = bool(self._tif.is_ome)
        mpp = ome_mpp(self._tif.ome_metadata) if is_ome else None
        mpp = mpp or _resolution_mpp(self._tif.pages.first)
        self.metadata = ScanMetadata(
            format="ome-tiff" if is_ome else "tiff", vendor=None,
            dimensions=dims[0], level_dimensions=tuple(dims),
            level_downsamples=tuple((w0 / w + h0 / h) / 2.0 for w, h in dims),
            mpp=mpp, objective_power=None,
            properties={"scanbridge.reader": "tifffile", "tiff.axes": self._axes[0],
                        "scanbridge.decoder": "tifffile+imagecodecs" if self._tiles else "tifffile (whole level)",
                        "tiff.compression": str(getattr(self._tif.pages.first, "compression", ""))},
        )

    def _level_array(self, level: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(level)
            if hit is not None:
                return hit
            lv = self._levels[level]
            if int(np.prod(lv.shape)) * lv.dtype.itemsize > MAX_LEVEL_BYTES:
                raise UnsupportedFormatError("the TIFF level is too large for the plain-image reader")
            try:
                arr = to_rgb8(lv.asarray(), self._axes[level])
            except ScanbridgeError:
                raise
            except Exception as exc:
                raise CorruptScanError(f"the TIFF image data cannot be decoded: {exc}") from exc
            self._cache[level] = arr
            return arr

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) at `level`, top-left at level-0 `location`; outside the image is white."""
        if not 0 <= level < len(self._levels):
            raise ValueError(f"level {level} out of range")
        w, h = int(size[0]), int(size[1])
        ds = self.metadata.level_downsamples[level]
        if self._tiles is not None:
            return self._tiles.read(level, round(location[0] / ds), round(location[1] / ds), w, h)
        img = self._level_array(level)
        lx, ly = math.floor(location[0] / ds), math.floor(location[1] / ds)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, img.shape[1]), min(ly + h, img.shape[0])
        if x0 < x1 and y0 < y1:
            out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = img[y0:y1, x0:x1]
        return out

    def read_region_scaled(self, location: tuple[int, int], level: int, size: tuple[int, int],
                           scale: int) -> np.ndarray | None:
        """See base.ScaledRegions: JPEG tiles decoded at 1/scale (None for other codecs and untiled levels)."""
        if self._tiles is None or not 0 <= level < len(self._levels):
            return None
        ds = self.metadata.level_downsamples[level]
        return self._tiles.read_scaled(level, round(location[0] / ds), round(location[1] / ds), int(size[0]),
                                       int(size[1]), scale)

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """An RGB thumbnail no larger than max_size, and its downsample from level 0."""
        w, h = self.metadata.dimensions
        tw, th = thumbnail_size((w, h), max_size)
        level = best_level(self.metadata.level_downsamples, w / tw)
        if self._tiles is not None:
            lw, lh = self.metadata.level_dimensions[level]
            whole = self._tiles.read(level, 0, 0, lw, lh)
        else:
            whole = self._level_array(level)
        thumb = resize_rgb(whole, (tw, th))
        return thumb, w / thumb.shape[1]

    def associated_image(self, name: str) -> np.ndarray:
        """No associated images are exposed for plain TIFFs."""
        raise KeyError(name)

    def close(self) -> None:
        """Close the file and drop decoded levels."""
        if self._tiles is not None:
            self._tiles.close()
        self._tif.close()
        self._cache.clear()
