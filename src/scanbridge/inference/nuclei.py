"""Nuclei from per-pixel probability maps: threshold, split touching nuclei, measure each one.

Works on one model window at a time (model pixels). Touching nuclei are split by a marker watershed
on the distance transform (markers: the distance map's local maxima, at least `min_distance` apart).
Coordinates here are *continuous* window coordinates: pixel (row i, col j) covers [j, j+1) x [i, i+1),
so its centre is (j + 0.5, i + 0.5). inference/objects.py maps them to level-0 pixels.

On H&E (`blob_contrast` > 0) an object is kept only when it holds a blob seed (`blob_seeds`): a point
of the haematoxylin density darker than its surroundings in every direction, as a nucleus is and a
collagen fibre or the flat inside of the epidermis is not.

Labelling, hole filling, the distance transform, border following and the blob test use OpenCV (C++,
releases the GIL, so the object pipeline's post-processing threads run in parallel). A window's nuclei are
measured together (`Nuclei`, one array per measurement): moments and stain means are sums per label over
the window's pixels (np.bincount), the outlines come from one border following of all kept objects, so the
Python work per nucleus is a few scalar formulas; the figures are those OpenCV gives per object in its box.
The outline is the one scikit-image's `find_contours(image, 0.5)` draws (a vertex at the middle of
every pixel edge between the nucleus and the background), built from OpenCV's border following.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from scanbridge.inference.rows import Rows, take_rings


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


class Nuclei(Rows[Nucleus]):
    """The nuclei of one window column-wise (what `Nucleus` holds, one array per field; outlines back to back).

    The measuring works on whole arrays (`find_nuclei_columns`); `self[i]` is nucleus i as a `Nucleus`.
    """

    def __init__(self, *, cx: np.ndarray, cy: np.ndarray, coords: np.ndarray, offsets: np.ndarray,
                 area: np.ndarray, perimeter: np.ndarray, eccentricity: np.ndarray, solidity: np.ndarray,
                 extent: np.ndarray, major_axis: np.ndarray, minor_axis: np.ndarray, orientation: np.ndarray,
                 stain_means: np.ndarray, positive_score: np.ndarray | None, label: np.ndarray) -> None:
        self.cx, self.cy = cx, cy
        self.coords, self.offsets = coords, offsets  # (m, 2) x, y outlines; nucleus i's are offsets[i]:offsets[i+1]
        self.area, self.perimeter = area, perimeter
        self.eccentricity, self.solidity, self.extent = eccentricity, solidity, extent
        self.major_axis, self.minor_axis, self.orientation = major_axis, minor_axis, orientation
        self.stain_means = stain_means  # (n, planes)
        self.positive_score = positive_score
        self.label = label

    @classmethod
    def empty(cls, planes: int, positive: bool) -> Nuclei:
        """No nuclei (with room for `planes` stain means and a positive score when `positive`)."""
        none = np.zeros(0)
        return cls(cx=none, cy=none, coords=np.zeros((0, 2)), offsets=np.zeros(1, dtype=np.int64), area=none,
                   perimeter=none, eccentricity=none, solidity=none, extent=none, major_axis=none, minor_axis=none,
                   orientation=none, stain_means=np.zeros((0, planes)), positive_score=none if positive else None,
                   label=np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.cx)

    def row(self, i: int) -> Nucleus:
        """Nucleus i as a Nucleus."""
        pos = self.positive_score
        return Nucleus(cx=float(self.cx[i]), cy=float(self.cy[i]),
                       contour=self.coords[self.offsets[i]:self.offsets[i + 1]], area=float(self.area[i]),
                       perimeter=float(self.perimeter[i]), eccentricity=float(self.eccentricity[i]),
                       solidity=float(self.solidity[i]), extent=float(self.extent[i]),
                       major_axis=float(self.major_axis[i]), minor_axis=float(self.minor_axis[i]),
                       orientation=float(self.orientation[i]), stain_means=self.stain_means[i].tolist(),
                       positive_score=None if pos is None else float(pos[i]), label=int(self.label[i]))

    def contour(self, i: int) -> np.ndarray:
        """Nucleus i's outline (k, 2)."""
        return self.coords[self.offsets[i]:self.offsets[i + 1]]

    def scaled(self, s: float, o: float) -> Nuclei:
        """The nuclei with positions times `s` plus `o` and lengths times `s` (a map's pixels -> model pixels)."""
        return Nuclei(cx=self.cx * s + o, cy=self.cy * s + o, coords=self.coords * s + o, offsets=self.offsets,
                      area=self.area * s * s, perimeter=self.perimeter * s, eccentricity=self.eccentricity,
                      solidity=self.solidity, extent=self.extent, major_axis=self.major_axis * s,
                      minor_axis=self.minor_axis * s, orientation=self.orientation, stain_means=self.stain_means,
                      positive_score=self.positive_score, label=self.label)

    def take(self, idx: np.ndarray) -> Nuclei:
        """The nuclei at `idx` (ascending), in that order."""
        coords, offsets = take_rings(self.coords, self.offsets, idx)
        pos = self.positive_score
        return Nuclei(cx=self.cx[idx], cy=self.cy[idx], coords=coords, offsets=offsets, area=self.area[idx],
                      perimeter=self.perimeter[idx], eccentricity=self.eccentricity[idx],
                      solidity=self.solidity[idx], extent=self.extent[idx], major_axis=self.major_axis[idx],
                      minor_axis=self.minor_axis[idx], orientation=self.orientation[idx],
                      stain_means=self.stain_means[idx], positive_score=None if pos is None else pos[idx],
                      label=self.label[idx])


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """This thread's buffer `name`, kept from one window to the next. A window's images are 1 MiB each, and
    a fresh block that size is a fresh mapping (inference/heap.py): its page faults cost as much as the
    filter that fills it."""
    buf: np.ndarray | None = getattr(_SCRATCH, name, None)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = np.empty(shape, dtype=dtype)
        setattr(_SCRATCH, name, buf)
    return buf


