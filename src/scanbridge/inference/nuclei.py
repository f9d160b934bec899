"""Nuclei from per-pixel probability maps: threshold, split touching nuclei, measure each one.

Works on one model window at a time (model pixels). Touching nuclei are split by a marker watershed
on the distance transform (markers: the distance map's local maxima, at least `min_distance` apart).
Coordinates here are *continuous* window coordinates: pixel (row i, col j) covers [j, j+1) x [i, i+1),
so its centre is (j + 0.5, i + 0.5). inference/objects.py maps them to level-0 pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import measure
from skimage.feature import peak_local_max
from skimage.segmentation import watershed


@dataclass(frozen=True)
class NucleusParams:
    """How to turn a probability map into nuclei (sizes in model pixels)."""

    threshold: float = 0.5
    min_distance: int = 4
    min_area_px: float = 12.0
    max_area_px: float = 2000.0
    smooth_sigma: float = 1.0
    split_area_px: float = 150.0  # components larger than this may be several touching nuclei
    positive_threshold: float = 0.5


@dataclass
class Nucleus:
    """One segmented nucleus in continuous window coordinates (model pixels)."""

    cx: float
    cy: float
    contour: np.ndarray  # (k, 2) x, y; closed ring not repeated
    area: float
    perimeter: float
    eccentricity: float
    solidity: float
    extent: float
    major_axis: float
    minor_axis: float
    orientation: float  # radians, scikit-image's convention (from the row axis, counter-clockwise)
    stain_means: list[float] = field(default_factory=list)
    positive_score: float | None = None  # mean positive-class probability over the nucleus


def split_nuclei(prob: np.ndarray, params: NucleusParams) -> np.ndarray:
    """Label image (int32, 0 = background) of the nuclei in `prob`, touching ones split by watershed.

    Only components larger than `split_area_px` (bigger than one nucleus) go through the distance
    transform and watershed, each in its own crop: most nuclei stand alone and cost one labelling.
    """
    mask = ndimage.binary_fill_holes(prob >= params.threshold)
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(prob.shape, dtype=np.int32)
    labels = labels.astype(np.int32)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    big = np.nonzero(areas[1:] > params.split_area_px)[0] + 1
    if big.size == 0:
        return labels
    boxes = ndimage.find_objects(labels)
    next_id = count + 1
    for lab in big:
        box = boxes[lab - 1]
        if box is None:
            continue
        r0, r1 = max(box[0].start - 1, 0), min(box[0].stop + 1, labels.shape[0])
        c0, c1 = max(box[1].start - 1, 0), min(box[1].stop + 1, labels.shape[1])
        crop = labels[r0:r1, c0:c1]
        part = crop == lab
        pieces = _watershed_split(part, params)
        if pieces.max() <= 1:
            continue
        for k in range(2, int(pieces.max()) + 1):  # piece 1 keeps the original label
            crop[pieces == k] = next_id
            next_id += 1
    return labels


def _watershed_split(mask: np.ndarray, params: NucleusParams) -> np.ndarray:
    """One component split at the distance transform's peaks (labels 1..k; 1 when nothing splits)."""
    dist = ndimage.distance_transform_edt(mask)
    if params.smooth_sigma > 0:
        dist = ndimage.gaussian_filter(dist, params.smooth_sigma) * mask
    peaks = peak_local_max(dist, min_distance=max(1, params.min_distance), threshold_abs=0.5,
                           exclude_border=False)
    if len(peaks) <= 1:
        return mask.astype(np.int32)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    pieces = np.asarray(watershed(-dist, markers, mask=mask), dtype=np.int32)
    # keep piece numbering dense and the largest first, so it keeps the component's original label
    sizes = np.bincount(pieces.ravel(), minlength=len(peaks) + 1)[1:]
    order = np.argsort(-sizes) + 1
    remap = np.zeros(len(peaks) + 1, dtype=np.int32)
    remap[order] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    return remap[pieces]


def _contour(region_image: np.ndarray, row0: int, col0: int) -> np.ndarray:
    padded = np.pad(region_image.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5)
    ring = max(contours, key=len)
    return np.column_stack([ring[:, 1] - 1 + 0.5 + col0, ring[:, 0] - 1 + 0.5 + row0])


def _ring_length(xy: np.ndarray) -> float:
    closed = np.vstack([xy, xy[:1]])
    return float(np.hypot(*np.diff(closed, axis=0).T).sum())


