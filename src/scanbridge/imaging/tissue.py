"""Tissue detection on a thumbnail: optical density or saturation above background, cleaned up; the
share it covers and how reports write it."""

from __future__ import annotations

import functools
import math
import threading

import cv2
import numpy as np

_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # scipy.ndimage's default structure (4-neighbours)
_ROW3 = np.ones((1, 3), np.uint8)  # a pixel's three bytes, in a row of an RGB image seen as bytes
_FLOAT32_INF_BITS = 0x7F800000
CHUNK_PX = 1 << 15  # pixels per pass of the per-pixel steps (their float buffers stay in the cache)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density per pixel (0 for white, ~3 for black); a 256-entry table per channel."""
    x = np.ascontiguousarray(rgb, dtype=np.uint8)
    if x.ndim != 3 or x.shape[2] != 3 or x.size == 0:
        return np.asarray(_OD_LUT[x[..., 0]] + _OD_LUT[x[..., 1]] + _OD_LUT[x[..., 2]])
    return _od_into(x, np.empty(x.shape, np.float32), np.empty(x.shape[:2], np.float32))


def _od_into(x: np.ndarray, per_channel: np.ndarray, od: np.ndarray) -> np.ndarray:
    """optical_density of a contiguous (h, w, 3) uint8 image into `od`, through `per_channel` (h, w, 3)."""
    per_channel = cv2.LUT(x, _OD_LUT, dst=per_channel)  # the table, applied by OpenCV (twice numpy's speed)
    np.add(per_channel[..., 0], per_channel[..., 1], out=od)
    return np.add(od, per_channel[..., 2], out=od)  # (r + g) + b, as above


def channel_spread(rgb: np.ndarray) -> np.ndarray:
    """max - min of r, g, b per pixel (uint8)."""
    x = np.ascontiguousarray(rgb, dtype=np.uint8)
    if x.ndim != 3 or x.shape[2] != 3 or x.size == 0:
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        return np.asarray(np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b))  # no overflow
    return _spread_into(x, np.empty(x.shape[:2], np.uint8), np.empty(x.shape, np.uint8), np.empty(x.shape, np.uint8))


