"""Object results: nucleus outlines to GeoJSON features (inference/objects.py)."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
from shapely.geometry import Polygon, shape

from scanbridge.domain.catalog import BUILTIN_SPECS
from scanbridge.domain.results import geojson_problems
from scanbridge.imaging.tiling import Tile
from scanbridge.inference.nuclei import NucleusParams, measure_nuclei, split_nuclei
from scanbridge.inference.object_table import ObjectTable
from scanbridge.inference.objects import ObjectRun, SlideObject, _Posts, corners, objects_result
from scanbridge.inference.pipeline import PipelineStats
from scanbridge.inference.postprocess import polygon_feature


def _disc_outline(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:64]
    prob = ((xx + 0.5 - 32) ** 2 + (yy + 0.5 - 32) ** 2 <= r * r).astype(np.float32)
    params = NucleusParams(min_area_px=1)
    (n,) = measure_nuclei(split_nuclei(prob, params), params)
    return n.contour * 2.0 + np.array([cx - 64.0, cy - 64.0])  # level-0, two level-0 px per model px


def _result(contours: list[np.ndarray], bounds: tuple[int, int] = (1000, 800)) -> list[dict[str, Any]]:
    objs = [SlideObject(x=float(c[:, 0].mean()), y=float(c[:, 1].mean()), contour=c,
                        measurements={"Area px^2": 1.0}, positive=None) for c in contours]
    model = SimpleNamespace(spec=BUILTIN_SPECS["nuclei"], provider="CPUExecutionProvider")
    run = ObjectRun(objects=objs, stats=PipelineStats(), grid=cast(Any, None))
    result = objects_result("scan", cast(Any, model), run, bounds=bounds, mpp=(0.25, 0.25), tissue_mm2=1.0)
    assert geojson_problems(result.geojson, *bounds) == []
    return cast(list[dict[str, Any]], result.geojson["features"])


def test_outlines_become_the_same_polygons_shapely_would_write() -> None:
    # GIVEN a nucleus outline from nuclei.py, in level-0 pixels
    contour = _disc_outline(500.25, 400.5, 6.0)
    # WHEN the result is built
    (feature,) = _result([contour])
    # THEN its ring is the one polygon_feature (shapely, set_precision) writes: same vertices, same
    # orientation, from the top-left vertex, and the same bbox
    expected = polygon_feature(Polygon(contour), annotation_type="nucleus", class_name="Nucleus", colour="#3f51b5",
                               measurements={"Area px^2": 1.0}, object_type="detection")
    ring, want = feature["geometry"]["coordinates"][0], expected["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == len(want)
    assert ring[0] == min(ring, key=lambda p: (p[1], p[0]))
    start = want.index(ring[0])
    assert ring[:-1] == want[start:-1] + want[:start]
    assert feature["bbox"] == expected["bbox"]
    assert shape(feature["geometry"]).area == Polygon(contour).area
    assert math.isclose(shape(feature["geometry"]).length, 2 * math.pi * 12, rel_tol=0.08)


def test_bad_outlines_are_repaired_clipped_or_dropped() -> None:
    # GIVEN a self-crossing outline, one past the slide's left edge and a two-point one
    bow_tie = np.array([[100.0, 100.0], [110.0, 110.0], [110.0, 100.0], [100.0, 110.0]])
    past_edge = _disc_outline(3.0, 300.0, 6.0)
    line = np.array([[10.0, 10.0], [20.0, 20.0]])
    # WHEN the result is built
    features = _result([bow_tie, past_edge, line])
    # THEN the bow tie keeps one valid triangle, the other is clipped to the slide, the line is gone
    polys = [shape(f["geometry"]) for f in features]
    assert len(polys) == 2 and all(p.is_valid and p.area > 0 for p in polys)
    assert polys[0].area == 25.0
    assert polys[1].bounds[0] == 0.0 and polys[1].area < Polygon(past_edge).area


def test_corners_keep_the_polygon_with_a_third_of_the_vertices() -> None:
    # GIVEN the traced outline of a blob with straight, diagonal and curved runs (window coordinates)
    yy, xx = np.mgrid[0:40, 0:40]
    prob = (((xx - 14) ** 2 / 64 + (yy - 18) ** 2 / 121 <= 1) | ((xx > 18) & (xx < 30) & (yy > 10) & (yy < 22)))
    params = NucleusParams(min_area_px=1, split_area_px=10_000)
    (n,) = measure_nuclei(split_nuclei(prob.astype(np.float32), params), params)
    # WHEN its collinear vertices are dropped
    kept = corners(n.contour)
    # THEN the polygon is exactly the same, with far fewer vertices, and its least (y, x) vertex stays
    before, after = Polygon(n.contour), Polygon(kept)
    assert after.is_valid and after.equals(before) and after.area == before.area
    assert len(kept) < 0.6 * len(n.contour)
    top_left = min(map(tuple, n.contour.tolist()), key=lambda p: (p[1], p[0]))
    assert top_left in set(map(tuple, kept.tolist()))


def test_a_caller_waiting_for_post_processing_runs_the_tiles_no_thread_started_and_keeps_their_order() -> None:
    # GIVEN one post-processing thread held up in the first of four tiles; the last tile lets it go
    release = threading.Event()
    ran_in: dict[int, str] = {}

    def work(tile: Tile, outputs: dict[str, np.ndarray]) -> ObjectTable:
        if tile.col == 0:
            release.wait(10.0)
        ran_in[tile.col] = threading.current_thread().name
        if tile.col == 3:
            release.set()
        return ObjectTable.of([SlideObject(x=float(tile.col), y=0.0, contour=np.zeros((0, 2)), measurements={},
                                           positive=None)])

    into = ObjectTable()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="post") as pool:
        posts = _Posts(pool, work)
        for col in range(4):
            posts.submit(Tile(col=col, row=0, x=0, y=0), {})
        # WHEN the caller needs all but one of them done, then all of them
        posts.drain(into, keep=1)
        posts.drain(into, keep=0)
    # THEN it ran the three the busy thread had not started itself, and every tile's objects came in order
    assert ran_in[0].startswith("post") and all(ran_in[c] == threading.current_thread().name for c in (1, 2, 3))
    assert into.x.tolist() == [0.0, 1.0, 2.0, 3.0]
