"""GeoJSON rings follow RFC 7946's right-hand rule as validators compute it (issue #16): every exterior has a
positive shoelace area over (x, y) as written (counter-clockwise with y up), every hole a negative one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.readers.memory import MemoryReader
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.postprocess import mask_to_polygons, polygon_geometry
from scanbridge.inference.runner import ModelLoader
from tests.conftest import fixture_path


def _signed_area(ring: list[list[float]]) -> float:
    pts = ring[:-1] if ring[0] == ring[-1] else ring
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True)) / 2.0


def _polygons(geometry: dict[str, Any]) -> list[list[list[list[float]]]]:
    kind = geometry["type"]
    if kind == "Polygon":
        return [geometry["coordinates"]]
    if kind == "MultiPolygon":
        return list(geometry["coordinates"])
    if kind == "GeometryCollection":
        return [p for g in geometry["geometries"] for p in _polygons(g)]
    return []


def _check(fc: dict[str, Any]) -> int:
    rings = 0
    for feature in fc["features"]:
        for poly in _polygons(feature["geometry"]):
            assert _signed_area(poly[0]) > 0, feature["properties"]["annotation_type"]
            assert all(_signed_area(hole) < 0 for hole in poly[1:])
            rings += len(poly)
    return rings


def test_a_region_with_a_hole_is_written_ccw_outside_cw_inside() -> None:
    # GIVEN a square mask with a square hole
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 5:35] = True
    mask[15:25, 15:25] = False
    # WHEN it becomes GeoJSON
    (poly,) = mask_to_polygons(mask, 1.0, (40, 40))
    geometry, _ = polygon_geometry(poly)
    # THEN the exterior is counter-clockwise (positive area) and the hole clockwise
    assert len(geometry["coordinates"]) == 2
    assert _signed_area(geometry["coordinates"][0]) > 0 > _signed_area(geometry["coordinates"][1])


@pytest.mark.parametrize("model", ["tissue", "nuclei"])
def test_every_ring_of_a_real_scan_is_oriented(model: str) -> None:
    # GIVEN real H&E at 0.5 µm/px (a 640x640 piece of the mosaic, in memory) analysed by the tissue model
    # (regions + heat map) and by the nuclei model
    scan = open_scan([fixture_path("thirdparty/vips_pyramid_jpeg.tif")])
    try:
        rgb = scan.read_region((400, 400), 0, (640, 640))
    finally:
        scan.close()
    analysis = analyze_scan("he", MemoryReader(rgb, mpp=0.5), ModelLoader().load(model))
    geojson = analysis.result.geojson or {"features": []}
    # THEN every exterior has a positive signed area and every hole a negative one
    assert _check(geojson) > 0
