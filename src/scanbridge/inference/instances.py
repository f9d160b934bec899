"""Instance decoders (segmentation / detection kinds): one per `spec.decoder`, chosen from the spec.

Each decoder turns one window's outputs (one tile of a batch, by output name, no batch axis) into
`WindowObject`s in *window model pixels* (continuous: model pixel j covers [j, j + 1)); the object
pipeline (inference/objects.py) applies the core rule and maps them to level 0 the same way for all.

- `threshold`: a probability map split by a distance-transform watershed (inference/nuclei.py).
- `hovernet`: nuclear probability + horizontal/vertical distance maps (+ an optional type map), the
  HoVer-Net post-processing: markers from the Sobel of the hv maps, a marker-controlled watershed.
- `stardist`: object probability + radial distances: star-convex polygons, non-maximum suppression.
- `boxes`: a detector's (M, >=5) rows x1, y1, x2, y2, score[, class] (or cx, cy, w, h) in input pixels.

Maps may be smaller than the input: output pixel j of a map with `output_downsample` d and
`output_crop` c covers model pixels [(j + c) d, (j + c + 1) d). `output_problems` is the upload check's
view of the same rules: everything that stops a decoder from decoding a model's dry-run outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import shapely
from scipy import ndimage
from skimage.segmentation import watershed

from scanbridge.domain.errors import ModelInvalidError
from scanbridge.domain.models import DECODERS, OBJECT_KINDS, ModelSpec
from scanbridge.inference.nuclei import (
    Nuclei,
    Nucleus,
    NucleusParams,
    find_nuclei_columns,
    measure_nuclei_columns,
    params_for,
)
from scanbridge.inference.rows import Rows, take_rings

DEFAULT_OVERLAP = 64  # model pixels (objects.py's default tile overlap)
BOX_FORMATS = ("xyxy", "cxcywh")
DRAW = ("points", "boxes", "both")
RAYS_UNITS = ("input", "output")
HOVERNET_MPP = 0.25  # the resolution HoVer-Net's post-processing constants were tuned at (40x)

Keep = tuple[float, float, float, float]


@dataclass
class WindowObject:
    """One decoded object in window model pixels."""

    cx: float
    cy: float
    contour: np.ndarray  # (k, 2) x, y; a closed ring, first vertex not repeated
    nucleus: Nucleus | None = None  # shape / stain measurements (model px) where the decoder segments
    class_index: int | None = None  # labels[class_index]
    score: float | None = None  # detection / object probability
    class_fraction: float | None = None  # share of the object's pixels of its type (typed nuclei)


class WindowObjects(Rows[WindowObject]):
    """One window's objects column-wise (window model pixels): centroids, outlines back to back, and the
    nuclei's measurements (`Nuclei`), classes (-1: none), scores or type fractions where the decoder gives
    them. `self[i]` is object i as a `WindowObject`."""

    def __init__(self, *, cx: np.ndarray, cy: np.ndarray, coords: np.ndarray, offsets: np.ndarray,
                 nuclei: Nuclei | None = None, class_index: np.ndarray | None = None,
                 score: np.ndarray | None = None, class_fraction: np.ndarray | None = None) -> None:
        self.cx, self.cy, self.coords, self.offsets = cx, cy, coords, offsets
        self.nuclei, self.class_index, self.score, self.class_fraction = nuclei, class_index, score, class_fraction

    @classmethod
    def of_nuclei(cls, nuclei: Nuclei) -> WindowObjects:
        """Nuclei as objects (their centroids and outlines)."""
        return cls(cx=nuclei.cx, cy=nuclei.cy, coords=nuclei.coords, offsets=nuclei.offsets, nuclei=nuclei)

    def __len__(self) -> int:
        return len(self.cx)

    def row(self, i: int) -> WindowObject:
        """Object i as a WindowObject."""
        cls, score, fraction = self.class_index, self.score, self.class_fraction
        return WindowObject(cx=float(self.cx[i]), cy=float(self.cy[i]), contour=self.contour(i),
                            nucleus=self.nuclei[i] if self.nuclei is not None else None,
                            class_index=int(cls[i]) if cls is not None and cls[i] >= 0 else None,
                            score=float(score[i]) if score is not None else None,
                            class_fraction=float(fraction[i]) if fraction is not None else None)

    def contour(self, i: int) -> np.ndarray:
        """Object i's outline (k, 2)."""
        return self.coords[self.offsets[i]:self.offsets[i + 1]]

    def take(self, idx: np.ndarray) -> WindowObjects:
        """The objects at `idx` (ascending), in that order."""
        coords, offsets = take_rings(self.coords, self.offsets, idx)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return WindowObjects(cx=self.cx[idx], cy=self.cy[idx], coords=coords, offsets=offsets,
                             nuclei=self.nuclei.take(idx) if self.nuclei is not None else None,
                             class_index=pick(self.class_index), score=pick(self.score),
                             class_fraction=pick(self.class_fraction))


