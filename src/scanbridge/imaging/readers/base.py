"""The one reader contract every scan format implements (modelled on OpenSlide's API)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ScanMetadata:
    """What a reader knows about a scan, for the API and for picking pyramid levels."""

    format: str
    vendor: str | None
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    objective_power: float | None
    associated_images: tuple[str, ...] = ()
    transfer_syntax: str | None = None
    properties: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view (properties trimmed to short values)."""
        return {
            "format": self.format, "vendor": self.vendor,
            "width": self.dimensions[0], "height": self.dimensions[1],
            "level_count": len(self.level_dimensions),
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp_x": self.mpp[0] if self.mpp else None, "mpp_y": self.mpp[1] if self.mpp else None,
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_images),
            "transfer_syntax": self.transfer_syntax,
        }


class ScanReader(Protocol):
    """A whole-slide (or single) image: levels, metadata and RGB regions; a context manager that closes
    the file on exit (`with open_scan(paths) as reader:`, as openslide-python's `with OpenSlide(path)`)."""

    metadata: ScanMetadata

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) at `level`, top-left at level-0 `location`; outside the image is white."""

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """An RGB thumbnail no larger than max_size, and its downsample from level 0."""

    def associated_image(self, name: str) -> np.ndarray:
        """The named associated image (one of metadata.associated_images) as RGB uint8; KeyError if absent."""

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Self:
        """The reader itself."""

    def __exit__(self, *exc: object) -> None:
        """close()."""


class ClosingReader:
    """What every reader class inherits: `with reader:` closes it on exit."""

    def close(self) -> None:
        """Release the file (nothing to release here)."""

    def __enter__(self) -> Self:
        """The reader itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the reader."""
        self.close()


@runtime_checkable
class ScaledRegions(Protocol):
    """A reader that can decode a region straight at a fraction of its size (JPEG's DCT-domain scaling)."""

    def read_region_scaled(self, location: tuple[int, int], level: int, size: tuple[int, int],
                           scale: int) -> np.ndarray | None:
        """The region `read_region(location, level, size)` covers, decoded at 1/`scale`: RGB uint8
        (h // scale, w // scale, 3); None where this reader cannot for that region (the caller then reads it
        at full size and resizes)."""


#: an overlapping grid (the object models') is read in bands of columns whose windows span at most this many
#: level pixels, row by row within each band (`imaging.tiling.read_order`), so a reader's tile cache, which
#: keeps the tiles the next row of windows reads again, holds one band's width, not the level's: the same
#: on a slide 10,000 or 100,000 px wide
READ_BAND_PX = 8192

#: plausible pixel sizes (µm/px): from beyond the best optical microscopes to coarse overview scans. A file
#: that states one outside (a 72-dpi TIFF says 352.8 µm/px) has, for us, no pixel size.
MPP_RANGE = (0.05, 10.0)
#: the property that keeps a pixel size that was stated but set aside as implausible ("x,y" in µm/px)
MPP_REJECTED = "scanbridge.mpp_rejected"


#: the property listing DICOM series found beside the analysed one (comma-separated SeriesInstanceUIDs):
#: when files of several series come as one scan, the series holding the largest VOLUME image is the scan
SERIES_IGNORED = "scanbridge.series_ignored"


def series_note(meta: ScanMetadata) -> str | None:
    """What to tell about DICOM series that were ignored (None when the files held one series)."""
    ignored = [s for s in meta.properties.get(SERIES_IGNORED, "").split(",") if s]
    if not ignored:
        return None
    kept = meta.properties.get("dicom.SeriesInstanceUID", "?")
    return (f"{len(ignored) + 1} DICOM series in the files: analysed {kept} (it holds the largest image); "
            f"ignored {', '.join(ignored)}")


def with_sane_mpp(meta: ScanMetadata) -> ScanMetadata:
    """`meta` with its pixel size unknown (None) when it lies outside MPP_RANGE, the stated one kept in
    properties[MPP_REJECTED]; unchanged otherwise."""
    if meta.mpp is None or all(MPP_RANGE[0] <= v <= MPP_RANGE[1] for v in meta.mpp):
        return meta
    stated = f"{meta.mpp[0]:.6g},{meta.mpp[1]:.6g}"
    return replace(meta, mpp=None, properties={**meta.properties, MPP_REJECTED: stated})


def mpp_note(meta: ScanMetadata) -> str | None:
    """What to tell about a pixel size set aside as implausible (None when none was)."""
    stated = meta.properties.get(MPP_REJECTED)
    if not stated:
        return None
    x = stated.split(",")[0]
    return (f"unknown: the file states {x} µm/px, outside the plausible {MPP_RANGE[0]:g}-{MPP_RANGE[1]:g} "
            "µm/px, so no µm or mm² figures are given")


def best_level(downsamples: tuple[float, ...], target: float) -> int:
    """The level with the largest downsample not above `target` (level 0 when target <= 1)."""
    best = 0
    for i, ds in enumerate(downsamples):
        if ds <= target * 1.01:
            best = i
    return best


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite premultiplied RGBA (OpenSlide's output) onto white."""
    if rgba.shape[-1] == 3:
        return rgba
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = rgb + (255 - alpha)  # premultiplied: transparent pixels are (0,0,0,0) -> white
    return np.clip(out, 0, 255).astype(np.uint8)


def thumbnail_size(dimensions: tuple[int, int], max_size: int) -> tuple[int, int]:
    """The (w, h) of a thumbnail of an image of `dimensions` that fits in max_size (never upscaled)."""
    w, h = dimensions
    scale = max(w / max_size, h / max_size, 1.0)
    return max(1, int(w / scale)), max(1, int(h / scale))


def reduce_rgb(arr: np.ndarray, factor: int) -> np.ndarray:
    """An RGB uint8 array box-averaged over `factor` x `factor` blocks (Pillow's reduce: a partial last
    block averages the pixels it has)."""
    if factor == 1:
        return arr
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(arr), "RGB").reduce(factor))


def resize_rgb(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 array to (w, h) with an area-averaging filter."""
    if (arr.shape[1], arr.shape[0]) == size:
        return arr
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(arr), "RGB").resize(size, Image.Resampling.BOX)
    return np.asarray(img)
