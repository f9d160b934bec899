"""The one rasteriser: polygons in level-0 pixels -> a label mask (labels.npy, DICOM SEG, crops, evaluation).

Pixel (i, j) of a mask at downsample d whose pixel (0, 0) sits at level-0 `origin` covers level-0
[ox + j*d, ox + (j+1)*d) x [oy + i*d, oy + (i+1)*d); it takes an object's value when its centre is inside
one of the object's polygons (even-odd over the exterior and its holes), later objects on top.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

import numpy as np

from scanbridge.domain import geojson as gj

SEG_MAX_SIDE = 4096  # the SEG's total pixel matrix is level 0 downsampled by a power of two to fit
#: an object: its polygons, each [exterior, *holes], each ring a sequence of (x, y) level-0 positions
Shape = Sequence[Sequence[Any]]


def seg_downsample(width: int, height: int, max_side: int = SEG_MAX_SIDE) -> int:
    """The smallest power of two that brings the larger side to at most `max_side`."""
    d = 1
    while max(width, height) / d > max_side:
        d *= 2
    return d


def feature_shapes(features: Iterable[dict[str, Any]]) -> Iterator[list[gj.PolygonRings]]:
    """Each feature's polygons ([] for points, lines and heat maps), in order, one feature at a time."""
    for f in features:
        yield gj.polygons(gj.geometry(f))


def rasterize(shapes: Iterable[Shape], size: tuple[int, int], *, values: Sequence[int] | None = None,
              downsample: float = 1.0, origin: tuple[float, float] = (0.0, 0.0),
              dtype: Any = np.uint32) -> np.ndarray:
    """An (h, w) mask of `size` (w, h): shape n filled with `values[n]` (default n + 1), holes left as they were.

    `shapes` is read once, one shape at a time. Written here rather than taken from scikit-image
    (`draw.polygon` tests every pixel of the bounding box against every vertex: 2 s for three tissue
    outlines) or OpenCV/Pillow (their fills include the outline's pixels, so a mask would not match the
    polygons' areas).
    """
    w, h = size
    out = np.zeros((h, w), dtype=dtype)
    for n, shape in enumerate(shapes):
        fill(out, shape, values[n] if values is not None else n + 1, downsample=downsample, origin=origin)
    return out


def fill(out: np.ndarray, shape: Shape, value: int, *, downsample: float = 1.0,
         origin: tuple[float, float] = (0.0, 0.0)) -> None:
    """Draw one shape into the mask `out` (as `rasterize` draws each): its pixels set to `value`."""
    h, w = out.shape[:2]
    shift = np.asarray(origin, dtype=np.float64) / downsample
    for poly in shape:
        rings = [np.asarray(r, dtype=np.float64)[:, :2] / downsample - 0.5 - shift for r in poly if len(r) >= 3]
        for row, c0, c1 in zip(*_spans(rings, h, w), strict=True):
            out[row, c0:c1] = value


def _spans(rings: list[np.ndarray], h: int, w: int) -> tuple[list[int], list[int], list[int]]:
    """Row spans [c0, c1) of the pixels whose centres (integer x, y) are inside `rings` (even-odd).

    Every edge crosses the scan lines y = i with min(y0, y1) <= i < max(y0, y1) (half-open, so a vertex
    on a line is counted once); per row the sorted crossings pair up into spans.
    """
    edges = [np.column_stack([r, np.roll(r, -1, axis=0)]) for r in rings]  # x0, y0, x1, y1
    if not edges:
        return [], [], []
    e = np.concatenate(edges)
    x0, y0, x1, y1 = e[:, 0], e[:, 1], e[:, 2], e[:, 3]
    lo = np.clip(np.ceil(np.minimum(y0, y1)), 0, h).astype(np.int64)
    hi = np.clip(np.ceil(np.maximum(y0, y1)), 0, h).astype(np.int64)
    n = np.maximum(hi - lo, 0)
    if not n.sum():
        return [], [], []
    idx = np.repeat(np.arange(len(e)), n)
    rows = lo[idx] + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    t = (rows - y0[idx]) / (y1[idx] - y0[idx])
    xs = x0[idx] + t * (x1[idx] - x0[idx])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # crossings pair up within each row (even count per row by construction of the half-open rule)
    starts, ends = xs[0::2], xs[1::2]
    span_rows = rows[0::2]
    c0 = np.clip(np.ceil(starts), 0, w).astype(np.int64)
    c1 = np.clip(np.floor(ends) + 1, 0, w).astype(np.int64)
    keep = c1 > c0
    return span_rows[keep].tolist(), c0[keep].tolist(), c1[keep].tolist()


def label_mask(features: Iterable[dict[str, Any]], width: int, height: int, max_side: int) -> np.ndarray:
    """The int32 label mask of `features` (read once, one at a time) over a width x height scan,
    downsampled by a power of two to fit `max_side`: feature n (from 1) is label n, 0 is background."""
    d = seg_downsample(width, height, max_side)
    size = (math.ceil(width / d), math.ceil(height / d))
    return rasterize(feature_shapes(features), size, downsample=d, dtype=np.int32)


def write_npy(out: IO[bytes], array: np.ndarray) -> None:
    """The array as a .npy file into `out` (np.load reads it back, allow_pickle not needed)."""
    np.save(out, array, allow_pickle=False)