def _spread_into(x: np.ndarray, spread: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """channel_spread of a contiguous (h, w, 3) uint8 image into `spread`, through `hi` and `lo` (h, w, 3).

    The image as rows of bytes: a 1x3 max (min) filter centred on a pixel's green byte is the pixel's max
    (min) of r, g, b (OpenCV's SIMD morphology: 1/2 of numpy's time over the three strided channels)."""
    h, w = x.shape[:2]
    rows, hi, lo = x.reshape(h, 3 * w), hi.reshape(h, 3 * w), lo.reshape(h, 3 * w)
    hi = cv2.subtract(cv2.dilate(rows, _ROW3, dst=hi), cv2.erode(rows, _ROW3, dst=lo), dst=hi)
    np.copyto(spread, hi[:, 1::3])
    return spread


def saturation(rgb: np.ndarray) -> np.ndarray:
    """(max - min) / 255 per pixel: 0 for greys, high for stained tissue."""
    return _saturation_of(channel_spread(rgb))


def _saturation_of(spread: np.ndarray) -> np.ndarray:
    return np.asarray(spread.astype(np.float32) * np.float32(1.0 / 255.0))


def tissue_score(od: np.ndarray, sat: np.ndarray, min_od: float, min_saturation: float) -> np.ndarray:
    """The tissue rule's score of optical densities and saturations: tissue where it is > 0."""
    return np.asarray(6.0 * (od - min_od) + 15.0 * (sat - min_saturation))


@functools.lru_cache(maxsize=16)
def least_tissue_density(min_od: float, min_saturation: float) -> np.ndarray:
    """Per channel spread (0-255): the least float32 optical density whose `tissue_score` is > 0 (inf: none).

    The score, as float32 arithmetic computes it, never falls as the density grows (each operation rounds
    monotonically), so `score > 0` is exactly `od >= table[spread]`: one gather and one comparison per
    pixel instead of the saturation's and the score's five float passes. Found by bisection over the bit
    patterns of the non-negative float32 values (ordered as the values are); tests/unit/test_tissue.py
    checks the identity on every one of the 2^24 colours.
    """
    sat = _saturation_of(np.arange(256, dtype=np.uint8))

    def tissue(bits: np.ndarray) -> np.ndarray:
        return np.asarray(tissue_score(bits.view(np.float32), sat, min_od, min_saturation) > 0.0)

    lo = np.zeros(256, dtype=np.uint32)  # +0.0: no density is below it (white's -0.0 scores the same)
    hi = np.full(256, _FLOAT32_INF_BITS, dtype=np.uint32)
    at_zero = tissue(lo)
    for _ in range(32):  # the bit patterns span < 2^31: 31 halvings close every interval
        mid = lo + (hi - lo) // 2
        above = tissue(mid)
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    least = np.where(at_zero, np.float32(0.0), hi.view(np.float32)).astype(np.float32)  # inf: no density
    least.setflags(write=False)  # shared by every caller (cached)
    return least


class _Buffers:
    """Named working arrays, grown when a call needs more and otherwise reused."""

    def __init__(self) -> None:
        self._bytes: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        buf = self._bytes.get(name)
        if buf is None or buf.size < size:
            buf = self._bytes[name] = np.empty(size + size // 4, np.uint8)  # room for a strip's margins
        return buf[:size].view(dtype).reshape(shape)


class TissueMasker:
    """`tissue_mask` with fixed parameters, keeping its working arrays between calls.

    `strip_mask(rgb, TissueMasker())` masks an overview's strips with a few sets of arrays (one per thread
    masking at a time, handed from call to call) instead of fresh ones per strip: under the worker's malloc
    settings (inference/heap.py) every array of 1 MiB or more is a fresh mapping, and first touching its pages
    cost 2-3x the mask's arithmetic (docs/performance.md). Through `strip_mask` the sets are strip-sized
    (tiling.STRIP_PX pixels: ~5 MiB each), so `shared_masker()` keeps them for the process: the next scan's
    mask finds them touched.
    """

    def __init__(self, *, min_od: float = 0.4, min_saturation: float = 0.1, min_area_px: int = 4) -> None:
        self.min_area_px = min_area_px
        self._least = least_tissue_density(min_od, min_saturation)
        self._free: list[_Buffers] = []  # sets not in use; a call takes one (or makes one) and gives it back
        self._lock = threading.Lock()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """The boolean tissue mask of an (h, w, 3) RGB image (more channels: the first three)."""
        if rgb.size == 0:
            return np.zeros(rgb.shape[:2], dtype=bool)
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise ValueError(f"not an RGB image: shape {rgb.shape}")
        x = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
        with self._lock:
            buffers = self._free.pop() if self._free else _Buffers()
        try:
            return self._mask(x, buffers)
        finally:
            with self._lock:
                self._free.append(buffers)

    def _mask(self, x: np.ndarray, buffers: _Buffers) -> np.ndarray:
        """The mask of a contiguous (h, w, 3) uint8 image, worked out in `buffers` (a fresh array returned)."""
        h, w = x.shape[:2]
        mask = buffers.get("mask", (h, w), np.uint8)
        self._score_into(x, mask, buffers)
        # a binary closing by the 4-neighbour cross with nothing beyond the border (scipy.ndimage.binary_closing's,
        # border_value=0), kept with the mask; then components (4-connected) smaller than min_area_px dropped.
        # OpenCV, not scipy.ndimage: the same pixels (tests/unit/test_tissue.py compares them) in 1/3 of the time.
        closed = cv2.dilate(mask, _CROSS, dst=buffers.get("closed", (h, w), np.uint8),
                            borderType=cv2.BORDER_CONSTANT, borderValue=0)
        opened = cv2.erode(closed, _CROSS, dst=buffers.get("eroded", (h, w), np.uint8),
                           borderType=cv2.BORDER_CONSTANT, borderValue=0)
        np.bitwise_or(mask, opened, out=mask)
        if self.min_area_px > 1:
            # labels without OpenCV's statistics (boxes and centroids cost 3x the labelling), as int64 for
            # np.bincount and np.take (each would otherwise make its own int64 copy: fresh pages every call)
            count, labels = cv2.connectedComponents(mask, buffers.get("labels", (h, w), np.int32), 4, cv2.CV_32S)
            wide = buffers.get("labels64", (h, w), np.int64)
            np.copyto(wide, labels)
            keep = np.bincount(wide.reshape(-1), minlength=count) >= self.min_area_px
            keep[0] = False  # the background
            if not keep[1:].all():  # some component is small: gathered away (else the mask is the answer)
                return np.asarray(np.take(keep.view(np.uint8), wide).view(bool))
        return mask.view(bool).copy()

    def _score_into(self, x: np.ndarray, mask: np.ndarray, buffers: _Buffers) -> None:
        """`tissue_score(optical_density, saturation) > 0` of `x` into `mask` (as `od >= least[spread]`, see
        least_tissue_density), CHUNK_PX pixels at a time."""
        h, w = x.shape[:2]
        step = max(1, CHUNK_PX // w)
        n = min(step, h)
        per_channel, od = buffers.get("per_channel", (n, w, 3), np.float32), buffers.get("od", (n, w), np.float32)
        hi, lo = buffers.get("hi", (n, w, 3), np.uint8), buffers.get("lo", (n, w, 3), np.uint8)
        spread, floor_buf = buffers.get("spread", (n, w), np.uint8), buffers.get("floor", (n, w), np.float32)
        for y0 in range(0, h, step):
            y1 = min(h, y0 + step)
            k = y1 - y0
            part = x[y0:y1]
            dens = _od_into(part, per_channel[:k], od[:k])
            floor = cv2.LUT(_spread_into(part, spread[:k], hi[:k], lo[:k]), self._least, dst=floor_buf[:k])
            np.greater_equal(dens, floor, out=mask[y0:y1].view(bool))


@functools.cache
def shared_masker() -> TissueMasker:
    """The process's masker with the default parameters (the scan's mask: imaging/scan.py), its arrays kept."""
    return TissueMasker()


def tissue_mask(rgb: np.ndarray, *, min_od: float = 0.4, min_saturation: float = 0.1,
                min_area_px: int = 4) -> np.ndarray:
    """Boolean mask of tissue pixels in an RGB thumbnail (same rule as the built-in tissue model)."""
    return TissueMasker(min_od=min_od, min_saturation=min_saturation, min_area_px=min_area_px)(rgb)


def tissue_fraction(mask: np.ndarray) -> float:
    """Share of True pixels in a boolean tissue mask (0 for an empty mask)."""
    return float(mask.mean()) if mask.size else 0.0


def percent_text(fraction: float) -> str:
    """A tissue share as every report writes it ('10.94 %'): QC's message, the summary, the artifacts."""
    return f"{fraction * 100:.2f} %"
