"""An in-memory ScanReader over one RGB image (single level), for synchronous small-image inference.

`decode_image` turns uploaded bytes (PNG, JPEG, TIFF) into RGB uint8, refusing images larger than a
pixel cap *before* their pixels are decoded; `MemoryReader` serves that array through the same
`ScanReader` contract the slide readers implement, so `analyze_scan` runs on it unchanged.
"""

from __future__ import annotations

import io

import numpy as np

from scanbridge.domain.errors import ValidationError
from scanbridge.imaging.readers.base import ClosingReader, ScanMetadata, resize_rgb, thumbnail_size

FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class MemoryReader(ClosingReader):
    """A ScanReader over an RGB uint8 (h, w, 3) array: one level, `mpp` optional (µm per pixel)."""

    def __init__(self, rgb: np.ndarray, *, mpp: float | None = None, fmt: str = "memory") -> None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 (h, w, 3) array, got {rgb.dtype} {rgb.shape}")
        if mpp is not None and not mpp > 0:
            raise ValueError("mpp must be > 0")
        self._rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        self.metadata = ScanMetadata(format=fmt, vendor=None, dimensions=(w, h), level_dimensions=((w, h),),
                                     level_downsamples=(1.0,), mpp=(mpp, mpp) if mpp else None,
                                     objective_power=None)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) at level 0, top-left at `location`; outside the image is white."""
        if level != 0:
            raise ValueError(f"level {level} does not exist (this image has one level)")
        x, y = location
        w, h = size
        src_h, src_w = self._rgb.shape[:2]
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, src_w), min(y + h, src_h)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._rgb[y0:y1, x0:x1]
        return out

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """An RGB thumbnail no larger than max_size (area-averaged), and its downsample from level 0."""
        w, h = self.metadata.dimensions
        size = thumbnail_size((w, h), max_size)
        return resize_rgb(self._rgb, size), max(w / size[0], h / size[1])

    def associated_image(self, name: str) -> np.ndarray:
        """An in-memory image has no associated images."""
        raise KeyError(name)

    def close(self) -> None:
        """Nothing to release."""


def decode_image(data: bytes, *, max_side: int) -> tuple[np.ndarray, str]:
    """Decode PNG / JPEG / TIFF bytes to RGB uint8 and the format name; ValidationError when not an image
    or when either side is larger than `max_side` (checked from the header, before decoding pixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if data[:4] in TIFF_MAGIC:  # a TIFF Pillow cannot parse (e.g. BigTIFF): tifffile
            return _tiff_rgb(data, max_side), "tiff"
        raise ValidationError("the file is not a PNG, JPEG or TIFF image") from exc
    fmt = FORMATS.get(str(img.format))
    if fmt is None:
        raise ValidationError(f"unsupported image format {img.format!r}: send PNG, JPEG or TIFF",
                              details={"format": img.format})
    w, h = img.size
    if w < 1 or h < 1 or max(w, h) > max_side:
        raise ValidationError(f"the image is {w}x{h} px; the limit is {max_side}x{max_side}",
                              details={"width": w, "height": h, "max_side": max_side})
    try:
        return _to_rgb(img), fmt
    except (OSError, ValueError, SyntaxError) as exc:
        if fmt == "tiff":  # sample formats Pillow cannot decode (float, 16-bit RGB, planar...): tifffile
            return _tiff_rgb(data, max_side), fmt
        raise ValidationError(f"the {fmt.upper()} image cannot be decoded: {exc}") from exc


def _to_rgb(img: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: as the TIFF slide reader does
        from scanbridge.imaging.readers.tiff_reader import to_rgb8

        grey = np.asarray(img)
        if grey.dtype.kind == "i" and grey.min(initial=0) >= 0 and grey.max(initial=0) < 65536:
            grey = grey.astype(np.uint16)  # 16-bit PNGs open as 32-bit "I"
        return to_rgb8(grey, "YX")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _tiff_rgb(data: bytes, max_side: int) -> np.ndarray:
    import tifffile

    from scanbridge.imaging.readers.tiff_reader import to_rgb8

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            dims = dict(zip(series.axes, series.shape, strict=True))
            w, h = int(dims.get("X", 0)), int(dims.get("Y", 0))
            if w < 1 or h < 1 or max(w, h) > max_side:
                raise ValidationError(f"the image is {w}x{h} px; the limit is {max_side}x{max_side}",
                                      details={"width": w, "height": h, "max_side": max_side})
            return to_rgb8(series.asarray(), series.axes)
    except ValidationError:
        raise
    except Exception as exc:  # tifffile raises many kinds on corrupt data
        raise ValidationError(f"the TIFF image cannot be decoded: {exc}") from exc