def split_nuclei(prob: np.ndarray, params: NucleusParams) -> np.ndarray:
    """Label image (int32, 0 = background) of the nuclei in `prob`, touching ones split by watershed.

    Only components larger than `split_area_px` (bigger than one nucleus) go through the distance
    transform and watershed (`_split`: all of a window's at once), the others cost one labelling.
    """
    return _segment(prob, params)[0]


def find_nuclei(prob: np.ndarray, params: NucleusParams, *, stains: np.ndarray | None = None,
                positive: np.ndarray | None = None,
                keep: tuple[float, float, float, float] | None = None) -> list[Nucleus]:
    """`measure_nuclei(split_nuclei(prob, params), ...)` in one pass, with the blob-seed and glass tests
    (`find_nuclei_columns`), one `Nucleus` each."""
    return list(find_nuclei_columns(prob, params, stains=stains, positive=positive, keep=keep))


def find_nuclei_columns(prob: np.ndarray, params: NucleusParams, *, stains: np.ndarray | None = None,
                        positive: np.ndarray | None = None,
                        keep: tuple[float, float, float, float] | None = None) -> Nuclei:
    """The nuclei of `prob` column-wise: split, tested, measured (`measure_nuclei`'s measurements).

    With `params.blob_contrast` > 0 and `stains` given, objects holding no blob seed (`blob_seeds` on any of
    the stain planes `blob_channels`) are left out, pieces of a carpet or a fibre, and so are objects whose
    ring (`glass_ring_px` wide) is more than `MAX_GLASS_SHARE` glass: a nucleus lies in tissue, a fragment
    of collagen torn loose lies on glass. Both tests run only on the objects the size and `keep` limits leave.
    """
    labels, boxes, fg = _segment(prob, params, into=_scratch("labels", prob.shape, np.int32))
    planes = np.asarray(stains, dtype=np.float32) if params.blob_contrast > 0 and stains is not None else None
    return _measure(labels, boxes, fg, params, stains=stains, positive=positive, keep=keep, seed_planes=planes)


