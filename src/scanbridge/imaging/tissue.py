"""Tissue detection on a thumbnail: optical density or saturation above background, cleaned up; the
share it covers and how reports write it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density per pixel (0 for white, ~3 for black); a 256-entry table per channel."""
    x = np.asarray(rgb, dtype=np.uint8)
    return np.asarray(_OD_LUT[x[..., 0]] + _OD_LUT[x[..., 1]] + _OD_LUT[x[..., 2]])


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
    mask = score > 0.0
    mask = ndimage.binary_closing(mask, iterations=1, border_value=0) | mask
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = sizes >= min_area_px
        mask = keep[labels]
    return np.asarray(mask, dtype=bool)


def tissue_fraction(mask: np.ndarray) -> float:
    """Share of True pixels in a boolean tissue mask (0 for an empty mask)."""
    return float(mask.mean()) if mask.size else 0.0


def percent_text(fraction: float) -> str:
    """A tissue share as every report writes it ('10.94 %'): QC's message, the summary, the artifacts."""
    return f"{fraction * 100:.2f} %"
