"""GeoJSON walked in one place: a FeatureCollection's features and each geometry's polygons, rings, points.

Every reader of the results' GeoJSON (exports, overlay, evaluation, the platform checks) goes through these
functions instead of indexing `features` / `geometry` / `coordinates` itself. Coordinates are level-0
pixels (x, y); a polygon is `[exterior, *holes]`; a heat map is a GeometryCollection of polygons
(`parts` walks its members). Stdlib only: the API Lambda reads GeoJSON too.

A `FeatureSource` is what `features` walks: a FeatureCollection (or one Feature) as dicts, or an iterable
of features that can be walked again, such as a result's FeatureSpool (the features as JSON text, one dict
alive at a time). Writers that need two passes (the CSV's header, then its rows) walk it twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

Position = list[float]
Ring = list[Position]
PolygonRings = list[Ring]  # exterior first, then its holes

POLYGONAL = frozenset({"Polygon", "MultiPolygon"})
PUNCTUAL = frozenset({"Point", "MultiPoint"})

#: a FeatureCollection / Feature as dicts, or re-iterable features (a FeatureSpool, a list); None: no features
FeatureSource = dict[str, Any] | Iterable[dict[str, Any]] | None


def features(source: FeatureSource) -> Iterator[dict[str, Any]]:
    """The features of a FeatureCollection, of one Feature, or of an iterable of features (a FeatureSpool),
    one at a time; none for None or a collection without features. Entries that are not objects are skipped."""
    if source is None:
        return
    items: Iterable[Any]
    if isinstance(source, dict):
        items = [source] if source.get("type") == "Feature" else source.get("features") or []
    else:
        items = source
    for item in items:
        if isinstance(item, dict):
            yield item


def geometry(feature: Mapping[str, Any]) -> dict[str, Any]:
    """A feature's geometry ({} when it has none)."""
    geom = feature.get("geometry")
    return geom if isinstance(geom, dict) else {}


def properties(feature: Mapping[str, Any]) -> dict[str, Any]:
    """A feature's properties ({} when it has none)."""
    props = feature.get("properties")
    return props if isinstance(props, dict) else {}


def geometry_type(feature: Mapping[str, Any]) -> str | None:
    """The type of a feature's geometry (None without one)."""
    kind = geometry(feature).get("type")
    return kind if isinstance(kind, str) else None


def class_name(feature: Mapping[str, Any]) -> str:
    """A feature's class: its classification's name, else its annotation_type, else "object"."""
    props = properties(feature)
    cls = props.get("classification") or {}
    return str(cls.get("name") or props.get("annotation_type") or "object")


def parts(geom: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The simple geometries of `geom`: itself, or every member of a GeometryCollection (nested ones too)."""
    if geom.get("type") == "GeometryCollection":
        for member in geom.get("geometries") or []:
            if isinstance(member, dict):
                yield from parts(member)
    else:
        yield geom


def is_heatmap(feature: Mapping[str, Any]) -> bool:
    """Whether the feature is the platform's heat map (a GeometryCollection of contour polygons)."""
    return geometry_type(feature) == "GeometryCollection"


def heatmap_parts(feature: Mapping[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(contour level, member geometry) of each member of a heat map; the level indexes the feature's
    `contour_levels` / `contour_colors` (`geometry_levels[i]`, 0 when missing)."""
    levels = properties(feature).get("geometry_levels") or []
    for i, member in enumerate(parts(geometry(feature))):
        yield (int(levels[i]) if i < len(levels) else 0), member


def polygons(geom: Mapping[str, Any]) -> list[PolygonRings]:
    """The polygons of a Polygon / MultiPolygon, each `[exterior, *holes]` ([] for any other type)."""
    kind, coords = geom.get("type"), geom.get("coordinates") or []
    if kind == "Polygon":
        return [list(coords)] if coords else []
    if kind == "MultiPolygon":
        return [list(poly) for poly in coords if poly]
    return []


def exteriors(geom: Mapping[str, Any]) -> list[Ring]:
    """The outer ring of each polygon of a Polygon / MultiPolygon."""
    return [poly[0] for poly in polygons(geom)]


def rings(geom: Mapping[str, Any]) -> list[Ring]:
    """Every ring (exteriors and holes) of a Polygon / MultiPolygon, polygon by polygon."""
    return [ring for poly in polygons(geom) for ring in poly]


def points(geom: Mapping[str, Any]) -> list[Position]:
    """The positions of a Point / MultiPoint ([] for any other type)."""
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind == "Point":
        return [coords] if coords else []
    if kind == "MultiPoint":
        return list(coords or [])
    return []


def positions(geom: Mapping[str, Any]) -> list[Position]:
    """Every position of any GeoJSON geometry; ValueError for an unknown type."""
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind in PUNCTUAL:
        return points(geom)
    if kind == "LineString":
        return list(coords or [])
    if kind == "MultiLineString":
        return [p for line in coords or [] for p in line]
    if kind in POLYGONAL:
        return [p for ring in rings(geom) for p in ring]
    if kind == "GeometryCollection":
        return [p for member in geom.get("geometries") or [] for p in positions(member)]
    raise ValueError(f"unknown geometry type {kind!r}")
