"""The per-object CSV (`objects.csv`, the `csv` export): one row per object feature, stdlib only.

Written row by row from a FeatureSource (a FeatureCollection or a result's spool), in two passes: the
measurement names first (the header is their union, in the order met), then the rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import IO, Any

from scanbridge.domain import geojson as gj

NOT_OBJECTS = frozenset({"heatmap"})  # features that are drawings, not measured objects
OBJECT_GEOMETRIES = gj.POLYGONAL | gj.PUNCTUAL


def object_features(source: gj.FeatureSource) -> Iterator[dict[str, Any]]:
    """The features that are objects (everything but heat maps), in GeoJSON order, one at a time: row n of
    the CSV is label n of the label mask."""
    for f in gj.features(source):
        if gj.properties(f).get("annotation_type") not in NOT_OBJECTS and gj.geometry_type(f) in OBJECT_GEOMETRIES:
            yield f


def _ring_area_centroid(ring: list[list[float]]) -> tuple[float, float, float]:
    """Shoelace area (absolute) and centroid of one closed or open ring."""
    pts = ring[:-1] if len(ring) > 1 and ring[0] == ring[-1] else ring
    a = cx = cy = 0.0
    for i, (x0, y0) in enumerate(pts):
        x1, y1 = pts[(i + 1) % len(pts)]
        cross = x0 * y1 - x1 * y0
        a += cross
        cx += (x0 + x1) * cross
        cy += (y0 + y1) * cross
    if abs(a) < 1e-12:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return 0.0, sum(xs) / max(len(xs), 1), sum(ys) / max(len(ys), 1)
    return abs(a) / 2.0, cx / (3.0 * a), cy / (3.0 * a)


def feature_centroid(geometry: dict[str, Any]) -> tuple[float, float] | None:
    """Area-weighted centroid of a polygon feature's outer rings, or the mean of its points."""
    rings = gj.exteriors(geometry)
    if rings:
        parts = [_ring_area_centroid(r) for r in rings]
        total = sum(p[0] for p in parts)
        if total > 0:
            return sum(p[0] * p[1] for p in parts) / total, sum(p[0] * p[2] for p in parts) / total
        return parts[0][1], parts[0][2]
    pts = gj.points(geometry)
    if pts:
        return sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return None


def write_csv(out: IO[bytes], source: gj.FeatureSource) -> None:
    """One CSV row per object feature, as UTF-8 into `out`: id, label (its value in labels.npy), class,
    centroid, bbox, measurements. `source` is read twice (the header's measurement names, then the rows)."""
    names: dict[str, None] = {}
    for f in object_features(source):
        names.update(dict.fromkeys(gj.properties(f).get("measurements") or {}))
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    try:
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["object_id", "label", "annotation_type", "class", "object_type", "geometry_type",
                         "centroid_x", "centroid_y", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", *names])
        for label, f in enumerate(object_features(source), start=1):
            props = gj.properties(f)
            geometry = gj.geometry(f)
            centre = feature_centroid(geometry)
            bbox = f.get("bbox") or _bbox(geometry)
            measurements = props.get("measurements") or {}
            writer.writerow([f.get("id", ""), label, props.get("annotation_type", ""), gj.class_name(f),
                             props.get("objectType", ""), geometry.get("type", ""),
                             *(_num(v) for v in (centre or ("", ""))), *(_num(v) for v in bbox),
                             *(_num(measurements.get(n, "")) for n in names)])
        text.flush()
    finally:
        text.detach()  # `out` stays open (a dropped wrapper would close it): it is the caller's



def _num(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _bbox(geometry: dict[str, Any]) -> list[Any]:
    pts = [p for r in gj.exteriors(geometry) for p in r] or gj.points(geometry)
    if not pts:
        return ["", "", "", ""]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs), max(ys)]