@dataclass(frozen=True)
class DecoderConfig:
    """The instance-decoder keys of a spec's `outputs`, parsed and checked."""

    decoder: str
    probability_channel: int | None
    output_crop: int
    downsample: int
    hv_output: str | None
    type_output: str | None
    rays_output: str | None
    rays_units: str
    nms_iou: float
    box_format: str
    draw: str
    overlap: int


def _int_key(outputs: dict[str, Any], key: str, problems: list[str], *, default: int | None) -> int | None:
    value = outputs.get(key, default)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(f"outputs.{key} must be an integer >= 0 (got {value!r})")
        return default
    return value


def _choice(outputs: dict[str, Any], key: str, choices: tuple[str, ...], default: str, problems: list[str]) -> str:
    value = outputs.get(key, default)
    if value not in choices:
        problems.append(f"outputs.{key} must be one of {list(choices)} (got {value!r})")
        return default
    return str(value)


def _name_key(outputs: dict[str, Any], key: str, problems: list[str]) -> str | None:
    value = outputs.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        problems.append(f"outputs.{key} must name an output of the model (got {value!r})")
        return None
    return value


def config_problems(spec: ModelSpec) -> tuple[DecoderConfig, list[str]]:
    """The spec's decoder configuration and what is wrong with it (values, missing keys)."""
    out = spec.outputs
    problems: list[str] = []
    decoder = spec.decoder if spec.decoder in DECODERS else "threshold"
    nms = out.get("nms_iou", 0.5 if decoder == "boxes" else 0.4)
    if isinstance(nms, bool) or not isinstance(nms, int | float) or not 0.0 < float(nms) <= 1.0:
        problems.append(f"outputs.nms_iou must be a number in (0, 1] (got {nms!r})")
        nms = 0.5
    config = DecoderConfig(
        decoder=decoder,
        probability_channel=_int_key(out, "probability_channel", problems, default=None),
        output_crop=_int_key(out, "output_crop", problems, default=0) or 0,
        downsample=spec.output_downsample,
        hv_output=_name_key(out, "hv_output", problems),
        type_output=_name_key(out, "type_output", problems),
        rays_output=_name_key(out, "rays_output", problems),
        rays_units=_choice(out, "rays_units", RAYS_UNITS, "input", problems),
        nms_iou=float(nms),
        box_format=_choice(out, "box_format", BOX_FORMATS, "xyxy", problems),
        draw=_choice(out, "draw", DRAW, "both", problems),
        overlap=_int_key(out, "tile_overlap", problems, default=DEFAULT_OVERLAP) or 0,
    )
    if decoder == "hovernet" and not config.hv_output:
        problems.append("decoder hovernet needs outputs.hv_output: the output with the horizontal/vertical maps")
    if decoder == "stardist" and not config.rays_output:
        problems.append("decoder stardist needs outputs.rays_output: the output with the radial distances")
    if config.type_output and not spec.labels:
        problems.append("outputs.type_output needs labels: labels[i] names type channel i")
    if decoder != "boxes" and config.output_crop * config.downsample > config.overlap:
        problems.append(f"outputs.tile_overlap ({config.overlap} model px) must be at least output_crop x "
                        f"output_downsample ({config.output_crop * config.downsample}): the map must cover "
                        "every tile's core")
    return config, problems


