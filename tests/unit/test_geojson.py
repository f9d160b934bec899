"""The one GeoJSON walk (domain/geojson.py): features of any source, and each geometry's polygons, rings, points."""

from __future__ import annotations

from typing import Any

import pytest

from scanbridge.domain import geojson as gj
from scanbridge.domain.feature_spool import FeatureSpool

SQUARE = [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0], [0.0, 0.0]]
HOLE = [[1.0, 1.0], [1.0, 2.0], [2.0, 2.0], [1.0, 1.0]]
FAR = [[10.0, 10.0], [12.0, 10.0], [12.0, 12.0], [10.0, 10.0]]


def _feature(geometry: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def test_features_come_from_a_collection_a_single_feature_or_a_spool_in_order() -> None:
    # GIVEN three features, as a FeatureCollection (with a stray non-object), as a spool, and one alone
    feats = [_feature({"type": "Point", "coordinates": [i, i]}, annotation_type=f"a{i}") for i in range(3)]
    spool = FeatureSpool()
    for f in feats:
        spool.append(f)
    # WHEN each source is walked
    from_fc = list(gj.features({"type": "FeatureCollection", "features": [feats[0], "junk", *feats[1:]]}))
    from_spool = list(gj.features(spool))
    alone = list(gj.features(feats[1]))
    # THEN every source gives its features in order, the non-object skipped; None and {} give none
    assert from_fc == feats and from_spool == feats and alone == [feats[1]]
    assert list(gj.features(None)) == [] and list(gj.features({"type": "FeatureCollection"})) == []
    spool.close()


def test_polygons_rings_and_points_of_each_geometry_type() -> None:
    # GIVEN a polygon with a hole, a two-part MultiPolygon, points and a line
    poly = {"type": "Polygon", "coordinates": [SQUARE, HOLE]}
    multi = {"type": "MultiPolygon", "coordinates": [[SQUARE, HOLE], [FAR]]}
    point, many = {"type": "Point", "coordinates": [3, 4]}, {"type": "MultiPoint", "coordinates": [[1, 2], [5, 6]]}
    line = {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}
    # WHEN / THEN polygons keep [exterior, *holes]; exteriors drop holes; rings list both, polygon by polygon
    assert gj.polygons(poly) == [[SQUARE, HOLE]] and gj.polygons(multi) == [[SQUARE, HOLE], [FAR]]
    assert gj.exteriors(multi) == [SQUARE, FAR] and gj.rings(multi) == [SQUARE, HOLE, FAR]
    # AND points come only from Point / MultiPoint, polygons only from Polygon / MultiPolygon
    assert gj.points(point) == [[3, 4]] and gj.points(many) == [[1, 2], [5, 6]] and gj.points(poly) == []
    assert gj.polygons(line) == [] and gj.polygons(point) == []
    # AND positions cover every type, nested collections included, and refuse an unknown one
    nested = {"type": "GeometryCollection", "geometries": [point, {"type": "GeometryCollection", "geometries": [line]}]}
    assert gj.positions(nested) == [[3, 4], [0, 0], [1, 1]]
    assert len(gj.positions(multi)) == len(SQUARE) + len(HOLE) + len(FAR)
    with pytest.raises(ValueError, match="Circle"):
        gj.positions({"type": "Circle", "coordinates": [0, 0]})


def test_heat_map_parts_and_class_names() -> None:
    # GIVEN a heat map (a GeometryCollection of polygons, one nested) and features with and without classes
    heat = {"type": "GeometryCollection", "geometries": [
        {"type": "Polygon", "coordinates": [SQUARE]},
        {"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [FAR]}]}]}
    named = _feature(heat, annotation_type="heatmap", classification={"name": "Tumour"})
    typed = _feature({"type": "Point", "coordinates": [0, 0]}, annotation_type="mitosis")
    bare = {"type": "Feature", "geometry": None}
    # WHEN its parts are walked / THEN each member polygon comes out, flattened, in order
    assert [gj.exteriors(p) for p in gj.parts(heat)] == [[SQUARE], [FAR]]
    assert list(gj.parts({"type": "Point", "coordinates": [1, 1]})) == [{"type": "Point", "coordinates": [1, 1]}]
    # AND a heat map's members come with their contour level (geometry_levels; 0 where it has none)
    leveled = {**named, "properties": {**named["properties"], "geometry_levels": [2]}}
    assert gj.is_heatmap(named) and not gj.is_heatmap(typed)
    assert [(lv, gj.exteriors(p)) for lv, p in gj.heatmap_parts(leveled)] == [(2, [SQUARE]), (0, [FAR])]
    # AND the class is the classification's name, else the annotation type, else "object"
    assert [gj.class_name(f) for f in (named, typed, bare)] == ["Tumour", "mitosis", "object"]
    assert gj.geometry(bare) == {} and gj.properties(bare) == {} and gj.geometry_type(bare) is None
