"""Segmentation quality against ground truth: AP at IoU 0.5 (as cellpose defines it) and pixel Jaccard.

Objects are compared as label masks (0 = background, one integer per object). GeoJSON
FeatureCollections are rasterised first: every Polygon / MultiPolygon feature becomes one label on a
grid that covers both sets' bounds (pixel j has its centre at coordinate j + 0.5, the convention of
the models' level-0 GeoJSON); points, lines and heat-map GeometryCollections are not objects.

Matching: the IoU of every overlapping (pred, gt) pair, then one-to-one assignment with the Hungarian
algorithm (scipy.optimize.linear_sum_assignment) maximising the number of pairs with IoU >= 0.5 and,
among those, their IoU (cellpose's `_true_positive` cost). Then

- ap50 = TP / (TP + FP + FN) (cellpose's "average precision" at one threshold; 1.0 when both are empty)
- jaccard = |pred foreground AND gt foreground| / |pred foreground OR gt foreground| (1.0 when both empty)
- mean_matched_iou = the mean IoU of the TP pairs (None without any)
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanbridge.domain import geojson as gj
from scanbridge.domain.errors import ValidationError
from scanbridge.exports.raster import rasterize

IOU_THRESHOLD = 0.5
MAX_GRID_PIXELS = 25_000_000  # a rasterisation grid larger than this is refused (label memory)
_EPS = 1e-9

Source = np.ndarray | dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """The comparison of a prediction with its ground truth."""

    ap50: float
    jaccard: float
    tp: int
    fp: int
    fn: int
    n_pred: int
    n_gt: int
    mean_matched_iou: float | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (floats rounded to 6 digits)."""
        out = asdict(self)
        for key in ("ap50", "jaccard", "mean_matched_iou"):
            if out[key] is not None:
                out[key] = round(float(out[key]), 6)
        return out


# --- label masks ---------------------------------------------------------------------------------