# --------------------------------------------------------------------------- the upload check


def _map_side_problem(name: str, shape: tuple[int, ...], size: int, config: DecoderConfig) -> str | None:
    """Why a map of `shape` (N, [C,] h, w) does not have the side the spec declares, with the likely fix."""
    want = size // config.downsample - 2 * config.output_crop
    h, w = shape[-2], shape[-1]
    if (h, w) == (want, want):
        return None
    fits = sorted(((size // ds - h) // 2, ds) for ds in range(1, 9)
                  if h == w and size % ds == 0 and size // ds >= h and (size // ds - h) % 2 == 0)
    hints = [f"output_downsample {ds}" + (f" with outputs.output_crop {crop}" if crop else "")
             for crop, ds in fits if (ds, crop) != (config.downsample, config.output_crop)][:2]
    fix = f"; declare {' or '.join(hints)}" if hints else ""
    return (f"output {name!r} is {h}x{w}; input_size {size} / output_downsample {config.downsample} - 2 x "
            f"output_crop {config.output_crop} = {want}x{want} expected{fix}")


def _channels_of(arr: np.ndarray) -> int:
    return 1 if arr.ndim == 3 else int(arr.shape[1])


def output_problems(spec: ModelSpec, outputs: dict[str, np.ndarray], *, input_size: int | None = None) -> list[str]:
    """What stops `spec`'s instance decoder from decoding these dry-run outputs (by output name); [] if none.

    `outputs` carry their batch axis (N, ...), as the session returns them; `input_size` is the tile side
    they were computed for (default `spec.input_size`). Region and heat-map kinds are not checked here.
    """
    if spec.kind not in OBJECT_KINDS:
        return []
    config, problems = config_problems(spec)
    size = input_size or spec.input_size
    primary = outputs.get(spec.output_name)
    if primary is None:
        problems.append(f"output {spec.output_name!r} not found (outputs: {sorted(outputs)})")
        return problems
    primary = np.asarray(primary)
    if config.decoder == "boxes":
        if primary.ndim != 3 or primary.shape[2] < 5:
            problems.append(f"output {spec.output_name!r} has shape {list(primary.shape)}; decoder boxes needs "
                            "(N, M, >=5) rows x1, y1, x2, y2, score[, class]")
        elif len(spec.labels) > 1 and primary.shape[2] < 6:
            problems.append(f"output {spec.output_name!r} has no class column (shape {list(primary.shape)}) but "
                            f"{len(spec.labels)} labels are declared: (N, M, 6) expected")
        return problems

    def map_check(name: str, arr: np.ndarray | None, *, channels: tuple[int, ...] | None = None,
                  at_least: int = 1, what: str = "") -> None:
        if arr is None:
            problems.append(f"output {name!r} not found (outputs: {sorted(outputs)})")
            return
        arr = np.asarray(arr)
        if arr.ndim not in (3, 4):
            problems.append(f"output {name!r} has shape {list(arr.shape)}; a map (N, C, h, w) expected")
            return
        side = _map_side_problem(name, arr.shape, size, config)
        if side:
            problems.append(side)
        c = _channels_of(arr)
        if channels is not None and c not in channels:
            problems.append(f"output {name!r} has {c} channels; {' or '.join(map(str, channels))} expected{what}")
        elif c < at_least:
            problems.append(f"output {name!r} has {c} channels; at least {at_least} expected{what}")

    pc = config.probability_channel
    if config.decoder == "hovernet" and pc is None:
        map_check(spec.output_name, primary, channels=(1, 2), what=" (nuclear probability: N, 2 or N, 1)")
    else:
        map_check(spec.output_name, primary, at_least=(pc or 0) + 1,
                  what=f" (probability_channel {pc or 0})" if pc else "")
    positive = spec.outputs.get("positive_channel")
    if isinstance(positive, int) and _channels_of(primary) <= positive:
        problems.append(f"output {spec.output_name!r} has {_channels_of(primary)} channels; positive_channel "
                        f"{positive} needs at least {positive + 1}")
    stain = spec.outputs.get("stain_output")
    if stain:
        map_check(str(stain), outputs.get(str(stain)))
    if config.decoder == "hovernet" and config.hv_output:
        map_check(config.hv_output, outputs.get(config.hv_output), channels=(2,),
                  what=" (horizontal then vertical distance maps)")
    if config.type_output:
        map_check(config.type_output, outputs.get(config.type_output), channels=(len(spec.labels),),
                  what=f" (one per label: {[lb.name for lb in spec.labels]})")
    if config.decoder == "stardist" and config.rays_output:
        map_check(config.rays_output, outputs.get(config.rays_output), at_least=3, what=" (radial distances)")
    return problems


# --------------------------------------------------------------------------- shared pieces


def _planes(out: np.ndarray) -> np.ndarray:
    return out[None] if out.ndim == 2 else out


def _minmax(a: np.ndarray) -> np.ndarray:
    """`a` scaled to [0, 1] (float32), as cv2.normalize's NORM_MINMAX: all 0 when `a` is flat."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(a)


def _odd(value: float, low: int, high: int) -> int:
    k = max(low, min(high, round(value)))
    return k if k % 2 else k + 1 if k < high else k - 1


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression of boxes (n, 4: x1, y1, x2, y2): indices kept, best score first.

    A box goes when its IoU with a kept box of the same class exceeds `iou` (torchvision's `batched_nms`
    rule). Overlapping pairs come from an STRtree of the boxes (for boxes, envelopes are exact), their
    IoUs are computed at once in numpy, and one pass in score order suppresses.
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    boxes = np.asarray(boxes, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    left, right = shapely.STRtree(shapely.box(*boxes.T)).query(shapely.box(*boxes.T))
    pairs = left != right
    if classes is not None:
        pairs &= classes[left] == classes[right]
    left, right = left[pairs], right[pairs]
    wi = np.minimum(boxes[left, 2], boxes[right, 2]) - np.maximum(boxes[left, 0], boxes[right, 0])
    hi = np.minimum(boxes[left, 3], boxes[right, 3]) - np.maximum(boxes[left, 1], boxes[right, 1])
    inter = np.clip(wi, 0, None) * np.clip(hi, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    over = inter > iou * np.maximum(area[left] + area[right] - inter, 1e-12)
    left, right = left[over], right[over]
    by_left = np.argsort(left, kind="stable")
    left, right = left[by_left], right[by_left]
    starts = np.searchsorted(left, np.arange(n + 1))
    suppressed = np.zeros(n, dtype=bool)
    kept: list[int] = []
    for i in order.tolist():
        if not suppressed[i]:
            kept.append(i)
            suppressed[right[starts[i]:starts[i + 1]]] = True
    return np.asarray(kept, dtype=np.intp)


def star_masks(oy: np.ndarray, ox: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels inside each star-convex polygon: (row0, col0, masks (n, P, P)) over P x P patches.

    Polygon i has its origin at (oy[i], ox[i]) (pixel-index coordinates: a pixel's centre is an integer)
    and vertices at distance dist[i, k] along angle 2 pi k / R (from +x towards +y). A pixel is inside when
    its centre is no further from the origin than the polygon's edge in its direction (the edge between
    the two rays around it, a straight segment): what scikit-image's `polygon` fills, for all at once.
    """
    n, n_rays = dist.shape
    reach = int(np.ceil(float(dist.max(initial=0.0)))) + 1
    side = 2 * reach + 1
    row0 = np.floor(oy).astype(np.int64) - reach
    col0 = np.floor(ox).astype(np.int64) - reach
    steps = np.arange(side)
    dy = (row0[:, None] + steps[None, :] - oy[:, None]).astype(np.float32)[:, :, None]  # (n, P, 1)
    dx = (col0[:, None] + steps[None, :] - ox[:, None]).astype(np.float32)[:, None, :]  # (n, 1, P)
    rho = np.hypot(dy, dx)
    delta = np.float32(2 * np.pi / n_rays)
    theta = np.arctan2(dy, dx)
    theta[theta < 0] += np.float32(2 * np.pi)
    k = np.minimum((theta / delta).astype(np.int64), n_rays - 1)
    t = theta - k.astype(np.float32) * delta
    dist = np.asarray(dist, dtype=np.float32)
    flat = k.reshape(n, -1)
    d0 = np.take_along_axis(dist, flat, axis=1).reshape(k.shape)
    d1 = np.take_along_axis(dist, (flat + 1) % n_rays, axis=1).reshape(k.shape)
    denom = d0 * np.sin(t) + d1 * np.sin(delta - t)
    edge = np.divide(d0 * d1 * np.sin(delta), denom, out=np.zeros_like(denom), where=denom > 1e-12)
    return row0, col0, rho <= edge


def star_labels(oy: np.ndarray, ox: np.ndarray, dist: np.ndarray, scores: np.ndarray, iou: float,
                shape: tuple[int, int], *, chunk: int = 256) -> tuple[np.ndarray, list[int]]:
    """StarDist's NMS and painting on the map's grid: the label image and the candidates kept (label k + 1
    is candidate kept[k]).

    Candidates (origins `oy`, `ox` in pixel-index coordinates, ray lengths `dist` (n, R) in pixels) are
    taken best score first; one goes when its pixels overlap a kept polygon's by more than `iou` (IoU of
    the pixels inside each polygon, `star_masks`); a kept one paints the pixels no better one holds, which
    is StarDist's `polygons_to_label` painting in increasing probability.
    """
    h, w = shape
    canvas = np.zeros(shape, dtype=np.int32)
    areas = [0]
    kept: list[int] = []
    order = np.argsort(-scores, kind="stable")
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        row0, col0, masks = star_masks(oy[part], ox[part], dist[part])
        side = masks.shape[1]
        for j, i in enumerate(part.tolist()):
            r0, c0 = int(row0[j]), int(col0[j])
            ra, rb, ca, cb = max(r0, 0), min(r0 + side, h), max(c0, 0), min(c0 + side, w)
            if ra >= rb or ca >= cb:
                continue
            inside = masks[j, ra - r0:rb - r0, ca - c0:cb - c0]
            size = int(np.count_nonzero(inside))
            if size == 0:
                continue
            view = canvas[ra:rb, ca:cb]
            hit = view[inside]
            owners = hit[hit > 0]
            if owners.size:
                labs, inter = np.unique(owners, return_counts=True)
                union = size + np.asarray(areas)[labs] - inter
                if (inter > iou * union).any():
                    continue
            kept.append(i)
            areas.append(size)
            view[inside & (view == 0)] = len(kept)
    return canvas, kept


class Decoder:
    """The common part: output-pixel -> window-model-pixel mapping and the nuclei parameters."""

    def __init__(self, spec: ModelSpec, config: DecoderConfig, model_mpp: float) -> None:
        self.spec = spec
        self.config = config
        self.scale = float(config.downsample)
        self.offset = float(config.output_crop * config.downsample)
        self.map_mpp = model_mpp * config.downsample
        self.params: NucleusParams = params_for(spec.outputs, spec.thresholds, self.map_mpp)

    @property
    def merges_across_tiles(self) -> bool:
        """Whether objects from neighbouring windows are merged by NMS (boxes) instead of the core rule."""
        return False

    def decode(self, outputs: dict[str, np.ndarray], keep: Keep | None = None) -> WindowObjects:
        """The objects of one window (`keep`: x0, y0, x1, y1 in window model px; objects outside may go).

        What it returns must not be a view of `outputs`: the object pipeline reuses those arrays for later
        tiles once the window is decoded (objects._Copies)."""
        raise NotImplementedError

    def _map_keep(self, keep: Keep | None) -> Keep | None:
        if keep is None:
            return None
        s, o = self.scale, self.offset
        return ((keep[0] - o) / s, (keep[1] - o) / s, (keep[2] - o) / s, (keep[3] - o) / s)

    def _to_model(self, nuclei: Nuclei) -> Nuclei:
        """Nuclei measured on the map, in window model pixels (the same object when the map is the input)."""
        s, o = self.scale, self.offset
        if s == 1.0 and o == 0.0:
            return nuclei
        return nuclei.scaled(s, o)

    def _stains(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        name = self.spec.outputs.get("stain_output")
        return None if not name or str(name) not in outputs else outputs[str(name)]

    def _probability(self, outputs: dict[str, np.ndarray], default_channel: int = 0) -> np.ndarray:
        planes = _planes(outputs[self.spec.output_name])
        pc = self.config.probability_channel
        return np.asarray(planes[default_channel if pc is None else pc], dtype=np.float32)

    def _objects(self, nuclei: Nuclei) -> WindowObjects:
        return WindowObjects.of_nuclei(self._to_model(nuclei))


class ThresholdDecoder(Decoder):
    """A probability map (channel `probability_channel`, default 0) thresholded and split by watershed."""

    def decode(self, outputs: dict[str, np.ndarray], keep: Keep | None = None) -> WindowObjects:
        """Nuclei of the thresholded map (today's path; `positive_channel` marks positive ones)."""
        planes = _planes(outputs[self.spec.output_name])
        pos = self.spec.outputs.get("positive_channel")
        positive = planes[int(pos)] if pos is not None and planes.shape[0] > int(pos) else None
        prob = self._probability(outputs)
        return self._objects(find_nuclei_columns(prob, self.params, stains=self._stains(outputs), positive=positive,
                                                 keep=self._map_keep(keep)))


def hovernet_labels(prob: np.ndarray, hv: np.ndarray, *, threshold: float = 0.5, map_mpp: float = HOVERNET_MPP,
                    min_size: float | None = None) -> np.ndarray:
    """HoVer-Net's instance map from a nuclear probability (h, w) and hv maps (2, h, w) in [-1, 1].

    As HoVer-Net's `process_np_hv` (and TIAToolbox's HoVerNet.postproc): foreground = prob >= threshold,
    the hv maps min-max normalised, their Sobel (x of the horizontal map, y of the vertical one) turned
    into an "energy" that is high on boundaries, markers = foreground minus high energy (holes filled,
    opened, small ones dropped), then a watershed of the blurred inverse energy from the markers inside
    the foreground. Kernel sizes (Sobel 21, opening 5, smallest object 10 px) are HoVer-Net's at
    0.25 µm/px, scaled to the map's pixel size.
    """
    scale = HOVERNET_MPP / max(map_mpp, 1e-6)
    small = max(2.0, 10.0 * scale * scale) if min_size is None else min_size
    blb = (prob >= threshold).astype(np.uint8)
    count, comp = cv2.connectedComponents(blb, connectivity=8, ltype=cv2.CV_32S)
    if count <= 1:
        return np.zeros(prob.shape, dtype=np.int32)
    sizes = np.bincount(comp.ravel(), minlength=count)
    blb = ((sizes >= small)[comp] & (comp > 0)).astype(np.uint8)
    h_dir, v_dir = _minmax(hv[0]), _minmax(hv[1])
    ksize = _odd(21 * scale, 3, 31)
    sobel_h = cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=ksize)
    sobel_v = cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=ksize)
    sobel_h, sobel_v = 1 - _minmax(sobel_h), 1 - _minmax(sobel_v)
    energy = np.maximum(np.maximum(sobel_h, sobel_v) - (1 - blb), 0)
    dist = -cv2.GaussianBlur((1.0 - energy) * blb, (3, 3), 0)
    marker = np.maximum(blb.astype(np.int32) - (energy >= 0.4), 0).astype(bool)
    marker = ndimage.binary_fill_holes(marker).astype(np.uint8)
    k = _odd(5 * scale, 1, 15)
    if k > 1:
        marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    count, markers = cv2.connectedComponents(marker, connectivity=8, ltype=cv2.CV_32S)
    sizes = np.bincount(markers.ravel(), minlength=count)
    markers[(sizes < small)[markers]] = 0
    return np.asarray(watershed(dist, markers, mask=blb.astype(bool)), dtype=np.int32)


def majority_types(labels: np.ndarray, types: np.ndarray, n_types: int, skip: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per label (index = label id): its most frequent type outside `skip` and that type's share of its pixels
    (-1 / 0 where every pixel is of a skipped type), as HoVer-Net picks an instance's type."""
    n = int(labels.max()) + 1
    counts = np.bincount((labels.astype(np.int64) * n_types + types).ravel(), minlength=n * n_types)
    counts = counts.reshape(n, n_types)
    totals = counts.sum(axis=1)
    usable = counts.copy()
    usable[:, sorted(t for t in skip if 0 <= t < n_types)] = 0
    best = usable.argmax(axis=1)
    share = usable[np.arange(n), best] / np.maximum(totals, 1)
    best[usable.max(axis=1) == 0] = -1
    return best, share


class HoverNetDecoder(Decoder):
    """HoVer-Net-style outputs: nuclear probability + hv maps (+ type map) -> (typed) nuclei."""

    def decode(self, outputs: dict[str, np.ndarray], keep: Keep | None = None) -> WindowObjects:
        """Watershed instances of the hv maps, measured like every nucleus; typed by the type map's majority."""
        primary = _planes(outputs[self.spec.output_name])
        prob = self._probability(outputs, default_channel=1 if primary.shape[0] == 2 else 0)
        hv = outputs[str(self.config.hv_output)]
        labels = hovernet_labels(prob, hv, threshold=self.params.threshold, map_mpp=self.map_mpp,
                                 min_size=max(2.0, self.params.min_area_px / 2))
        found = measure_nuclei_columns(labels, self.params, stains=self._stains(outputs), keep=self._map_keep(keep))
        objects = self._objects(found)
        if self.config.type_output and len(found):
            tmap = _planes(outputs[self.config.type_output])
            names = [lb.name for lb in self.spec.labels]
            skip = {names.index(b) for b in self.spec.background_labels}
            best, share = majority_types(labels, tmap.argmax(axis=0), tmap.shape[0], skip)
            objects.class_index = best[found.label].astype(np.int64)
            objects.class_fraction = share[found.label].astype(np.float64)
        return objects


class StarDistDecoder(Decoder):
    """StarDist-style outputs: object probability + R radial distances -> star-convex polygons.

    Ray k points at angle 2 pi k / R from +x towards +y (StarDist's `ray_angles` / `dist_to_coord`: row
    offset d sin(phi), column offset d cos(phi)). Distances are in model input pixels (StarDist's own
    convention, also with a subsampling grid) or, with `rays_units: output`, in output pixels. Every
    pixel above the probability threshold proposes a polygon centred on it; NMS keeps the most probable
    ones (`star_labels`), painted as StarDist's `polygons_to_label` paints them, and measured.
    """

    def decode(self, outputs: dict[str, np.ndarray], keep: Keep | None = None) -> WindowObjects:
        """Polygons above the threshold, NMS at `nms_iou` (default 0.4), measured on the map's grid."""
        prob = self._probability(outputs)
        rays = np.asarray(outputs[str(self.config.rays_output)], dtype=np.float32)
        threshold = float(self.spec.thresholds.get("probability", self.params.threshold))
        rows, cols = np.nonzero(prob > threshold)
        if rows.size == 0:
            return WindowObjects.of_nuclei(Nuclei.empty(0, False))
        scores = prob[rows, cols]
        dist = rays[:, rows, cols].T  # (n, R)
        if self.config.rays_units == "input":
            dist = dist / self.scale  # in map pixels
        # a map pixel's ray origin: its first model pixel's centre (StarDist samples its grid there), in
        # pixel-index coordinates of the map (pixel j's centre at j)
        shift = 0.5 / self.scale - 0.5
        labels, kept = star_labels(rows + shift, cols + shift, dist, scores, self.config.nms_iou, prob.shape)
        found = measure_nuclei_columns(labels, self.params, stains=self._stains(outputs), keep=self._map_keep(keep))
        objects = self._objects(found)
        objects.score = scores[np.asarray(kept, dtype=np.int64)[found.label - 1]].astype(np.float64)
        return objects


class BoxDecoder(Decoder):
    """Detector rows (M, >=5): x1, y1, x2, y2 (or cx, cy, w, h), score[, class] in the window's input pixels."""

    @property
    def merges_across_tiles(self) -> bool:
        """Boxes from overlapping windows are merged by NMS at level 0."""
        return True

    def decode(self, outputs: dict[str, np.ndarray], keep: Keep | None = None) -> WindowObjects:
        """Boxes scoring at least the threshold (`thresholds.score`, else the first threshold), valid and finite."""
        rows = np.asarray(outputs[self.spec.output_name], dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] < 5:
            raise ModelInvalidError(f"output {self.spec.output_name!r} has shape {list(rows.shape)} per tile; "
                                    "(M, >=5) expected", details={"problems": ["boxes shape"]})
        thresholds = self.spec.thresholds
        threshold = float(thresholds["score"] if "score" in thresholds else next(iter(thresholds.values()), 0.5))
        a, b, c, d, score = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
        if self.config.box_format == "cxcywh":
            a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
        cls = np.rint(rows[:, 5]).astype(np.int64) if rows.shape[1] >= 6 else np.zeros(len(rows), np.int64)
        n_labels = max(1, len(self.spec.labels))
        ok = np.isfinite(rows[:, :5]).all(axis=1) & (score >= threshold) & (c > a) & (d > b) \
            & (cls >= 0) & (cls < n_labels)
        if keep is not None:
            cx, cy = (a + c) / 2, (b + d) / 2
            ok &= (cx >= keep[0]) & (cx < keep[2]) & (cy >= keep[1]) & (cy < keep[3])
        i = np.flatnonzero(ok)
        a, b, c, d = a[i], b[i], c[i], d[i]
        rings = np.stack([np.column_stack([a, b]), np.column_stack([c, b]), np.column_stack([c, d]),
                          np.column_stack([a, d])], axis=1).reshape(-1, 2)
        return WindowObjects(cx=(a + c) / 2, cy=(b + d) / 2, coords=rings, offsets=np.arange(len(i) + 1) * 4,
                             class_index=cls[i], score=score[i])


DECODER_TYPES: dict[str, type[Decoder]] = {"threshold": ThresholdDecoder, "hovernet": HoverNetDecoder,
                                           "stardist": StarDistDecoder, "boxes": BoxDecoder}


def decoder_for(spec: ModelSpec, model_mpp: float) -> Decoder:
    """The decoder `spec` declares, at the model's pixel size (µm); ModelInvalidError when misconfigured."""
    config, problems = config_problems(spec)
    if problems:
        raise ModelInvalidError(f"the instance decoder of {spec.name!r} is misconfigured: {problems[0]}",
                                details={"problems": problems})
    return DECODER_TYPES[config.decoder](spec, config, model_mpp)


def output_names(spec: ModelSpec) -> list[str]:
    """The outputs a decoder reads besides the primary one (hv, type, rays, stains)."""
    keys = ("hv_output", "type_output", "rays_output", "stain_output")
    return [str(spec.outputs[k]) for k in keys if spec.outputs.get(k)]


def merge_boxes(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes (n, 4: x1, y1, x2, y2) kept by per-class NMS (level 0, across tile overlaps)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.intp)
    return np.sort(box_nms(boxes, scores, iou, classes))
