"""Tissue detection on a thumbnail: optical density or saturation above background, cleaned up."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density per pixel (0 for white, ~3 for black)."""
    x = rgb.astype(np.float32)
    return np.asarray(-np.log((x + 1.0) / 256.0).sum(axis=-1))


def saturation(rgb: np.ndarray) -> np.ndarray:
    """(max - min) / 255 per pixel: 0 for greys, high for stained tissue."""
    x = rgb.astype(np.int16)
    return np.asarray((x.max(axis=-1) - x.min(axis=-1)).astype(np.float32) / 255.0)


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