def _hull_area(xy: np.ndarray) -> float:
    from scipy.spatial import ConvexHull

    try:
        return float(ConvexHull(xy).volume)
    except Exception:  # noqa: BLE001 - degenerate (collinear) outlines have no hull
        return 0.0


def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def measure_nuclei(labels: np.ndarray, params: NucleusParams, *, stains: np.ndarray | None = None,
                   positive: np.ndarray | None = None,
                   keep: tuple[float, float, float, float] | None = None) -> list[Nucleus]:
    """Nuclei of a label image with their shape and stain measurements.

    `stains` is (C, H, W) stain densities, `positive` (H, W) a positive-class probability; `keep`
    = (x0, y0, x1, y1) keeps only nuclei whose centroid lies in [x0, x1) x [y0, y1). Moments are
    computed for every label at once (bincount), as scikit-image's regionprops defines them: area,
    centroid, axis lengths (4 sqrt of the inertia eigenvalues), eccentricity, orientation, extent;
    perimeter and solidity come from the outline polygon.
    """
    n = int(labels.max())
    if n == 0:
        return []
    flat = labels.ravel()
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    r, c = rows.ravel(), cols.ravel()

    def sums(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(flat, weights=weights, minlength=n + 1)[1:]

    area = sums()
    ok = area > 0
    safe = np.where(ok, area, 1.0)
    mr, mc = sums(r) / safe, sums(c) / safe
    var_r = sums(r * r) / safe - mr * mr
    var_c = sums(c * c) / safe - mc * mc
    cov = sums(r * c) / safe - mr * mc
    # skimage's inertia tensor [[var_c, -cov], [-cov, var_r]]; orientation 0.5*atan2(-2b, c - a) with b = -cov
    half_tr, det_term = (var_c + var_r) / 2.0, np.sqrt(((var_c - var_r) / 2.0) ** 2 + cov * cov)
    l1, l2 = np.maximum(half_tr + det_term, 0.0), np.maximum(half_tr - det_term, 0.0)
    orientation = np.where(var_c - var_r == 0, np.where(-cov < 0, -np.pi / 4, np.pi / 4),
                           0.5 * np.arctan2(2.0 * cov, var_r - var_c))
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0.0, 1.0)), 0.0)
    stain_means = [sums(ch.ravel().astype(np.float64)) / safe for ch in (stains if stains is not None else [])]
    pos_mean = sums(positive.ravel().astype(np.float64)) / safe if positive is not None else None
    boxes = ndimage.find_objects(labels, max_label=n)
    out: list[Nucleus] = []
    for i in np.nonzero(ok & (area >= params.min_area_px) & (area <= params.max_area_px))[0]:
        cx, cy = float(mc[i]) + 0.5, float(mr[i]) + 0.5
        if keep is not None and not (keep[0] <= cx < keep[2] and keep[1] <= cy < keep[3]):
            continue
        box = boxes[i]
        if box is None:
            continue
        image = labels[box] == i + 1
        contour = _contour(image, box[0].start, box[1].start)
        poly_area = _polygon_area(contour)
        hull = _hull_area(contour)
        out.append(Nucleus(
            cx=cx, cy=cy, contour=contour, area=float(area[i]), perimeter=_ring_length(contour),
            eccentricity=float(ecc[i]), solidity=poly_area / hull if hull > 0 else 1.0,
            extent=float(area[i]) / float(image.size),
            major_axis=4.0 * float(np.sqrt(l1[i])), minor_axis=4.0 * float(np.sqrt(l2[i])),
            orientation=float(orientation[i]),
            stain_means=[float(m[i]) for m in stain_means],
            positive_score=float(pos_mean[i]) if pos_mean is not None else None,
        ))
    return out


def params_for(outputs: dict[str, Any], thresholds: dict[str, float], model_mpp: float) -> NucleusParams:
    """NucleusParams from a spec's `outputs` / `thresholds` (sizes given in µm at the model's mpp)."""
    radius_px = float(outputs.get("nucleus_radius_um", 3.0)) / model_mpp
    px_area = model_mpp * model_mpp
    return NucleusParams(
        threshold=float(thresholds.get("nucleus", 0.5)),
        min_distance=max(2, round(0.6 * radius_px)),
        min_area_px=float(outputs.get("min_area_um2", 0.2 * math.pi * 9.0)) / px_area,
        max_area_px=float(outputs.get("max_area_um2", 400.0)) / px_area,
        smooth_sigma=max(0.5, 0.15 * radius_px),
        split_area_px=1.3 * math.pi * radius_px * radius_px,
        positive_threshold=float(thresholds.get("positive", 0.5)),
    )