def as_labels(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """A 2-D label image as int64 with labels 1..n (consecutive); bool masks become connected components."""
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValidationError(f"{name} must be a 2-D label mask, got shape {list(arr.shape)}")
    if arr.dtype == np.bool_:
        from skimage.measure import label

        return np.asarray(label(arr, connectivity=1), dtype=np.int64)  # type: ignore[no-untyped-call]
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValidationError(f"{name} must hold integer labels (0 = background)")
    elif arr.dtype.kind not in "iu":
        raise ValidationError(f"{name} must hold integer labels, not {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValidationError(f"{name} has negative labels")
    if arr.size == 0:
        return np.zeros(arr.shape, np.int64)
    top = int(arr.max())
    if top <= max(4 * arr.size, 1 << 16):  # a lookup table over the label values: no sort
        present = np.bincount(arr.ravel().astype(np.int64), minlength=top + 1) > 0
        lut = np.cumsum(present) - (1 if present[0] else 0)  # background stays 0, labels become 1..n
        return np.asarray(lut[arr.astype(np.int64)], dtype=np.int64)
    values, inverse = np.unique(arr, return_inverse=True)
    relabelled = inverse.reshape(arr.shape).astype(np.int64)
    if values[0] != 0:  # no background pixel: labels start at 1 anyway
        relabelled += 1
    return relabelled


def evaluate_masks(pred: np.ndarray, gt: np.ndarray, *, threshold: float = IOU_THRESHOLD) -> Evaluation:
    """Compare two label masks of the same shape."""
    p, g = as_labels(pred, "pred"), as_labels(gt, "gt")
    if p.shape != g.shape:
        raise ValidationError(f"pred and gt masks differ in shape: {list(p.shape)} vs {list(g.shape)}")
    n_pred, n_gt = int(p.max(initial=0)), int(g.max(initial=0))
    area_p = np.bincount(p.ravel(), minlength=n_pred + 1)
    area_g = np.bincount(g.ravel(), minlength=n_gt + 1)
    both = (p > 0) & (g > 0)
    # sparse overlaps: one key per (pred, gt) pair that shares pixels
    keys, inter = np.unique(p[both] * (n_gt + 1) + g[both], return_counts=True)
    pi, gi = keys // (n_gt + 1), keys % (n_gt + 1)
    iou = inter / (area_p[pi] + area_g[gi] - inter)
    tp, matched = _match(pi, gi, iou, threshold)
    fg_union = int(np.count_nonzero((p > 0) | (g > 0)))
    jaccard = float(np.count_nonzero(both)) / fg_union if fg_union else 1.0
    fp, fn = n_pred - tp, n_gt - tp
    denom = tp + fp + fn
    return Evaluation(ap50=tp / denom if denom else 1.0, jaccard=jaccard, tp=tp, fp=fp, fn=fn, n_pred=n_pred,
                      n_gt=n_gt, mean_matched_iou=float(np.mean(matched)) if matched else None)


def _match(pi: np.ndarray, gi: np.ndarray, iou: np.ndarray, threshold: float) -> tuple[int, list[float]]:
    """Hungarian one-to-one matching over the objects that have a candidate pair (IoU >= threshold)."""
    cand = iou >= threshold - _EPS
    if not cand.any():
        return 0, []
    from scipy.optimize import linear_sum_assignment

    rows = np.unique(pi[cand])
    cols = np.unique(gi[cand])
    r_index = {int(v): i for i, v in enumerate(rows)}
    c_index = {int(v): i for i, v in enumerate(cols)}
    sub = np.zeros((len(rows), len(cols)))
    for a, b, v in zip(pi.tolist(), gi.tolist(), iou.tolist(), strict=True):
        if a in r_index and b in c_index:
            sub[r_index[a], c_index[b]] = v
    n_min = min(sub.shape)
    # cellpose's cost: first as many pairs over the threshold as possible, then the highest IoU among them
    cost = -(sub >= threshold - _EPS).astype(np.float64) - sub / (2 * n_min)
    r, c = linear_sum_assignment(cost)
    hits = sub[r, c] >= threshold - _EPS
    return int(hits.sum()), [float(v) for v in sub[r, c][hits]]


# --- GeoJSON ----------------------------------------------------------------------------------


def _features(fc: Any, name: str) -> list[dict[str, Any]]:
    single = isinstance(fc, dict) and fc.get("type") == "Feature"
    if not single and not (isinstance(fc, dict) and fc.get("type") == "FeatureCollection"
                           and isinstance(fc.get("features"), list)):
        raise ValidationError(f"{name} must be a GeoJSON FeatureCollection")
    return list(gj.features(fc))


def _polygons(feature: dict[str, Any]) -> list[list[np.ndarray]]:
    """The feature's polygons, each as [exterior ring, holes...] of (k, 2) x, y arrays; [] when not polygonal."""
    out: list[list[np.ndarray]] = []
    try:
        for poly in gj.polygons(gj.geometry(feature)):
            rings = [np.asarray(ring, dtype=np.float64)[:, :2] for ring in poly]
            if rings and len(rings[0]) >= 3 and all(np.all(np.isfinite(r)) for r in rings):
                out.append(rings)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValidationError(f"feature {feature.get('id', '?')} has malformed polygon coordinates") from exc
    return out


def geojson_objects(fc: Any, name: str = "geojson") -> list[list[list[np.ndarray]]]:
    """One entry per polygonal feature (its polygons), in order."""
    objects = [_polygons(f) for f in _features(fc, name)]
    return [o for o in objects if o]


def bounds_of(objects: list[list[list[np.ndarray]]]) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) over every exterior ring, or None when there are none."""
    rings = [poly[0] for obj in objects for poly in obj]
    if not rings:
        return None
    pts = np.concatenate(rings)
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def rasterise(objects: list[list[list[np.ndarray]]], origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A label mask of `shape` (h, w) whose pixel (0, 0) is at `origin` (x, y): object i gets label i + 1.

    A pixel belongs to a polygon when its centre (j + 0.5) is inside (`exports/raster.py`, the one
    rasteriser); a hole leaves what lay under it; a later object overwrites an earlier one where they overlap.
    """
    return rasterize(objects, (shape[1], shape[0]), origin=origin, dtype=np.int32)


def evaluate(pred: Source, gt: Source, *, threshold: float = IOU_THRESHOLD,
             max_pixels: int = MAX_GRID_PIXELS) -> Evaluation:
    """Compare a prediction with ground truth, each a label mask (ndarray) or a GeoJSON FeatureCollection.

    Two GeoJSONs are rasterised onto a grid covering both; GeoJSON against a mask is rasterised onto the
    mask's grid (origin 0, 0).
    """
    if isinstance(pred, np.ndarray) and isinstance(gt, np.ndarray):
        return evaluate_masks(pred, gt, threshold=threshold)
    if isinstance(pred, np.ndarray):  # GeoJSON gt on the pred mask's grid
        labels = as_labels(pred, "pred")
        return evaluate_masks(labels, rasterise(geojson_objects(gt, "gt"), (0, 0), labels.shape),
                              threshold=threshold)
    if isinstance(gt, np.ndarray):  # GeoJSON pred on the gt mask's grid
        labels = as_labels(gt, "gt")
        return evaluate_masks(rasterise(geojson_objects(pred, "pred"), (0, 0), labels.shape), labels,
                              threshold=threshold)
    p_obj, g_obj = geojson_objects(pred, "pred"), geojson_objects(gt, "gt")
    boxes = [b for b in (bounds_of(p_obj), bounds_of(g_obj)) if b is not None]
    if not boxes:
        return evaluate_masks(np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32), threshold=threshold)
    x0 = math.floor(min(b[0] for b in boxes)) - 1
    y0 = math.floor(min(b[1] for b in boxes)) - 1
    x1 = math.ceil(max(b[2] for b in boxes)) + 1
    y1 = math.ceil(max(b[3] for b in boxes)) + 1
    shape = (y1 - y0, x1 - x0)
    if shape[0] * shape[1] > max_pixels:
        raise ValidationError(f"the objects span {shape[1]}x{shape[0]} px; the rasterisation limit is "
                              f"{max_pixels:,} pixels", details={"width": shape[1], "height": shape[0],
                                                                 "max_pixels": max_pixels})
    return evaluate_masks(rasterise(p_obj, (x0, y0), shape), rasterise(g_obj, (x0, y0), shape),
                          threshold=threshold)


# --- inputs ------------------------------------------------------------------------------------


def load_npy(data: bytes, name: str = "mask") -> np.ndarray:
    """A label mask from .npy bytes (no pickles)."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValidationError(f"{name} is not a .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise ValidationError(f"{name} must be a single .npy array")
    return arr


def load_source(path: str | Path) -> Source:
    """A label mask (.npy) or a GeoJSON FeatureCollection (.geojson / .json, or a result body with one)."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix.lower() == ".npy" or data[:6] == b"\x93NUMPY":
        return load_npy(data, path.name)
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{path.name} is neither a .npy label mask nor GeoJSON") from exc
    if isinstance(doc, dict) and doc.get("type") != "FeatureCollection" and isinstance(doc.get("geojson"), dict):
        doc = doc["geojson"]  # an /v1/infer answer or a ScanResult
    if not isinstance(doc, dict):
        raise ValidationError(f"{path.name} is not a GeoJSON FeatureCollection")
    return doc
