"""Tissue detection on a thumbnail: optical density or saturation above background, cleaned up; the
share it covers and how reports write it."""

from __future__ import annotations

import cv2
import numpy as np

_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # scipy.ndimage's default structure (4-neighbours)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density per pixel (0 for white, ~3 for black); a 256-entry table per channel."""
    x = np.ascontiguousarray(rgb, dtype=np.uint8)
    if x.ndim != 3 or x.shape[2] != 3 or x.size == 0:
        return np.asarray(_OD_LUT[x[..., 0]] + _OD_LUT[x[..., 1]] + _OD_LUT[x[..., 2]])
    od = cv2.LUT(x, _OD_LUT)  # the same table, applied by OpenCV (twice numpy's speed); summed r + g + b
    return np.asarray(od[..., 0] + od[..., 1] + od[..., 2])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """(max - min) / 255 per pixel: 0 for greys, high for stained tissue."""
    x = np.asarray(rgb, dtype=np.uint8)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # uint8, no overflow
    return np.asarray(spread.astype(np.float32) * np.float32(1.0 / 255.0))


def tissue_mask(rgb: np.ndarray, *, min_od: float = 0.4, min_saturation: float = 0.1,
                min_area_px: int = 4) -> np.ndarray:
    """Boolean mask of tissue pixels in an RGB thumbnail (same rule as the built-in tissue model)."""
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)
    score = 6.0 * (optical_density(rgb) - min_od) + 15.0 * (saturation(rgb) - min_saturation)
    mask = (score > 0.0).view(np.uint8)
    # a binary closing by the 4-neighbour cross with nothing beyond the border (scipy.ndimage.binary_closing's,
    # border_value=0), kept with the mask; then components (4-connected) smaller than min_area_px dropped.
    # OpenCV, not scipy.ndimage: the same pixels (tests/unit/test_tissue.py compares them) in 1/3 of the time.
    closed = cv2.dilate(mask, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    mask |= np.asarray(cv2.erode(closed, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0), dtype=np.uint8)
    if min_area_px > 1:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4, ltype=cv2.CV_32S)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
        keep[0] = False
        return np.asarray(keep[labels])
    return mask.view(bool)


def tissue_fraction(mask: np.ndarray) -> float:
    """Share of True pixels in a boolean tissue mask (0 for an empty mask)."""
    return float(mask.mean()) if mask.size else 0.0


def percent_text(fraction: float) -> str:
    """A tissue share as every report writes it ('10.94 %'): QC's message, the summary, the artifacts."""
    return f"{fraction * 100:.2f} %"
