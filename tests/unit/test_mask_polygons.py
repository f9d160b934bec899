"""mask_to_polygons (inference/postprocess.py): the rings find_contours draws, nested in O(n log n)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage
from skimage import measure

from scanbridge.inference.pipeline import code_values, codes_at_least
from scanbridge.inference.postprocess import CodeMapPolygons, mask_rings, mask_to_polygons, polygon_geometry


def _ring_set(rings: list[np.ndarray]) -> set[frozenset[tuple[float, float]]]:
    return {frozenset(map(tuple, np.round(r, 3))) for r in rings}


def _split(rings: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """Rings back to back (coordinates, offsets) as one array each."""
    coords, offsets = rings
    return np.split(coords, offsets[1:-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rings_are_the_marching_squares_rings(seed: int) -> None:
    # GIVEN random blobby masks (diagonal touches, holes, islands, pixels on the border)
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((90, 110)), 1.0 + seed) > 0.5
    mask[30:60, 30:60] = True
    mask[38:52, 38:52] = False
    mask[44:46, 44:46] = True
    # WHEN traced / THEN exactly the rings scikit-image's find_contours(0.5) draws on the padded mask
    padded = np.pad(mask.astype(np.float32), 1)
    expected = [np.column_stack([c[:, 1] - 0.5, c[:, 0] - 0.5]) for c in measure.find_contours(padded, 0.5)]
    assert _ring_set(_split(mask_rings(mask))) == _ring_set(expected)


def test_an_island_in_a_hole_is_its_own_polygon() -> None:
    # GIVEN tissue with a hole holding an island that has a hole of its own
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:55, 5:55] = True
    mask[15:45, 15:45] = False
    mask[20:40, 20:40] = True
    mask[27:33, 27:33] = False
    # WHEN made polygons at 2 level-0 px per mask pixel
    polys = sorted(mask_to_polygons(mask, 2.0, (120, 120)), key=lambda p: -p.area)
    # THEN two polygons, each with one hole, the areas those of the pixels (in level-0 px²)
    assert [len(p.interiors) for p in polys] == [1, 1]
    assert sum(p.area for p in polys) == pytest.approx(mask.sum() * 4.0, rel=0.01)
    assert polys[0].contains(polys[1].representative_point()) is False


def test_many_holes_are_nested_by_one_tree_query_not_pairwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed itself is measured in bench/polygons_bench.py (the old fold: 50-90 s at 1936 holes); this
    test pins what makes it O(n log n): one STRtree query over every ring, and no pairwise set operation."""
    # GIVEN a tissue mask with 1936 holes, and shapely's STRtree and set operations counted
    import shapely

    from scanbridge.inference import postprocess

    mask = np.zeros((1024, 1024), dtype=bool)
    mask[8:-8, 8:-8] = True
    for i in range(44):
        for j in range(44):
            mask[20 + 22 * i:27 + 22 * i, 20 + 22 * j:27 + 22 * j] = False
    queries: list[int] = []
    pairwise: list[str] = []

    class CountingTree(shapely.STRtree):
        def query(self, geometry, *args, **kwargs):  # type: ignore[no-untyped-def]
            queries.append(int(np.size(geometry)))
            return super().query(geometry, *args, **kwargs)

    monkeypatch.setattr(postprocess.shapely, "STRtree", CountingTree)
    for name in ("symmetric_difference", "difference", "union", "intersection"):
        real = getattr(shapely.geometry.Polygon, name)
        monkeypatch.setattr(shapely.geometry.Polygon, name,
                            lambda self, *a, _n=name, _f=real, **k: (pairwise.append(_n), _f(self, *a, **k))[1])
    # WHEN made polygons
    polys = mask_to_polygons(mask, 8.0, (mask.shape[1] * 8, mask.shape[0] * 8))
    # THEN every hole is kept, the rings were nested by a single query of all 1937 rings, none pairwise
    assert sum(len(p.interiors) for p in polys) == 44 * 44
    assert queries == [44 * 44 + 1], queries
    assert pairwise == []


