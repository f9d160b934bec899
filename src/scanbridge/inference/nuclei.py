"""Nuclei from per-pixel probability maps: threshold, split touching nuclei, measure each one.

Works on one model window at a time (model pixels). Touching nuclei are split by a marker watershed
on the distance transform (markers: the distance map's local maxima, at least `min_distance` apart).
Coordinates here are *continuous* window coordinates: pixel (row i, col j) covers [j, j+1) x [i, i+1),
so its centre is (j + 0.5, i + 0.5). inference/objects.py maps them to level-0 pixels.

On H&E (`blob_contrast` > 0) an object is kept only when it holds a blob seed (`blob_seeds`): a point
of the haematoxylin density darker than its surroundings in every direction, as a nucleus is and a
collagen fibre or the flat inside of the epidermis is not.

Labelling, hole filling, moments and outlines use OpenCV (C++, releases the GIL, so the object
pipeline's post-processing threads run in parallel); per-nucleus work stays inside its bounding box.
The outline is the one scikit-image's `find_contours(image, 0.5)` draws (a vertex at the middle of
every pixel edge between the nucleus and the background), built from OpenCV's border following.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
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
    blob_contrast: float = 0.0  # > 0: keep only objects holding a blob seed of this contrast (`blob_seeds`)
    blob_channels: tuple[int, ...] = (0,)  # the stain planes seeds are found on (each on its own)
    glass_ring_px: float = 4.0  # with blob seeds: an object whose ring this wide is mostly glass is dropped
    blob_sigma_px: float = 2.0  # smoothing before the seeds are looked for
    blob_spacing_px: int = 3  # candidate seeds are maxima over a (2 s + 1)-pixel square
    blob_reach_px: float = 10.0  # how far each ray runs from a candidate


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
    label: int = 0  # its value in the label image it was measured from


Box = tuple[slice, slice]


def split_nuclei(prob: np.ndarray, params: NucleusParams) -> np.ndarray:
    """Label image (int32, 0 = background) of the nuclei in `prob`, touching ones split by watershed.

    Only components larger than `split_area_px` (bigger than one nucleus) go through the distance
    transform and watershed, each in its own crop: most nuclei stand alone and cost one labelling.
    """
    return _segment(prob, params)[0]


def find_nuclei(prob: np.ndarray, params: NucleusParams, *, stains: np.ndarray | None = None,
                positive: np.ndarray | None = None,
                keep: tuple[float, float, float, float] | None = None) -> list[Nucleus]:
    """`measure_nuclei(split_nuclei(prob, params), ...)` in one pass (bounding boxes found once).

    With `params.blob_contrast` > 0 and `stains` given, objects holding no blob seed (`blob_seeds` on any of
    the stain planes `blob_channels`) are left out, pieces of a carpet or a fibre, and so are objects whose
    ring (`glass_ring_px` wide) is more than `MAX_GLASS_SHARE` glass: a nucleus lies in tissue, a fragment
    of collagen torn loose lies on glass.
    """
    labels, boxes = _segment(prob, params)
    boxes = [box if box is not None and _may_keep(box, params, keep) else None for box in boxes]
    if params.blob_contrast > 0 and stains is not None and any(box is not None for box in boxes):
        planes = np.asarray(stains, dtype=np.float32)
        # only the pixels of objects that may be kept can hold a seed that matters (the rest are not measured)
        live = np.array([False, *(box is not None for box in boxes)])
        inside = np.flatnonzero(labels)
        inside = inside[live[labels.ravel()[inside]]]
        seeds = np.concatenate([_seeds_at(planes[c], inside, params) for c in params.blob_channels])
        boxes = _on_tissue(labels, _seeded(labels, boxes, seeds), planes, params.glass_ring_px)
    return _measure(labels, boxes, params, stains=stains, positive=positive, keep=keep)


def _may_keep(box: Box, params: NucleusParams, keep: tuple[float, float, float, float] | None) -> bool:
    """Whether the object in `box` can be measured: its box is not smaller than the least area and its
    centroid, which lies in [col0 + 0.5, col1 - 0.5] x [row0 + 0.5, row1 - 0.5], can fall in `keep`."""
    row0, col0, row1, col1 = box[0].start, box[1].start, box[0].stop, box[1].stop
    if (row1 - row0) * (col1 - col0) < params.min_area_px:
        return False
    if keep is None:
        return True
    x0, y0, x1, y1 = keep
    return not (col1 - 0.5 < x0 or col0 + 0.5 >= x1 or row1 - 0.5 < y0 or row0 + 0.5 >= y1)


def _segment(prob: np.ndarray, params: NucleusParams) -> tuple[np.ndarray, list[Box | None]]:
    """Labels (4-connected components of the thresholded map, holes filled, big ones split) and their boxes."""
    mask = _fill_holes((prob >= params.threshold).view(np.uint8))
    count, labels = cv2.connectedComponents(mask, connectivity=4, ltype=cv2.CV_32S)
    if count <= 1:
        return np.zeros(prob.shape, dtype=np.int32), []
    boxes: list[Box | None] = list(ndimage.find_objects(labels))
    limit = params.split_area_px
    for lab, box in enumerate(list(boxes), start=1):
        if box is None or (box[0].stop - box[0].start) * (box[1].stop - box[1].start) <= limit:
            continue  # a box no bigger than the limit holds a component no bigger than the limit
        r0, r1 = max(box[0].start - 1, 0), min(box[0].stop + 1, labels.shape[0])
        c0, c1 = max(box[1].start - 1, 0), min(box[1].stop + 1, labels.shape[1])
        crop = labels[r0:r1, c0:c1]
        part = crop == lab
        if np.count_nonzero(part) <= limit:
            continue
        pieces = _watershed_split(part, params)
        n_pieces = int(pieces.max())
        if n_pieces <= 1:
            continue
        piece_boxes = ndimage.find_objects(pieces)
        for k in range(1, n_pieces + 1):  # piece 1 keeps the original label
            pb = piece_boxes[k - 1]
            new_box = None if pb is None else (slice(pb[0].start + r0, pb[0].stop + r0),
                                               slice(pb[1].start + c0, pb[1].stop + c0))
            if k == 1:
                boxes[lab - 1] = new_box
                continue
            crop[pieces == k] = len(boxes) + 1
            boxes.append(new_box)
    return labels, boxes


#: the rays a candidate seed is tested along (angles 2 pi k / BLOB_RAYS), and the least ratio of a seed's
#: weak falls (all rays but one) to its strongest
BLOB_RAYS = 16
BLOB_RATIO = 0.4
GLASS_OD = 0.15  # a pixel whose stain densities sum below this is glass
MAX_GLASS_SHARE = 0.5  # of an object's ring, with blob seeds


def blob_seeds(plane: np.ndarray, mask: np.ndarray, params: NucleusParams) -> np.ndarray:
    """Points (k, 2: row, col) where `plane` (a stain's optical density) holds a compact blob, inside `mask`.

    A nucleus is darker than what surrounds it in every direction; a collagen fibre stays dark along its
    axis, and the inside of a large dark region is flat. Candidates are the maxima of the plane smoothed
    by `blob_sigma_px` (over a (2 `blob_spacing_px` + 1)-pixel square). Along each of `BLOB_RAYS` rays out
    to `blob_reach_px`, a candidate's fall is its value minus the lowest value on the ray; it is a seed
    when every ray but one (a touching neighbour, a gap) falls by `blob_contrast` and by `BLOB_RATIO` of
    the strongest fall. A ray that leaves the window before its reach gives no verdict (the tile overlap
    shows what lies beyond).
    """
    return _seeds_at(plane, np.flatnonzero(mask), params)


def _seeds_at(plane: np.ndarray, pixels: np.ndarray, params: NucleusParams) -> np.ndarray:
    """`blob_seeds` among the flat indices `pixels` of `plane` (ascending): the mask given as its pixels."""
    smooth = cv2.GaussianBlur(plane, (0, 0), params.blob_sigma_px, borderType=cv2.BORDER_REPLICATE) \
        if params.blob_sigma_px > 0 else plane
    side = 2 * max(1, params.blob_spacing_px) + 1
    peak = cv2.dilate(smooth, np.ones((side, side), np.uint8), borderType=cv2.BORDER_REPLICATE)
    picked = pixels[smooth.ravel()[pixels] >= peak.ravel()[pixels]]
    if picked.size == 0:
        return np.zeros((0, 2), dtype=np.intp)
    rows, cols = np.divmod(picked, plane.shape[1])
    angles = np.arange(BLOB_RAYS) * (2.0 * math.pi / BLOB_RAYS)
    steps = np.arange(1.0, params.blob_reach_px + 1e-6, 0.5)
    ys = (rows[:, None, None] + np.sin(angles)[None, :, None] * steps[None, None, :]).astype(np.float32)
    xs = (cols[:, None, None] + np.cos(angles)[None, :, None] * steps[None, None, :]).astype(np.float32)
    on_rays = np.empty(xs.shape, dtype=np.float32)
    for i in range(0, len(rows), 8192):  # remap's maps stay under its 32767-row limit
        on_rays[i:i + 8192] = cv2.remap(smooth, xs[i:i + 8192].reshape(-1, xs.shape[1] * xs.shape[2]),
                                        ys[i:i + 8192].reshape(-1, xs.shape[1] * xs.shape[2]), cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE).reshape(-1, *xs.shape[1:])
    centre = smooth[rows, cols][:, None]
    fall = np.maximum(centre - on_rays.min(axis=2), 0.0)  # (k, rays)
    h, w = plane.shape
    end_x, end_y = xs[:, :, -1], ys[:, :, -1]
    unseen = (end_x < 0) | (end_x > w - 1) | (end_y < 0) | (end_y > h - 1)  # the window ends first: no verdict
    strongest = np.where(unseen, 0.0, fall).max(axis=1)
    fall[unseen] = np.inf
    second_weakest = np.partition(fall, 1, axis=1)[:, 1]
    ok = (second_weakest >= params.blob_contrast) & (second_weakest >= BLOB_RATIO * strongest)
    return np.column_stack([rows[ok], cols[ok]])


def _seeded(labels: np.ndarray, boxes: list[Box | None], seeds: np.ndarray) -> list[Box | None]:
    """`boxes` with None for every label that holds none of the seeds (so it is not measured)."""
    held = np.zeros(len(boxes) + 1, dtype=bool)
    held[labels[seeds[:, 0], seeds[:, 1]]] = True
    return [box if held[lab] else None for lab, box in enumerate(boxes, start=1)]


def _on_tissue(labels: np.ndarray, boxes: list[Box | None], planes: np.ndarray, ring_px: float) -> list[Box | None]:
    """`boxes` with None for every object whose ring (`ring_px` wide, inside the window) is more than
    `MAX_GLASS_SHARE` glass (stain densities `planes` (C, H, W) summing below GLASS_OD)."""
    r = max(1, round(ring_px))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    out: list[Box | None] = []
    for lab, box in enumerate(boxes, start=1):
        if box is None:
            out.append(None)
            continue
        r0, c0 = max(box[0].start - r, 0), max(box[1].start - r, 0)
        crop = (slice(r0, box[0].stop + r), slice(c0, box[1].stop + r))
        inside = (labels[crop] == lab).view(np.uint8)
        ring = cv2.dilate(inside, disc) > inside
        glass = planes[(slice(None), *crop)].sum(axis=0) < GLASS_OD
        share = int(np.count_nonzero(glass[ring])) / max(1, int(np.count_nonzero(ring)))
        out.append(box if share <= MAX_GLASS_SHARE else None)
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` (uint8 0/1) with every background region that does not reach the border set to 1.

    Same as `scipy.ndimage.binary_fill_holes` (background 4-connected): flood the background from a
    one-pixel frame, then everything the flood did not reach is foreground.
    """
    framed = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return (framed[1:-1, 1:-1] != 2).view(np.uint8)


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


# Chain codes of OpenCV's border following, as (dx, dy): E, SE, S, SW, W, NW, N, NE (rows grow downwards).
_STEPS = np.array([(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)], dtype=np.int32)
_CODE = np.zeros(9, dtype=np.intp)  # chain code of a step, at index dx + 3 * dy + 4
_CODE[_STEPS[:, 0] + 3 * _STEPS[:, 1] + 4] = np.arange(8)


def _edge_table() -> tuple[np.ndarray, np.ndarray]:
    """For each pair (step in, step out) of chain codes: offsets to the outline's edge middles, and which are used.

    At a pixel, the border follower scans the neighbours from the previous pixel towards the next one
    (decreasing chain code); the 4-neighbours it passes are background, so the middles of the edges
    shared with them (2 * centre + step, in doubled coordinates) are outline vertices, in this order.
    """
    offsets = np.zeros((64, 4, 2), dtype=np.int32)
    used = np.zeros((64, 4), dtype=bool)
    for step_in in range(8):
        back = (step_in + 4) % 8  # where the previous pixel is
        for step_out in range(8):
            scanned = [(back - s) % 8 for s in range(1, 8)]
            sides = [k for k in scanned[:scanned.index(step_out) if step_out != back else 7] if k % 2 == 0]
            offsets[step_in * 8 + step_out, :len(sides)] = _STEPS[sides]
            used[step_in * 8 + step_out, :len(sides)] = True
    return offsets, used


_EDGE_OFFSETS, _EDGE_USED = _edge_table()
_LONE_PIXEL = _STEPS[[2, 4, 6, 0]]  # S, W, N, E: the same orientation as the reversed rings


def _outline2(image: np.ndarray) -> np.ndarray:
    """Outline of one 4-connected object in a uint8 crop, in *doubled* pixel-centre coordinates (int32).

    Each vertex (2 * centre + step) is the middle of an edge between an object pixel and a background one.
    """
    contours, _ = cv2.findContours(image, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    p = max(contours, key=len).reshape(-1, 2)
    if len(p) == 1:
        return np.asarray(2 * p + _LONE_PIXEL)
    return edge_ring(p)[::-1]  # scikit-image's orientation


def edge_ring(p: np.ndarray) -> np.ndarray:
    """An OpenCV pixel chain (k, 2) as its ring of pixel-edge middles, in doubled pixel-centre coordinates."""
    if len(p) == 1:
        return np.asarray(2 * p + _LONE_PIXEL)
    step = np.empty_like(p)
    np.subtract(p[1:], p[:-1], out=step[:-1])
    np.subtract(p[0], p[-1], out=step[-1])
    code = _CODE[step[:, 0] + 3 * step[:, 1] + 4]
    pair = np.empty_like(code)
    pair[1:] = code[:-1] * 8 + code[1:]
    pair[0] = code[-1] * 8 + code[0]
    return np.asarray((2 * p[:, None, :] + _EDGE_OFFSETS[pair])[_EDGE_USED[pair]])


def measure_nuclei(labels: np.ndarray, params: NucleusParams, *, stains: np.ndarray | None = None,
                   positive: np.ndarray | None = None,
                   keep: tuple[float, float, float, float] | None = None) -> list[Nucleus]:
    """Nuclei of a label image with their shape and stain measurements.

    `stains` is (C, H, W) stain densities, `positive` (H, W) a positive-class probability; `keep`
    = (x0, y0, x1, y1) keeps only nuclei whose centroid lies in [x0, x1) x [y0, y1). Moments are
    those of scikit-image's regionprops: area, centroid, axis lengths (4 sqrt of the inertia
    eigenvalues), eccentricity, orientation, extent; perimeter and solidity come from the outline.
    """
    return _measure(labels, list(ndimage.find_objects(labels)), params, stains=stains, positive=positive, keep=keep)


def _measure(labels: np.ndarray, boxes: list[Box | None], params: NucleusParams, *, stains: np.ndarray | None,
             positive: np.ndarray | None, keep: tuple[float, float, float, float] | None) -> list[Nucleus]:
    """Measure each label inside its own box; labels too small, too big or outside `keep` are skipped early."""
    planes = [np.asarray(ch, dtype=np.float32) for ch in (stains if stains is not None else [])]
    pos = np.asarray(positive, dtype=np.float32) if positive is not None else None
    x0, y0, x1, y1 = keep if keep is not None else (-math.inf, -math.inf, math.inf, math.inf)
    out: list[Nucleus] = []
    for lab, box in enumerate(boxes, start=1):
        if box is None:
            continue
        if not _may_keep(box, params, keep):
            continue
        row0, col0 = box[0].start, box[1].start
        h, w = box[0].stop - row0, box[1].stop - col0
        image = (labels[box] == lab).view(np.uint8)
        m = cv2.moments(image, binaryImage=True)
        area = m["m00"]
        if not params.min_area_px <= area <= params.max_area_px:
            continue
        cx, cy = col0 + m["m10"] / area + 0.5, row0 + m["m01"] / area + 0.5
        if not (x0 <= cx < x1 and y0 <= cy < y1):
            continue
        var_c, var_r, cov = m["mu20"] / area, m["mu02"] / area, m["mu11"] / area
        # skimage's inertia tensor [[var_c, -cov], [-cov, var_r]]; orientation 0.5*atan2(-2b, c - a), b = -cov
        half_tr, root = (var_c + var_r) / 2.0, math.sqrt(((var_c - var_r) / 2.0) ** 2 + cov * cov)
        l1, l2 = max(half_tr + root, 0.0), max(half_tr - root, 0.0)
        orientation = ((-math.pi / 4 if cov > 0 else math.pi / 4) if var_c - var_r == 0
                       else 0.5 * math.atan2(2.0 * cov, var_r - var_c))
        ecc = math.sqrt(min(max(1.0 - l2 / l1, 0.0), 1.0)) if l1 > 0 else 0.0
        ring2 = _outline2(image)
        poly2 = cv2.contourArea(ring2)
        hull2 = cv2.contourArea(cv2.convexHull(ring2))
        contour = ring2 * 0.5 + np.array([col0 + 0.5, row0 + 0.5])
        out.append(Nucleus(
            cx=cx, cy=cy, contour=contour, area=area, perimeter=cv2.arcLength(ring2, True) / 2.0,
            eccentricity=ecc, solidity=poly2 / hull2 if hull2 > 0 else 1.0, extent=area / (h * w),
            major_axis=4.0 * math.sqrt(l1), minor_axis=4.0 * math.sqrt(l2), orientation=orientation,
            stain_means=[cv2.mean(p[box], mask=image)[0] for p in planes],
            positive_score=cv2.mean(pos[box], mask=image)[0] if pos is not None else None, label=lab,
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
        blob_contrast=float(outputs.get("blob_contrast", 0.0)),
        blob_channels=_detection_channels(outputs),
        glass_ring_px=2.0 / model_mpp,
        blob_sigma_px=1.0 / model_mpp,
        blob_spacing_px=max(1, round(1.5 / model_mpp)),
        blob_reach_px=(float(outputs.get("nucleus_radius_um", 3.0)) + 2.0) / model_mpp,
    )


def _detection_channels(outputs: dict[str, Any]) -> tuple[int, ...]:
    """The stain channels nuclei are found on: haematoxylin and DAB where `stain_channels` names them,
    else `intensity_channel`."""
    names = [str(n).lower() for n in outputs.get("stain_channels", [])]
    found = tuple(i for i, n in enumerate(names) if n in ("hematoxylin", "haematoxylin", "dab"))
    return found or (int(outputs.get("intensity_channel", 0)),)
