"""Model outputs to results: masks to level-0 polygons (shapely), features, summaries."""

from __future__ import annotations

import uuid
from functools import reduce
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping
from skimage import measure


def mask_to_polygons(mask: np.ndarray, scale: float, bounds: tuple[int, int], *,
                     min_area: float = 0.0, simplify: float | None = None) -> list[Polygon]:
    """Polygons (with holes) of a boolean mask, in level-0 pixels (`scale` px per mask pixel)."""
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float32), 1)
    rings = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        xy = np.column_stack([contour[:, 1] - 1 + 0.5, contour[:, 0] - 1 + 0.5]) * scale
        ring = Polygon(xy)
        if not ring.is_valid:
            ring = shapely.make_valid(ring)
        if not ring.is_empty and ring.area > 0:
            rings.append(ring)
    if not rings:
        return []
    # Contours of a binary mask nest without crossing: their symmetric difference is the region with holes.
    region = reduce(lambda a, b: a.symmetric_difference(b), rings)
    region = region.intersection(box(0, 0, bounds[0], bounds[1]))
    if simplify:
        region = region.simplify(simplify, preserve_topology=True)
    region = shapely.make_valid(region)
    polygons = _polygons_of(region)
    return [p for p in polygons if p.area >= min_area]


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


def _rounded(geom: Polygon) -> dict[str, Any]:
    geo = mapping(shapely.orient_polygons(shapely.set_precision(geom, 0.01), exterior_cw=False))
    return {"type": geo["type"], "coordinates": _lists(geo["coordinates"])}


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
    x1, y1, x2, y2 = poly.bounds
    return _rounded(poly), [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)]


def geometry_feature(geometry: dict[str, Any], bbox: list[float], *, annotation_type: str, class_name: str,
                     colour: str, measurements: dict[str, float], object_type: str = "annotation",
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`polygon_feature` for a GeoJSON geometry (coordinates already rounded to 0.01) and its bbox."""
    props: dict[str, Any] = {
        "annotation_type": annotation_type,
        "objectType": object_type,
        "classification": {"name": class_name, "color": hex_to_rgb(colour)},
        "measurements": {k: round(float(v), 4) for k, v in measurements.items()},
    }
    props.update(extra or {})
    return {"type": "Feature", "id": str(uuid.uuid4()), "bbox": bbox, "geometry": geometry, "properties": props}


def heatmap_feature(levels: list[float], colours: list[str], polygons_per_level: list[list[Polygon]]) -> dict[str, Any]:
    """The platform's heat map: one GeometryCollection of Polygons, a colour per contour level."""
    geometries: list[dict[str, Any]] = []
    geometry_levels: list[int] = []
    for i, polys in enumerate(polygons_per_level):
        for p in polys:
            geometries.append(_rounded(Polygon(p.exterior.coords)))
            geometry_levels.append(i)
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "GeometryCollection", "geometries": geometries},
        "properties": {"annotation_type": "heatmap", "objectType": "annotation",
                       "contour_colors": list(colours), "contour_levels": list(levels),
                       "geometry_levels": geometry_levels},
    }