def _blobby_codes(seed: int) -> np.ndarray:
    """A smooth random uint8 code map (p * 255): blobs, holes, islands, some reaching the map's edge."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((120, 150)), 3.0)
    field = (field - field.min()) / (field.max() - field.min())
    return np.asarray(np.rint(field * 255), dtype=np.uint8)


@pytest.mark.parametrize("seed", [0, 1])
def test_code_map_polygons_are_each_levels_mask_polygons_and_a_repeated_mask_is_traced_once(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a code map, levels of which two pass the same codes (0.5 and 0.501) and one passes none, and
    # the tracing counted
    from scanbridge.inference import postprocess

    codes = _blobby_codes(seed)
    traced: list[int] = []
    real = postprocess.framed_ring_array
    monkeypatch.setattr(postprocess, "framed_ring_array", lambda bg: (traced.append(1), real(bg))[1])
    outlines = CodeMapPolygons(codes, 4.0, (580, 460))  # the slide ends inside the map: clipped
    levels = [0.5, 0.25, 0.501, 0.75, 1.5]
    # WHEN each level's polygons are made from the code map (two simplify tolerances for the repeated mask)
    got = [outlines.polygons(codes_at_least(lv), min_area=40.0, simplify=2.0 if lv == 0.5 else 4.0) for lv in levels]
    # THEN the mask 0.5 and 0.501 share was traced once, the empty one not at all
    assert len(traced) == 3
    # AND the polygons are mask_to_polygons of each level's float16 mask, vertex for vertex
    for lv, polys in zip(levels, got, strict=True):
        expected = mask_to_polygons(code_values(codes) >= lv, 4.0, (580, 460), min_area=40.0,
                                    simplify=2.0 if lv == 0.5 else 4.0)
        assert [p.wkb for p in polys] == [p.wkb for p in expected], lv
    assert got[0] and got[3] and got[4] == []
    assert got[0] != got[2]  # the same outlines, simplified by each level's own tolerance


def test_polygon_geometry_rounds_every_ring_as_the_generic_mapping_does() -> None:
    # GIVEN polygons with holes and vertices off the 0.01 grid (and one that precision makes two)
    from shapely.geometry import Polygon, mapping

    from scanbridge.inference.postprocess import _lists

    rng = np.random.default_rng(5)
    shell = [(0.123456, 0.5), (100.987654, 0.333), (100.5, 80.0049), (0.4, 79.9951)]
    hole = [(20.1151, 20.2249), (20.0, 40.555), (40.123, 40.0), (40.0, 20.0)]
    polys = [Polygon(shell, [hole]), Polygon(np.round(rng.random((40, 2)) * 1e4, 6).tolist()).convex_hull,
             Polygon([(0, 0), (10, 0), (10, 10.004), (5, 10.004), (5, 10.0049), (0, 10)])]
    for poly in polys:
        # WHEN written as GeoJSON
        geometry, _ = polygon_geometry(poly)
        # THEN the coordinates are those the generic path writes: mapping() of the oriented, snapped polygon,
        # each number through round(v, 2)
        generic = mapping(shapely.orient_polygons(shapely.set_precision(poly, 0.01), exterior_cw=False))
        assert geometry == {"type": generic["type"], "coordinates": _lists(generic["coordinates"])}


@pytest.mark.parametrize("seed", [0, 3])
def test_the_rings_traced_at_once_are_each_chains_own_edge_ring(seed: int) -> None:
    # GIVEN a framed mask with lone pixels, two-pixel chains, holes and islands, and its contours traced
    import cv2

    from scanbridge.inference.nuclei import edge_ring
    from scanbridge.inference.postprocess import framed_ring_array

    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((70, 90)), 1.5) > 0.52
    mask[5, 5] = True
    mask[4:7, 4] = mask[4:7, 6] = mask[4, 4:7] = mask[6, 4:7] = False  # a lone pixel
    mask[60, 80:82] = True
    background = np.ones((74, 94), np.uint8)
    background[2:-2, 2:-2] = ~mask
    contours, _ = cv2.findContours(background.copy(), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    # WHEN every ring is made in one pass
    coords, offsets = framed_ring_array(background)
    rings = np.split(coords, offsets[1:-1])
    # THEN each is the one edge_ring makes of its chain alone (the frame's own border left out), vertex for
    # vertex and in the same order
    expected = [edge_ring(c.reshape(-1, 2)) * 0.5 - 1.5 for c in contours
                if c.reshape(-1, 2).min(axis=0).tolist() != [0, 0]]
    assert len(rings) == len(expected) > 10
    assert any(len(r) == 4 for r in rings)  # the lone pixel's
    for got, want in zip(rings, expected, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_polygon_geometries_of_many_are_each_polygons_own() -> None:
    # GIVEN polygons with holes, vertices off the 0.01 grid, one that precision splits in two (a neck
    # 0.004 wide) and one it makes empty, in one list
    from shapely.geometry import Polygon, mapping

    from scanbridge.inference.postprocess import _lists, polygon_geometries

    rng = np.random.default_rng(7)
    shell = [(0.123456, 0.5), (100.987654, 0.333), (100.5, 80.0049), (0.4, 79.9951)]
    holes = [[(20.1151, 20.2249), (20.0, 40.555), (40.123, 40.0), (40.0, 20.0)],
             [(60.0, 60.0), (70.0, 60.0), (70.0, 70.0)]]
    neck = [(0, 0), (10, 0), (10, 4.998), (20, 4.998), (20, 0), (30, 0), (30, 10), (20, 10), (20, 5.002),
            (10, 5.002), (10, 10), (0, 10)]
    polys = [Polygon(shell, holes), Polygon(neck), Polygon([(0, 0), (0.001, 0), (0.001, 0.001)]),
             Polygon(np.round(rng.random((40, 2)) * 1e4, 6).tolist()).convex_hull, Polygon(shell[::-1])]
    # WHEN written together
    got = polygon_geometries(polys)
    # THEN each geometry is the generic path's of that polygon alone (mapping() of the oriented, snapped
    # polygon, each number through round(v, 2)), and each bbox its bounds through round(v, 2)
    for (geometry, bbox), poly in zip(got, polys, strict=True):
        generic = mapping(shapely.orient_polygons(shapely.set_precision(poly, 0.01), exterior_cw=False))
        assert geometry == {"type": generic["type"], "coordinates": _lists(generic["coordinates"])}
        assert bbox == [round(v, 2) for v in poly.bounds]
    assert [g["type"] for g, _ in got] == ["Polygon", "MultiPolygon", "Polygon", "Polygon", "Polygon"]
    assert len(got[0][0]["coordinates"]) == 3 and got[2][0]["coordinates"] == []
