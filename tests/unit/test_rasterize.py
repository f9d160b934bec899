"""Polygon rasterisation for label masks and DICOM SEG: pixel centres inside, holes cleared, later on top."""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.draw import polygon as sk_polygon

from scanbridge.exports.raster import MaskFiller, feature_shapes, rasterize


def _feature(*rings: list[list[float]]) -> dict[str, Any]:
    return {"geometry": {"type": "Polygon", "coordinates": [list(r) for r in rings]}}


def test_random_polygons_match_scikit_image_off_the_pixel_grid() -> None:
    # GIVEN star-shaped polygons whose vertices are never exactly on a pixel centre's row or column
    rng = np.random.default_rng(3)
    for _ in range(60):
        n = int(rng.integers(3, 40))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(3, 60, n)
        cx, cy = rng.uniform(-20, 120, 2)
        ring = np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)]) + 0.013
        d = float(rng.choice([1.0, 2.0, 4.0]))
        # WHEN rasterised at downsample d
        got = rasterize(feature_shapes([_feature(ring.tolist())]), (100, 80), values=[1], downsample=d)
        # THEN exactly the pixels scikit-image's point-in-polygon fill sets are set
        want = np.zeros((80, 100), np.uint32)
        xy = ring / d - 0.5
        r, c = sk_polygon(xy[:, 1], xy[:, 0], (80, 100))
        want[r, c] = 1
        assert np.array_equal(got, want)


def test_holes_are_cleared_and_later_features_win() -> None:
    # GIVEN a 40x40 square with a 10x10 hole, and a second square overlapping its corner
    outer = [[10.1, 10.1], [50.1, 10.1], [50.1, 50.1], [10.1, 50.1]]
    hole = [[25.1, 25.1], [35.1, 25.1], [35.1, 35.1], [25.1, 35.1]]
    other = [[45.1, 45.1], [60.1, 45.1], [60.1, 60.1], [45.1, 60.1]]
    # WHEN both are rasterised at level 0 with values 7 and 9
    out = rasterize(feature_shapes([_feature(outer, hole), _feature(other)]), (70, 70), values=[7, 9])
    # THEN the ring is 7, the hole 0, the overlap 9 (later on top), and the areas are the pixel counts
    assert out[15, 15] == 7 and out[30, 30] == 0 and out[47, 47] == 9 and out[5, 5] == 0
    assert int((out == 7).sum()) == 40 * 40 - 10 * 10 - 5 * 5
    assert int((out == 9).sum()) == 15 * 15


def test_an_origin_and_a_downsample_place_the_grid_on_level_0() -> None:
    # GIVEN a square far from the origin of level 0
    ring = np.array([[1000.3, 2000.3], [1040.3, 2000.3], [1040.3, 2040.3], [1000.3, 2040.3]])
    # WHEN rasterised on a grid whose pixel (0, 0) is at (992, 1992), at level 0 and at downsample 4
    full = rasterize([[[ring]]], (64, 64), origin=(992, 1992), dtype=np.int32)
    quarter = rasterize([[[ring]]], (16, 16), origin=(992, 1992), downsample=4.0)
    # THEN the level-0 grid has it at rows/cols 8..47, and the downsampled grid is the same square 4x smaller
    assert full.dtype == np.int32 and np.array_equal(np.argwhere(full)[[0, -1]], [[8, 8], [47, 47]])
    assert np.array_equal(np.argwhere(quarter)[[0, -1]], [[2, 2], [11, 11]])


def test_polygons_drawn_in_batches_give_the_mask_drawn_one_by_one() -> None:
    # GIVEN 40 overlapping random polygons (some with a hole, some two-part), each with its own value
    rng = np.random.default_rng(7)
    shapes = []
    for i in range(40):
        cx, cy = rng.uniform(5, 75, 2)
        ang = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 12))))
        ring = np.column_stack([cx + 12 * np.cos(ang), cy + 12 * np.sin(ang)]) + 0.013
        poly = [ring.tolist(), (np.column_stack([cx + 3 * np.cos(ang), cy + 3 * np.sin(ang)]) + 0.013).tolist()] \
            if i % 3 == 0 else [ring.tolist()]
        shapes.append([poly, [(ring + 30).tolist()]] if i % 5 == 0 else [poly])
    # WHEN drawn one polygon per pass, in batches of 3 polygons, and all in one pass
    masks = []
    for batch in (1, 3, 10_000):
        out = np.zeros((90, 110), np.int32)
        filler = MaskFiller(out, downsample=1.0, batch=batch)
        for n, shape in enumerate(shapes):
            filler.add(shape, n + 1)
        filler.flush()
        masks.append(out)
    # THEN the same mask each way: later polygons on top across batch boundaries, holes cleared
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], masks[2])
    assert len(np.unique(masks[0])) > 20
