"""Model outputs to results: masks to level-0 polygons (shapely), features, summaries."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping

# the chain-code -> pixel-edge-middle table the nucleus outlines use (one way to outline a mask)
from scanbridge.inference.nuclei import edge_rings

#: rings back to back: (n, 2) float64 x, y and the offsets (k + 1) where each of the k rings starts and ends
Rings = tuple[np.ndarray, np.ndarray]


def mask_to_polygons(mask: np.ndarray, scale: float, bounds: tuple[int, int], *,
                     min_area: float = 0.0, simplify: float | None = None) -> list[Polygon]:
    """Polygons (with holes) of a boolean mask, in level-0 pixels (`scale` px per mask pixel).

    The mask's contours (`mask_rings`: marching squares' rings at 0.5) never cross, so each ring's nesting
    depth tells what it is: even depth an exterior, odd a hole of the ring just outside it. Depths and
    parents come from one STRtree query of a vertex of every ring against all rings (O(n log n) in the
    number of contours; folding them with symmetric_difference, as before, was quadratic).
    """
    if not mask.any():
        return []
    return _finished(_outlines(mask_rings(mask), scale, bounds), min_area=min_area, simplify=simplify)


class CodeMapPolygons:
    """`mask_to_polygons` of several masks of one uint8 code map, each mask the codes a 256-entry table
    passes (e.g. a probability map's levels): one framed image written for each, and a mask met again
    (two levels passing the same codes) traced once."""

    def __init__(self, codes: np.ndarray, scale: float, bounds: tuple[int, int]) -> None:
        self._codes = np.ascontiguousarray(codes, dtype=np.uint8)
        low, high, _, _ = cv2.minMaxLoc(self._codes) if self._codes.size else (0.0, -1.0, None, None)
        self._span = slice(int(low), int(high) + 1)  # the codes present lie in it
        self._background = np.ones((self._codes.shape[0] + 4, self._codes.shape[1] + 4), np.uint8)
        self.scale, self.bounds = scale, bounds
        self._traced: dict[bytes, np.ndarray] = {}

    def polygons(self, passes: np.ndarray, *, min_area: float = 0.0,
                 simplify: float | None = None) -> list[Polygon]:
        """`mask_to_polygons(passes[codes], ...)` for a boolean table `passes` of the 256 codes."""
        passes = np.asarray(passes, dtype=bool)
        if not passes[self._span].any():
            return []  # no code present passes: an empty mask
        key = passes.tobytes()
        if key not in self._traced:
            cv2.LUT(self._codes, (~passes).view(np.uint8), dst=self._background[2:-2, 2:-2])  # the frame stays 1
            self._traced[key] = _outlines(framed_ring_array(self._background), self.scale, self.bounds)
        return _finished(self._traced[key].copy(), min_area=min_area, simplify=simplify)


def _outlines(rings: Rings, scale: float, bounds: tuple[int, int]) -> np.ndarray:
    """The polygons of a mask's rings (mask pixels), scaled and clipped to the slide: an object array."""
    coords, offsets = rings
    sizes = np.diff(offsets)
    if not (sizes >= 4).all():  # a ring of fewer than 4 vertices encloses no area
        keep = sizes >= 4
        coords, sizes = coords[np.repeat(keep, sizes)], sizes[keep]
    geoms = _nest(coords * scale, sizes)
    if not geoms.size:
        return geoms
    # polygon by polygon (shapely's array functions): clipped only where they pass the slide's edge
    frame = box(0, 0, bounds[0], bounds[1])
    outside = ~shapely.covers(frame, geoms)
    geoms[outside] = shapely.intersection(geoms[outside], frame)
    return geoms


def _finished(geoms: np.ndarray, *, min_area: float, simplify: float | None) -> list[Polygon]:
    """`_outlines`' polygons Douglas-Peucker simplified, repaired only where that (or the mask) made them
    invalid, those smaller than `min_area` dropped (`geoms` is changed)."""
    if not geoms.size:
        return []
    if simplify:
        geoms = shapely.simplify(geoms, simplify, preserve_topology=False)
    invalid = ~shapely.is_valid(geoms)
    geoms[invalid] = shapely.make_valid(geoms[invalid])
    return [p for g in geoms for p in _polygons_of(g) if p.area >= min_area]


def mask_rings(mask: np.ndarray) -> Rings:
    """Every boundary ring of a boolean mask, x, y in mask pixels (pixel j spans [j, j + 1)), back to back.

    The rings scikit-image's `find_contours(mask, 0.5)` draws (a vertex at the middle of every pixel edge
    between the mask and the rest; foreground 4-connected, background 8-connected), traced by OpenCV's
    border following (C++, ~5x faster on a slide's mask): OpenCV's foreground is 8-connected, so it
    traces the *background* (framed, so the glass around is one region) and its pixel chains become
    edge-middle rings as the nucleus outlines are (inference/nuclei.py's chain-code table).
    """
    inside = np.asarray(mask, dtype=bool)
    background = np.ones((inside.shape[0] + 4, inside.shape[1] + 4), np.uint8)  # framed by 2 px of glass
    np.logical_not(inside, out=background[2:-2, 2:-2].view(bool))  # (np.pad: 5x the time)
    return framed_ring_array(background)


def framed_ring_array(background: np.ndarray) -> Rings:
    """`mask_rings` of the mask whose complement is `background` (uint8, non-zero off the mask) inside a
    frame of 2 background pixels, in mask pixels, back to back: every contour's ring in one pass
    (nuclei.edge_rings in the follower's order), not one numpy call per ring."""
    contours, _ = cv2.findContours(background, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros((0, 2)), np.zeros(1, dtype=np.int64)
    h, w = background.shape
    points = np.concatenate(contours).reshape(-1, 2)
    sizes = np.array([len(c) for c in contours], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    lo, hi = np.minimum.reduceat(points, starts), np.maximum.reduceat(points, starts)
    frame = (lo[:, 0] == 0) & (lo[:, 1] == 0) & (hi[:, 0] == w - 1) & (hi[:, 1] == h - 1)  # its outer border
    chains = [contours[i].reshape(-1, 2) for i in np.flatnonzero(~frame).tolist()]
    if not chains:
        return np.zeros((0, 2)), np.zeros(1, dtype=np.int64)
    ring2, offsets = edge_rings(chains, reverse=False)
    return ring2 * 0.5 - 1.5, offsets  # doubled, padded pixel centres -> mask pixel edges


def _nest(coords: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Polygons (an object array) from non-crossing closed rings back to back (`sizes` vertices each):
    exteriors at even nesting depth, each with its holes."""
    if not sizes.size:
        return np.empty(0, dtype=object)
    rings = shapely.linearrings(coords, indices=np.repeat(np.arange(sizes.size), sizes))
    shells = shapely.polygons(rings)
    areas = shapely.area(shells)
    usable = np.flatnonzero(areas > 0)
    if usable.size == 0:
        return np.empty(0, dtype=object)
    rings, shells, areas = rings[usable], shells[usable], areas[usable]
    # a ring's first vertex lies on no other ring: strictly inside or outside each of them. The tree holds
    # the points and each ring queries it (shapely prepares the query geometry: fast point-in-polygon)
    firsts = np.cumsum(sizes) - sizes
    tree = shapely.STRtree(shapely.points(coords[firsts[usable]]))
    outer, inner = tree.query(shells, predicate="contains_properly")
    depth = np.bincount(inner, minlength=len(shells))
    parent = np.full(len(shells), -1)
    if inner.size:  # the parent is the smallest container: last of each ring's containers by falling area
        order = np.lexsort((-areas[outer], inner))
        ins, outs = inner[order], outer[order]
        last = np.append(np.flatnonzero(np.diff(ins)), ins.size - 1)
        parent[ins[last]] = outs[last]
    # one polygon per exterior: its ring, then its holes' rings in their order (shapely.polygons by index)
    exterior = depth % 2 == 0
    polygon_of = np.cumsum(exterior) - 1  # an exterior's polygon, in the exteriors' order
    owner = np.where(exterior, polygon_of, polygon_of[parent])
    order = np.lexsort((np.arange(len(shells)), ~exterior, owner))
    return np.asarray(shapely.polygons(rings[order], indices=owner[order]))


def _polygons_of(geom: Any) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty else []
    if isinstance(geom, MultiPolygon):
        return [g for g in geom.geoms if not g.is_empty]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _polygons_of(g)]
    return []


#: Ring orientation of every Polygon written (RFC 7946 section 3.1.6, the right-hand rule): exteriors
#: counter-clockwise and holes clockwise *as the coordinates read* (x, then y, y growing upwards), which
#: is what GeoJSON validators and shapely compute: an exterior's shoelace area sum(x_i*y_i+1 - x_i+1*y_i)
#: is positive, a hole's negative. In level-0 pixel space, where y grows downwards, an exterior therefore
#: runs clockwise on screen.
ORIENTATION = "exterior: positive signed area (counter-clockwise with y up); holes: negative"


def _rounded(geoms: list[Polygon]) -> list[dict[str, Any]]:
    """Each polygon's GeoJSON geometry: snapped to the 0.01 grid (set_precision), oriented (ORIENTATION), its
    coordinates rounded as `_lists` rounds them. The polygons' every coordinate is rounded in one pass
    (`rounded`: round's values, vectorised) and shapely's steps run over all of them at once."""
    oriented = shapely.orient_polygons(shapely.set_precision(_objects(geoms), 0.01), exterior_cw=False)
    plain = (shapely.get_type_id(oriented) == shapely.GeometryType.POLYGON) & ~shapely.is_empty(oriented)
    out: list[dict[str, Any]] = [{} for _ in geoms]
    for i in np.flatnonzero(~plain).tolist():  # what precision made of the others (a MultiPolygon, nothing)
        geo = mapping(oriented[i])
        out[i] = {"type": geo["type"], "coordinates": _lists(geo["coordinates"])}
    polygons = np.flatnonzero(plain)
    if polygons.size:
        # every ring (exterior, then holes) of every polygon, and every ring's coordinates, in order
        rings, ring_owner = shapely.get_rings(oriented[polygons], return_index=True)
        xy, ring_of = shapely.get_coordinates(rings, return_index=True)
        values = rounded(xy.reshape(-1), 2).reshape(xy.shape).tolist()
        ends = np.cumsum(np.bincount(ring_of, minlength=len(rings))).tolist()
        for i in polygons.tolist():
            out[i] = {"type": "Polygon", "coordinates": []}
        start = 0
        for owner, end in zip(polygons[ring_owner].tolist(), ends, strict=True):
            out[owner]["coordinates"].append(values[start:end])
            start = end
    return out


def _objects(geoms: list[Any]) -> np.ndarray:
    """A list of geometries as the 1-d object array shapely's functions take."""
    array = np.empty(len(geoms), dtype=object)
    array[:] = geoms
    return array


def _lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (int, float)):
            return [round(float(v), 2) for v in value]
        return [_lists(v) for v in value]
    return value


def hex_to_rgb(colour: str) -> list[int]:
    """'#rrggbb' -> [r, g, b]."""
    c = colour.lstrip("#")
    return [int(c[i:i + 2], 16) for i in (0, 2, 4)]


def polygon_feature(poly: Polygon, *, annotation_type: str, class_name: str, colour: str,
                    measurements: dict[str, float], object_type: str = "annotation",
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A platform Feature that QuPath imports too (id, objectType, classification, measurements)."""
    return geometry_feature(*polygon_geometry(poly), annotation_type=annotation_type, class_name=class_name, colour=colour,
                            measurements=measurements, object_type=object_type, extra=extra)


def polygon_geometry(poly: Polygon) -> tuple[dict[str, Any], list[float]]:
    """A Polygon's GeoJSON geometry and bbox, coordinates rounded to 0.01."""
    return polygon_geometries([poly])[0]


def polygon_geometries(polys: list[Polygon]) -> list[tuple[dict[str, Any], list[float]]]:
    """`polygon_geometry` of each polygon, all at once."""
    if not polys:
        return []
    boxes = rounded(shapely.bounds(_objects(polys)).reshape(-1), 2).reshape(-1, 4).tolist()
    return list(zip(_rounded(polys), boxes, strict=True))


MEASUREMENT_DIGITS = 4  # a feature's measurements are rounded to this many decimals


def geometry_feature(geometry: dict[str, Any], bbox: list[float], *, annotation_type: str, class_name: str,
                     colour: str, measurements: dict[str, float], object_type: str = "annotation",
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`polygon_feature` for a GeoJSON geometry (coordinates already rounded to 0.01) and its bbox."""
    props: dict[str, Any] = {
        "annotation_type": annotation_type,
        "objectType": object_type,
        "classification": {"name": class_name, "color": hex_to_rgb(colour)},
        "measurements": {k: round(float(v), MEASUREMENT_DIGITS) for k, v in measurements.items()},
    }
    props.update(extra or {})
    return {"type": "Feature", "id": str(uuid.uuid4()), "bbox": bbox, "geometry": geometry, "properties": props}


class FeatureText:
    """The JSON text of `geometry_feature`'s features of one kind (annotation type, class, colour), written
    from parts: what is the same for each is encoded once, each feature's id, bbox, geometry and
    measurements are filled in. `line(...)` is `json.dumps(geometry_feature(...))` character for character."""

    _MARK = "\x00"

    def __init__(self, *, annotation_type: str, class_name: str, colour: str, object_type: str = "annotation") -> None:
        skeleton = geometry_feature({}, [], annotation_type=annotation_type, class_name=class_name, colour=colour,
                                    measurements={}, object_type=object_type)
        skeleton.update(id=self._MARK, bbox=self._MARK, geometry=self._MARK)
        skeleton["properties"]["measurements"] = self._MARK
        self._parts = json.dumps(skeleton).split(json.dumps(self._MARK))

    def line(self, bbox: list[float], geometry: dict[str, Any], measurements: str) -> str:
        """One feature's text: a new id, `bbox` and `geometry` (as json writes them) and its measurements' text
        (`measurements_text`)."""
        p = self._parts
        if list(geometry) == ["type", "coordinates"]:  # json.dumps's text of the dict, from its members' text
            geo = f'{{"type": {json.dumps(geometry["type"])}, "coordinates": {_list_text(geometry["coordinates"])}}}'
        else:
            geo = json.dumps(geometry)
        return f'{p[0]}"{uuid.uuid4()}"{p[1]}{_list_text(bbox)}{p[2]}{geo}{p[3]}{measurements}{p[4]}'


def _list_text(value: list[Any]) -> str:
    """`json.dumps` of nested lists of numbers: their repr (the same text where every float is finite;
    only nan and inf put an "n" in a float's repr), else json.dumps itself."""
    text = repr(value)
    return text if "n" not in text else json.dumps(value)


class MeasurementsText:
    """`json.dumps` of measurement dicts with the keys `keys`, their values already rounded as `geometry_feature`
    rounds them (`rounded`, MEASUREMENT_DIGITS): the keys' text is made once."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self._texts = [json.dumps(k) + ": " for k in keys]

    def __call__(self, values: list[float]) -> str:
        """The text of `dict(zip(keys, values))`."""
        if all(map(math.isfinite, values)):  # json writes a finite float as repr does
            return "{" + ", ".join(map(str.__add__, self._texts, map(float.__repr__, values))) + "}"
        return json.dumps(dict(zip(self.keys, values, strict=True)))


def rounded(values: np.ndarray, digits: int) -> np.ndarray:
    """`round(v, digits)` of every float64 value, bit for bit, vectorised.

    Python's round is correctly rounded (the decimal nearest the exact value, ties to even, then the double
    nearest that decimal). rint(v * 10^d) / 10^d gives the same wherever v * 10^d, which the product may be
    off by half an ulp, lies more than an ulp away from a half-integer (and below 2^52): then rint picks the
    same integer N, and IEEE division gives the double nearest N / 10^d. The few others (and NaN, inf) go
    through round itself.
    """
    scale = 10.0 ** digits
    y = values * scale
    r = np.rint(y)
    out = r / scale
    with np.errstate(invalid="ignore"):
        safe = (np.abs(np.abs(y - r) - 0.5) > np.spacing(np.abs(y))) & (np.abs(y) < 2.0 ** 52)
    for i in np.flatnonzero(~safe).tolist():
        out[i] = round(float(values[i]), digits)
    return out


def region_features(polygons: list[Polygon], *, class_name: str, colour: str,
                    um2_per_px: float | None) -> tuple[list[dict[str, Any]], float]:
    """One annotation Feature per region polygon (area in px², and in µm² / mm² with a pixel size), and
    the regions' total area in level-0 px²."""
    features: list[dict[str, Any]] = []
    total_px = 0.0
    for poly, (geometry, bbox) in zip(polygons, polygon_geometries(polygons), strict=True):
        area_px = float(poly.area)
        total_px += area_px
        measurements = {"Area px^2": area_px}
        if um2_per_px:
            measurements["Area µm^2"] = area_px * um2_per_px
            measurements["Area mm^2"] = area_px * um2_per_px / 1e6
        features.append(geometry_feature(geometry, bbox, annotation_type=class_name.lower(), class_name=class_name,
                                         colour=colour, measurements=measurements))
    return features, total_px


def heatmap_feature(levels: list[float], colours: list[str], polygons_per_level: list[list[Polygon]]) -> dict[str, Any]:
    """The platform's heat map: one GeometryCollection of Polygons, a colour per contour level."""
    # each polygon's outline without its holes
    exteriors = shapely.polygons(shapely.get_exterior_ring(_objects([p for polys in polygons_per_level for p in polys])))
    geometries = _rounded(list(exteriors))
    geometry_levels = [i for i, polys in enumerate(polygons_per_level) for _ in polys]
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "GeometryCollection", "geometries": geometries},
        "properties": {"annotation_type": "heatmap", "objectType": "annotation",
                       "contour_colors": list(colours), "contour_levels": list(levels),
                       "geometry_levels": geometry_levels},
    }