def _segment(prob: np.ndarray, params: NucleusParams,
             into: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (4-connected components of the thresholded map, holes filled, big ones split; in `into` when
    given), their boxes ((labels + 1, 4) rows row0, col0, row1, col1, indexed by label; zeros for no pixels)
    and the flat indices of the labelled pixels (ascending)."""
    mask = _filled(prob, params.threshold)
    count, labels = cv2.connectedComponents(mask, labels=into, connectivity=4, ltype=cv2.CV_32S)
    fg = np.flatnonzero(mask.view(bool))  # (a bool view: numpy's nonzero is ~5x faster on bools)
    if count <= 1:
        return labels, np.zeros((1, 4), dtype=np.int64), fg
    lab = labels.ravel()[fg]
    boxes, area = _pixel_boxes(lab, fg, labels.shape[1], count)
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    limit = params.split_area_px
    # a box no bigger than the limit holds a component no bigger than the limit
    big = np.flatnonzero((w * h > limit) & (area > limit))
    if big.size:
        boxes = _split(labels, boxes, big, lab, fg, params)
    return labels, boxes, fg  # a split relabels pixels, never clears one


def _split(labels: np.ndarray, boxes: np.ndarray, big: np.ndarray, lab: np.ndarray, fg: np.ndarray,
           params: NucleusParams) -> np.ndarray:
    """Split the components `big` (ascending labels) at their distance transform's peaks, all at once; returns
    the boxes with the new pieces' appended (`lab`, `fg`: the label and flat index of every labelled pixel).

    Over the window at once: the Euclidean distance transform of the components (each one's own: a step
    towards another component meets background first, as components are 4-connected), smoothed by
    `smooth_sigma` (edges reflected) and zero outside them; peaks are the pixels above 0.5 that are the
    maximum of their (2 `min_distance` + 1)-pixel square (edges repeated), the highest of a component first
    (then raster order), none closer than `min_distance` to a kept one of its component (as scikit-image's
    `peak_local_max`); a component with two or more is flooded from them by scikit-image's watershed of the
    negated map, its pieces numbered largest first. The first piece keeps the label, the others get new
    ones, component by component. Where two components lie within a few pixels, the smoothing and the
    square maximum see both (the peaks sit at the components' middles, so this rarely changes a split).

    It was a loop of those calls, each in the component's own crop: ~0.75 ms a component, and a tile of
    real tissue has a hundred or more to split (100 ms a 512² window; generated slides have few).
    """
    width = labels.shape[1]
    n_labels = len(boxes)
    is_big = np.zeros(n_labels, dtype=bool)
    is_big[big] = True
    mine = is_big[lab]
    pix = fg[mine]
    union = np.zeros(labels.size, dtype=np.uint8)
    union[pix] = 1
    union2 = union.reshape(labels.shape)
    dist = cv2.distanceTransform(union2, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # exact (Felzenszwalb), float32
    if params.smooth_sigma > 0:
        dist = cv2.GaussianBlur(dist, (0, 0), params.smooth_sigma, borderType=cv2.BORDER_REFLECT)
        dist *= union2
    spacing = max(1, params.min_distance)
    peak = cv2.dilate(dist, np.ones((2 * spacing + 1, 2 * spacing + 1), np.uint8), borderType=cv2.BORDER_REPLICATE)
    flat, flat_peak = dist.ravel(), peak.ravel()
    cand = pix[(flat[pix] == flat_peak[pix]) & (flat[pix] > 0.5)]
    comp = labels.ravel()[cand]
    value = flat[cand]
    order = np.lexsort((-value, comp))  # by component, the highest first, ties in raster order (stable)
    cand, comp, value = cand[order], comp[order], value[order]
    if spacing > 1 and cand.size:
        rows, cols = np.divmod(cand, width)
        keep = _spaced(comp, value, rows, cols, spacing)
        cand, comp = cand[keep], comp[keep]
    per_comp = np.bincount(comp, minlength=n_labels)
    cand, comp = cand[per_comp[comp] >= 2], comp[per_comp[comp] >= 2]
    if cand.size == 0:
        return boxes
    # markers numbered component by component in that order; the watershed floods each component from its own
    markers = np.zeros(labels.size, dtype=np.int32)
    markers[cand] = np.arange(1, len(cand) + 1, dtype=np.int32)
    pix = pix[per_comp[lab[mine]] >= 2]
    region = np.zeros(labels.size, dtype=bool)
    region[pix] = True
    pieces = np.asarray(watershed(-dist, markers.reshape(labels.shape), mask=region.reshape(labels.shape)),
                        dtype=np.int64).ravel()[pix]
    # pieces largest first within each component
    n_markers = len(cand)
    sizes = np.bincount(pieces, minlength=n_markers + 1)[1:]
    counts = per_comp[np.unique(comp)]
    first = np.cumsum(counts) - counts
    rank = np.empty(n_markers, dtype=np.int64)
    for start, k in zip(first.tolist(), counts.tolist(), strict=True):
        rank[start + np.argsort(-sizes[start:start + k], kind="stable")] = np.arange(k)
    # rank 0 keeps the component's label; the others get new labels, component by component, by rank
    new = np.flatnonzero(rank > 0)
    new = new[np.lexsort((rank[new], comp[new]))]
    final = comp.astype(np.int32)
    final[new] = n_labels + np.arange(len(new), dtype=np.int32)
    labels.ravel()[pix] = final[pieces - 1]
    piece_boxes = _pixel_boxes(pieces, pix, width, n_markers + 1)[0][1:]
    out = boxes.copy()
    kept = rank == 0
    out[comp[kept]] = piece_boxes[kept]
    return np.concatenate([out, piece_boxes[new]])


def _spaced(cell: np.ndarray, value: np.ndarray, y: np.ndarray, x: np.ndarray, spacing: int) -> np.ndarray:
    """Which candidate peaks (sorted component by component, the highest first) scikit-image's spacing rule
    (`ensure_spacing`) keeps: a peak goes when a kept one of its component lies closer than `spacing`
    (Chebyshev). Peaks that close are equal (each is the maximum of a square holding the other), so only
    runs of equal peaks of one component are looked at, one by one."""
    keep = np.ones(len(cell), dtype=bool)
    same = (cell[1:] == cell[:-1]) & (value[1:] == value[:-1])  # candidate i + 1 equals candidate i
    edges = np.diff(np.concatenate([[False], same, [False]]).astype(np.int8))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):  # candidates s..e are one run of equal peaks
        kept: list[int] = []
        for i in range(s, e + 1):
            if any(max(abs(int(y[i]) - int(y[k])), abs(int(x[i]) - int(x[k]))) < spacing for k in kept):
                keep[i] = False
            else:
                kept.append(i)
    return keep


def _pixel_boxes(lab: np.ndarray, fg: np.ndarray, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4: row0, col0, row1, col1; zeros for none and for label 0) and pixel counts of labels
    0..n-1, from their pixels (`lab` at flat indices `fg` of an image `width` wide)."""
    rows, cols = np.divmod(fg, width)
    lo_r, lo_c = np.full(n, np.iinfo(np.int64).max), np.full(n, np.iinfo(np.int64).max)
    hi_r, hi_c = np.full(n, -1), np.full(n, -1)
    np.minimum.at(lo_r, lab, rows)
    np.minimum.at(lo_c, lab, cols)
    np.maximum.at(hi_r, lab, rows)
    np.maximum.at(hi_c, lab, cols)
    boxes = np.column_stack([lo_r, lo_c, hi_r + 1, hi_c + 1])
    boxes[hi_r < 0] = 0
    boxes[0] = 0
    area = np.bincount(lab, minlength=n)
    area[0] = 0
    return boxes, area


def _boxes_of(labels: np.ndarray) -> np.ndarray:
    """`_segment`'s boxes of any label image (find_objects)."""
    found = ndimage.find_objects(labels)
    boxes = np.zeros((len(found) + 1, 4), dtype=np.int64)
    for lab, box in enumerate(found, start=1):
        if box is not None:
            boxes[lab] = (box[0].start, box[1].start, box[0].stop, box[1].stop)
    return boxes


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
    smooth, peak = _smooth_and_peak(plane, params)
    picked = pixels[smooth.ravel()[pixels] >= peak.ravel()[pixels]]
    rows, cols = np.divmod(picked, plane.shape[1])
    ok = _blob_test(smooth, rows, cols, params)
    return np.column_stack([rows[ok], cols[ok]])


def _smooth_and_peak(plane: np.ndarray, params: NucleusParams) -> tuple[np.ndarray, np.ndarray]:
    """The plane smoothed by `blob_sigma_px`, and its maximum over the candidates' square (this thread's
    buffers: valid until its next call)."""
    smooth = cv2.GaussianBlur(plane, (0, 0), params.blob_sigma_px, dst=_scratch("smooth", plane.shape, np.float32),
                              borderType=cv2.BORDER_REPLICATE) if params.blob_sigma_px > 0 else plane
    side = 2 * max(1, params.blob_spacing_px) + 1
    return smooth, cv2.dilate(smooth, np.ones((side, side), np.uint8), dst=_scratch("peak", plane.shape, np.float32),
                              borderType=cv2.BORDER_REPLICATE)


def _blob_test(smooth: np.ndarray, rows: np.ndarray, cols: np.ndarray, params: NucleusParams) -> np.ndarray:
    """Which candidates (`rows`, `cols` of the smoothed plane) are blob seeds: the rays of `blob_seeds`."""
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
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
    h, w = smooth.shape
    end_x, end_y = xs[:, :, -1], ys[:, :, -1]
    unseen = (end_x < 0) | (end_x > w - 1) | (end_y < 0) | (end_y > h - 1)  # the window ends first: no verdict
    strongest = np.where(unseen, 0.0, fall).max(axis=1)
    fall[unseen] = np.inf
    second_weakest = np.partition(fall, 1, axis=1)[:, 1]
    return np.asarray((second_weakest >= params.blob_contrast) & (second_weakest >= BLOB_RATIO * strongest))


def _held_seeds(labels: np.ndarray, planes: np.ndarray, params: NucleusParams, wanted: np.ndarray, lab: np.ndarray,
                fg: np.ndarray) -> np.ndarray:
    """Per label: whether it holds a blob seed on one of the `blob_channels` (looked for in `wanted` labels only;
    a plane is searched only for the labels the planes before it left without one). `lab`, `fg`: the label and
    flat index of every labelled pixel (ascending)."""
    held = np.zeros(len(wanted), dtype=bool)
    for c in params.blob_channels:
        todo = wanted & ~held
        if not todo.any():
            break
        smooth, peak = _smooth_and_peak(planes[c], params)
        # candidates: the maxima among the pixels of the labels still to do (a seed can only be one of them)
        mine = todo[lab]
        pixels, owner = fg[mine], lab[mine]
        is_max = smooth.ravel()[pixels] >= peak.ravel()[pixels]
        picked, owner = pixels[is_max], owner[is_max]
        rows, cols = np.divmod(picked, labels.shape[1])
        held[owner[_blob_test(smooth, rows, cols, params)]] = True
    return held


def _on_tissue(shape: tuple[int, int], boxes: np.ndarray, planes: np.ndarray, ring_px: float, wanted: np.ndarray,
               lab: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per label (of the `wanted` ones; the rest False): whether its ring (`ring_px` wide, inside the window) is
    at most `MAX_GLASS_SHARE` glass (stain densities `planes` (C, H, W) summing below GLASS_OD). `lab`, `rows`,
    `cols`: the label and position of every labelled pixel of the window (`shape`).

    Each object's ring is the dilation of its mask within its box grown by the ring's width (cut at the
    window's edge); the crops are laid side by side in one mosaic, `ring_px` apart, so one dilation makes
    every object's own ring.
    """
    out = np.zeros(len(wanted), dtype=bool)
    ids = np.flatnonzero(wanted)
    if ids.size == 0:
        return out
    r = max(1, round(ring_px))
    height, width = shape
    box = boxes[ids]
    r0, c0 = np.maximum(box[:, 0] - r, 0), np.maximum(box[:, 1] - r, 0)
    hh, ww = np.minimum(box[:, 2] + r, height) - r0, np.minimum(box[:, 3] + r, width) - c0
    at = np.cumsum(ww + r) - (ww + r)  # each crop's first column in the mosaic
    mosaic = np.zeros((int(hh.max()), int(at[-1] + ww[-1])), dtype=np.uint8)
    cell_of = np.zeros(len(wanted), dtype=np.int64)
    cell_of[ids] = np.arange(len(ids))
    mine = wanted[lab]
    cell = cell_of[lab[mine]]
    mosaic[rows[mine] - r0[cell], at[cell] + cols[mine] - c0[cell]] = 1
    ring = cv2.dilate(mosaic, disc(r)) - mosaic
    # ring pixels in the mosaic's raster order; those in the gaps or below a crop (a crop cut at the window's
    # edge lets the dilation out) are not the crop's
    rr, cc = np.divmod(np.flatnonzero(ring.view(bool)), mosaic.shape[1])
    cell = np.repeat(np.arange(len(ids)), ww + r)[cc]
    cc -= at[cell]
    inside = (cc < ww[cell]) & (rr < hh[cell])
    rr, cc, cell = rr[inside], cc[inside], cell[inside]
    src = (r0[cell] + rr) * width + c0[cell] + cc
    density = planes[0].ravel()[src]
    for plane in planes[1:]:  # as ndarray.sum(axis=0) over the planes adds them: in order, in float32
        density += plane.ravel()[src]
    n_ring = np.bincount(cell, minlength=len(ids))
    n_glass = np.bincount(cell, weights=density < GLASS_OD, minlength=len(ids))
    out[ids] = n_glass / np.maximum(n_ring, 1) <= MAX_GLASS_SHARE
    return out


@functools.lru_cache(maxsize=8)
def disc(radius: int) -> np.ndarray:
    """The elliptical structuring element of `radius` (made once per radius)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _filled(prob: np.ndarray, threshold: float) -> np.ndarray:
    """`prob >= threshold` (uint8 0/1) with every background region that does not reach the border set to 1
    (this thread's buffer: valid until its next call).

    Same as `scipy.ndimage.binary_fill_holes` (background 4-connected): the threshold is written inside a
    one-pixel frame, the background flooded from the frame, and everything the flood did not reach is
    foreground.
    """
    h, w = prob.shape
    framed = _scratch("framed", (h + 2, w + 2), np.uint8)
    framed[0], framed[-1], framed[:, 0], framed[:, -1] = 0, 0, 0, 0
    np.greater_equal(prob, threshold, out=framed[1:-1, 1:-1].view(bool))
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    mask = _scratch("filled", (h, w), np.uint8)
    np.not_equal(framed[1:-1, 1:-1], 2, out=mask.view(bool))
    return mask


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
    """Nuclei of a label image with their shape and stain measurements (`measure_nuclei_columns`), one each."""
    return list(measure_nuclei_columns(labels, params, stains=stains, positive=positive, keep=keep))


def measure_nuclei_columns(labels: np.ndarray, params: NucleusParams, *, stains: np.ndarray | None = None,
                           positive: np.ndarray | None = None,
                           keep: tuple[float, float, float, float] | None = None) -> Nuclei:
    """Nuclei of a label image with their shape and stain measurements, column-wise.

    `stains` is (C, H, W) stain densities, `positive` (H, W) a positive-class probability; `keep`
    = (x0, y0, x1, y1) keeps only nuclei whose centroid lies in [x0, x1) x [y0, y1). Moments are
    those of scikit-image's regionprops: area, centroid, axis lengths (4 sqrt of the inertia
    eigenvalues), eccentricity, orientation, extent; perimeter and solidity come from the outline.
    """
    labels = np.asarray(labels, dtype=np.int32)
    return _measure(labels, _boxes_of(labels), np.flatnonzero(labels != 0), params, stains=stains, positive=positive,
                    keep=keep)


def _measure(labels: np.ndarray, boxes: np.ndarray, fg: np.ndarray, params: NucleusParams, *,
             stains: np.ndarray | None,
             positive: np.ndarray | None, keep: tuple[float, float, float, float] | None,
             seed_planes: np.ndarray | None = None) -> Nuclei:
    """Measure every label at once; labels too small, too big or centred outside `keep` (and, with
    `seed_planes`, those without a blob seed or on glass) are left out.

    The figures are those OpenCV gives per object in its own box (`cv2.moments` of the binary crop, `cv2.mean`
    under its mask, `contourArea`, `arcLength` and `convexHull` of its outline), made from sums per label over
    the window's pixels in raster order (np.bincount), so they are the same numbers bit for bit.
    """
    planes = [np.asarray(ch, dtype=np.float32) for ch in (stains if stains is not None else [])]
    pos = np.asarray(positive, dtype=np.float32) if positive is not None else None
    n = len(boxes)
    if fg.size == 0:
        return Nuclei.empty(len(planes), pos is not None)
    lab = labels.ravel()[fg].astype(np.intp)
    rows, cols = np.divmod(fg, labels.shape[1])
    # binary moments in each label's own box (OpenCV's: integer sums, exact in float64)
    xr = (cols - boxes[lab, 1]).astype(np.float64)
    yr = (rows - boxes[lab, 0]).astype(np.float64)
    m00 = np.bincount(lab, minlength=n).astype(np.float64)
    m10, m01 = np.bincount(lab, xr, minlength=n), np.bincount(lab, yr, minlength=n)
    col0, row0 = boxes[:, 1].astype(np.float64), boxes[:, 0].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cx, cy = col0 + m10 / m00 + 0.5, row0 + m01 / m00 + 0.5
    x0, y0, x1, y1 = keep if keep is not None else (-math.inf, -math.inf, math.inf, math.inf)
    wanted = (m00 > 0) & (params.min_area_px <= m00) & (m00 <= params.max_area_px) \
        & (x0 <= cx) & (cx < x1) & (y0 <= cy) & (cy < y1)
    wanted[0] = False
    if seed_planes is not None and wanted.any():
        wanted &= _held_seeds(labels, seed_planes, params, wanted, lab, fg)
        wanted &= _on_tissue(labels.shape, boxes, seed_planes, params.glass_ring_px, wanted, lab, rows, cols)
    kept = np.flatnonzero(wanted)
    if kept.size == 0:
        return Nuclei.empty(len(planes), pos is not None)
    # the rest is summed over the kept objects' pixels only: each label's pixels in the same (raster) order
    mine = wanted[lab]
    lab, fg, xr, yr = lab[mine], fg[mine], xr[mine], yr[mine]
    area = m00[kept]
    s10, s01 = m10[kept], m01[kept]
    s20, s02, s11 = (np.bincount(lab, w, minlength=n)[kept] for w in (xr * xr, yr * yr, xr * yr))
    # OpenCV's completeMomentState: cx = m10 / m00 as m10 * (1 / m00), mu20 = m20 - m10 * cx, ...
    inv = 1.0 / area
    mu20, mu11, mu02 = s20 - s10 * (s10 * inv), s11 - s10 * (s01 * inv), s02 - s01 * (s01 * inv)
    ecc, orientation, major, minor = _inertia(area, mu20, mu02, mu11)
    ring2, offsets = _outlines2(labels, boxes, kept, fg)
    poly2, perimeter2 = _ring_area_and_length(ring2, offsets)
    hull2 = np.array([cv2.contourArea(cv2.convexHull(ring2[offsets[i]:offsets[i + 1]]))
                      for i in range(len(kept))], dtype=np.float64)
    box = boxes[kept]
    sums = [np.bincount(lab, p.ravel()[fg], minlength=n)[kept] for p in planes]
    return Nuclei(
        cx=cx[kept], cy=cy[kept], coords=ring2 * 0.5 + 0.5, offsets=offsets, area=area, perimeter=perimeter2 / 2.0,
        eccentricity=ecc, solidity=np.divide(poly2, hull2, out=np.ones(len(kept)), where=hull2 > 0),
        extent=area / ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])), major_axis=major, minor_axis=minor,
        orientation=orientation,
        stain_means=np.column_stack([s * (1.0 / area) for s in sums]) if sums else np.zeros((len(kept), 0)),
        # cv2.mean: the sum times 1 / count
        positive_score=np.bincount(lab, pos.ravel()[fg], minlength=n)[kept] * (1.0 / area) if pos is not None else None,
        label=kept.astype(np.int64),
    )


def _inertia(area: np.ndarray, mu20: np.ndarray, mu02: np.ndarray,
             mu11: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eccentricity, orientation, major and minor axis of objects from their central moments.

    The float operations Python's math did per object, array-wise: + - * / and sqrt are IEEE's in both;
    max(v, 0.0) and min(v, 1.0) are the selections Python makes (signed zeros and NaN kept as they are).
    The square and atan2 stay Python's (`** 2` is libm's pow, and numpy may use other implementations of
    power and arctan2 than libm's).
    """
    var_c, var_r, cov = mu20 / area, mu02 / area, mu11 / area
    # skimage's inertia tensor [[var_c, -cov], [-cov, var_r]]; orientation 0.5*atan2(-2b, c - a), b = -cov
    half_tr = (var_c + var_r) / 2.0
    squared = np.array([d ** 2 for d in ((var_c - var_r) / 2.0).tolist()], dtype=np.float64)
    root = np.sqrt(squared + cov * cov)
    l1, l2 = _at_least_zero(half_tr + root), _at_least_zero(half_tr - root)
    flat = var_c - var_r == 0
    turn = np.array([0.5 * math.atan2(2.0 * c, d) for c, d in zip(cov.tolist(), (var_r - var_c).tolist(), strict=True)],
                    dtype=np.float64)
    orientation = np.where(flat, np.where(cov > 0, -math.pi / 4, math.pi / 4), turn)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = _at_least_zero(1.0 - l2 / l1)
        ecc = np.where(l1 > 0, np.sqrt(np.where(share > 1.0, 1.0, share)), 0.0)
    return ecc, orientation, 4.0 * np.sqrt(l1), 4.0 * np.sqrt(l2)


def _at_least_zero(v: np.ndarray) -> np.ndarray:
    """max(v, 0.0) of each value as Python gives it (v itself unless 0.0 > v: -0.0 and NaN stay)."""
    return np.where(v < 0.0, 0.0, v)


def _outlines2(labels: np.ndarray, boxes: np.ndarray, kept: np.ndarray,
               fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outlines of the `kept` labels (`_outline2` of each one's box, in window doubled pixel-centre
    coordinates), back to back, and their offsets; `fg`: the flat indices of the kept labels' pixels.

    One border following of an image of all kept objects: a chain whose every pixel is its first pixel's
    object is the chain that object gets alone in its box (the follower moves to the first foreground
    neighbour it meets; it met no other object's pixel before its own, and the rest of an object is never
    looked at). Objects touched along their outline by another, and those inside another's hole (which
    RETR_EXTERNAL does not return), are followed as alone in their box (`_followed_alone`, all at once).
    """
    flat_image = np.zeros(labels.size, dtype=np.uint8)
    flat_image[fg] = 1
    image = flat_image.reshape(labels.shape)
    contours, _ = cv2.findContours(image, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    chains: dict[int, np.ndarray] = {}
    if contours:
        points = np.concatenate(contours).reshape(-1, 2)
        sizes = np.array([len(c) for c in contours], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        owners = labels[points[:, 1], points[:, 0]]
        same = np.logical_and.reduceat(owners == np.repeat(owners[starts], sizes), starts)
        for i in np.flatnonzero(same).tolist():
            chains[int(owners[starts[i]])] = contours[i].reshape(-1, 2)
    alone = np.array([k for k in kept.tolist() if k not in chains], dtype=np.int64)
    if alone.size:
        chains.update(_followed_alone(labels, boxes, alone, fg))
    return edge_rings([chains[k] for k in kept.tolist()])


def _followed_alone(labels: np.ndarray, boxes: np.ndarray, ids: np.ndarray, fg: np.ndarray) -> dict[int, np.ndarray]:
    """The chain of each label in `ids` as the border following of its box alone gives it (window coordinates;
    the longest where it has several), from one border following of a mosaic: the boxes side by side, a
    column of background between neighbours. The follower starts each object at its first pixel in raster
    order and looks at its 8 neighbours only, so in the mosaic it meets no other object (objects touching
    another one along the outline: on real tissue most pieces of a split component)."""
    box = boxes[ids]
    hh, ww = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    at = np.cumsum(ww + 1) - (ww + 1)  # each box's first mosaic column
    mosaic = np.zeros((int(hh.max()), int(at[-1] + ww[-1])), dtype=np.uint8)
    cell_of = np.full(len(boxes), -1, dtype=np.int64)
    cell_of[ids] = np.arange(len(ids))
    cell = cell_of[labels.ravel()[fg]]
    rows, cols = np.divmod(fg[cell >= 0], labels.shape[1])
    cell = cell[cell >= 0]
    mosaic[rows - box[cell, 0], at[cell] + cols - box[cell, 1]] = 1
    found, _ = cv2.findContours(mosaic, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.concatenate(found).reshape(-1, 2)
    sizes = np.array([len(c) for c in found], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    owner = np.searchsorted(at, points[starts, 0], side="right") - 1
    first = np.lexsort((-sizes, owner))  # per box its longest chain first (one, for a connected object)
    first = first[np.r_[True, owner[first][1:] != owner[first][:-1]]]
    points += np.repeat(np.column_stack([box[owner, 1] - at[owner], box[owner, 0]]).astype(np.int32), sizes, axis=0)
    return {int(ids[owner[i]]): points[starts[i]:starts[i] + sizes[i]] for i in first.tolist()}


def edge_rings(chains: list[np.ndarray], *, reverse: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`_outline2` of many OpenCV pixel chains at once: their rings of pixel-edge middles (doubled pixel-centre
    coordinates, int32, scikit-image's orientation), back to back, and their offsets. `reverse=False` gives
    each chain's `edge_ring` instead (the follower's own order: the tissue regions' rings, postprocess.py)."""
    lengths = np.array([len(c) for c in chains], dtype=np.int64)
    p = np.concatenate(chains).astype(np.int32, copy=False)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    nxt = np.arange(1, len(p) + 1)
    nxt[ends - 1] = starts
    prev = np.arange(-1, len(p) - 1)
    prev[starts] = ends - 1
    step = p[nxt] - p
    code = _CODE[step[:, 0] + 3 * step[:, 1] + 4]
    pair = code[prev] * 8 + code
    used = _EDGE_USED[pair]
    lone = lengths == 1
    used[np.repeat(lone, lengths)] = False  # a lone pixel's ring is its four edges (below)
    verts = (2 * p[:, None, :] + _EDGE_OFFSETS[pair])[used]
    per_point = used.sum(axis=1)
    counts = np.add.reduceat(per_point, starts) if len(starts) else np.zeros(0, dtype=np.int64)
    counts[lone] = 4
    offsets = np.zeros(len(chains) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = np.empty((int(offsets[-1]), 2), dtype=np.int32)
    # each chain's middles (reversed: edge_ring(p)[::-1]), into its place
    v_counts = np.where(lone, 0, counts)
    v_starts = np.cumsum(v_counts) - v_counts
    owner = np.repeat(np.arange(len(chains)), v_counts)
    k = np.arange(len(verts))
    place = offsets[:-1][owner] + (k - v_starts[owner])
    out[place] = verts[2 * v_starts[owner] + v_counts[owner] - 1 - k] if reverse else verts
    if lone.any():
        at = offsets[:-1][lone][:, None] + np.arange(4)
        out[at] = 2 * p[starts[lone]][:, None, :] + _LONE_PIXEL[None]
    return out, offsets


def _ring_area_and_length(ring2: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`cv2.contourArea` and `cv2.arcLength(closed)` of integer rings back to back.

    The area is the shoelace sum of integer products (exact, as OpenCV's in float64); the length sums each
    step's float32 length, as OpenCV does, and those sums are exact too (multiples of 2^-23 far below 2^53),
    so the order of adding does not matter.
    """
    starts, ends = offsets[:-1], offsets[1:]
    prev = np.arange(-1, len(ring2) - 1)
    prev[starts] = ends - 1
    x, y = ring2[:, 0].astype(np.int64), ring2[:, 1].astype(np.int64)
    area = np.abs(np.add.reduceat(x[prev] * y - y[prev] * x, starts).astype(np.float64) * 0.5)
    d = (ring2 - ring2[prev]).astype(np.float32)
    length = np.add.reduceat(np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]).astype(np.float64), starts)
    return area, length


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
