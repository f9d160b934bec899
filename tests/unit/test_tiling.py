"""The tile grid: model-scale levels, tissue-only tiles, overlap, strip-wise tissue mask, compact results."""

from __future__ import annotations

import numpy as np
import pytest

from scanbridge.imaging.readers.base import READ_BAND_PX, ScanMetadata
from scanbridge.imaging.tiling import (
    DEFAULT_MIN_TISSUE,
    Tile,
    _tissue_cells,
    grid_for_model,
    grid_over_tissue,
    pick_level,
    read_order,
    strip_mask,
    tissue_overview,
)
from scanbridge.imaging.tissue import tissue_mask
from scanbridge.inference.pipeline import TileMap, code_values, codes_at_least


class ArrayReader:
    """A ScanReader over an in-memory RGB image with a 4x pyramid (nearest-neighbour levels)."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.levels = [rgb, rgb[::4, ::4]]
        dims = tuple((lv.shape[1], lv.shape[0]) for lv in self.levels)
        self.metadata = ScanMetadata(format="array", vendor=None, dimensions=dims[0], level_dimensions=dims,
                                     level_downsamples=(1.0, 4.0), mpp=(0.5, 0.5), objective_power=None)
        self.reads: list[tuple[int, int]] = []

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = int(self.metadata.level_downsamples[level])
        x, y = location[0] // ds, location[1] // ds
        src = self.levels[level]
        out = np.full((size[1], size[0], 3), 255, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + size[0], src.shape[1]), min(y + size[1], src.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = src[y0:y1, x0:x1]
        self.reads.append(size)
        return out

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        return self.levels[-1], 4.0

    def close(self) -> None:
        pass


def test_pick_level_prefers_a_matching_level_and_resizes_otherwise() -> None:
    # GIVEN a pyramid at downsamples 1, 4, 16
    ds = (1.0, 4.0, 16.0)
    # WHEN the model wants 2x, 4x, 16.1x and 0.5x / THEN level 0 resized 2x, level 1 as is, level 2 as is, level 0
    assert pick_level(ds, 2.0) == (0, 2.0)
    assert pick_level(ds, 4.0) == (1, 1.0)
    assert pick_level(ds, 16.1) == (2, 1.0)
    assert pick_level(ds, 0.5) == (0, 1.0)
    assert pick_level(ds, 8.0) == (1, 2.0)


def test_grid_keeps_only_cells_with_tissue() -> None:
    # GIVEN a 100x100 mask (1 mask px = 1 level px) with tissue in one 30x30 square
    mask = np.zeros((100, 100), bool)
    mask[10:40, 60:90] = True
    # WHEN tiled with 25-px tiles, keeping every tile that touches tissue
    grid = grid_over_tissue(0, (100, 100), 1.0, 25, mask, 1.0, min_tissue=0.0)
    # THEN the 4x4 grid keeps exactly the cells the square meets
    assert (grid.cols, grid.rows, grid.total) == (4, 4, 16)
    assert sorted((t.row, t.col) for t in grid.tiles) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    # AND without a mask every tile is kept
    assert len(grid_over_tissue(0, (100, 100), 1.0, 25, None, 1.0).tiles) == 16
    # AND a minimum of half the core drops the cells a square covers less than half of
    mask[:] = False
    mask[0:40, 50:90] = True  # covers cell (0,2) fully, (0,3) and (1,2) 60 %, (1,3) 36 %
    strict = grid_over_tissue(0, (100, 100), 1.0, 25, mask, 1.0, min_tissue=0.5)
    assert sorted((t.row, t.col) for t in strict.tiles) == [(0, 2), (0, 3), (1, 2)]
    # AND by default (a quarter) the 36 % cell is kept too, and a cell of exactly a quarter is kept
    assert len(grid_over_tissue(0, (100, 100), 1.0, 25, mask, 1.0).tiles) == 4
    mask[:] = False
    mask[0:25, 0:25] = np.arange(25)[None, :] < 6.25  # 7 of 25 columns (28 %); 6 would be 24 %
    assert [(t.row, t.col) for t in grid_over_tissue(0, (100, 100), 1.0, 25, mask, 1.0).tiles] == [(0, 0)]
    mask[0:25, 6] = False
    assert grid_over_tissue(0, (100, 100), 1.0, 25, mask, 1.0).tiles == []


def test_grid_cells_count_tissue_as_a_per_cell_sum_does() -> None:
    # GIVEN random masks, fractional cell sizes (cells share their edge rows) and grids past the mask
    rng = np.random.default_rng(3)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        mask = rng.random((h, w)) < rng.random()
        cell = float(rng.random() * 15 + 0.4)
        rows, cols = int(np.ceil(h / cell)) + int(rng.integers(0, 3)), int(np.ceil(w / cell)) + int(rng.integers(0, 3))
        min_tissue = float(rng.choice([0.0, 0.1, 0.25, 0.5]))
        # WHEN the kept cells are found (from rows of the summed-area table, never the whole table)
        kept = _tissue_cells(mask, cell, rows, cols, min_tissue)
        # THEN they are the cells whose pixels (floor .. ceil of their edges), summed one by one, are tissue
        # and at least min_tissue of the cell
        for r in range(rows):
            for c in range(cols):
                r0, r1 = min(h, int(np.floor(r * cell))), min(h, int(np.ceil((r + 1) * cell)))
                c0, c1 = min(w, int(np.floor(c * cell))), min(w, int(np.ceil((c + 1) * cell)))
                tissue = int(mask[r0:r1, c0:c1].sum())
                area = max(1, (r1 - r0) * (c1 - c0))
                assert kept[r, c] == (tissue > 0 and tissue / area >= min_tissue), (h, w, cell, r, c)


def test_default_grid_tracks_the_tissue_share_not_its_perimeter() -> None:
    # GIVEN a 2000x2000 mask with three ellipses of tissue (about 22 % of the area), and 64-px tiles
    yy, xx = np.mgrid[0:2000, 0:2000]
    mask = np.zeros((2000, 2000), bool)
    for cx, cy, rx, ry in ((500, 520, 330, 250), (1400, 600, 260, 380), (1000, 1450, 420, 300)):
        mask |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    share = mask.mean()
    # WHEN tiled keeping half-tissue tiles, the default quarter, and every tile that touches tissue
    half, default, touching = (grid_over_tissue(0, (2000, 2000), 1.0, 64, mask, 1.0, min_tissue=m)
                               for m in (0.5, DEFAULT_MIN_TISSUE, 0.0))
    excess = [len(g.tiles) / g.total / share - 1 for g in (half, default, touching)]
    # THEN half-tissue tiles cover the tissue's area within 8 %, the default within 10 % (issue #9)
    assert abs(excess[0]) < 0.08 and abs(excess[1]) < 0.10, excess
    # AND keeping every touching tile would have read well over 10 % more
    assert excess[2] > 0.10, excess


def test_grid_overlap_and_scale_place_read_windows() -> None:
    # GIVEN a 1000x600 level read at 2 level px per model px, 64-px tiles with 8 px overlap
    grid = grid_over_tissue(0, (1000, 600), 1.0, 64, None, 1.0, scale=2.0, overlap=8)
    # THEN tiles step by the 48-px core, the window starts 8 model px before it, and reads 128 level px
    assert grid.stride == 48 and grid.read_size == 128
    assert (grid.cols, grid.rows) == (11, 7)  # ceil(500 / 48), ceil(300 / 48)
    first, second = grid.tiles[0], grid.tiles[1]
    assert (first.x, first.y) == (-16, -16) and (second.x, second.y) == (80, -16)
    assert grid.model_downsample == 2.0
    # AND an overlap that leaves no core is refused
    with pytest.raises(ValueError, match="does not fit"):
        grid_over_tissue(0, (100, 100), 1.0, 16, None, 1.0, overlap=8)


def test_grid_for_model_picks_the_level() -> None:
    # GIVEN a 4x pyramid and a model at 8x
    grid = grid_for_model([(4000, 4000), (1000, 1000)], [1.0, 4.0], 8.0, 100, None, 1.0)
    # THEN it reads level 1 resized by 2
    assert (grid.level, grid.scale, grid.cols) == (1, 2.0, 5)


def test_strip_wise_tissue_mask_equals_the_whole_image_mask() -> None:
    # GIVEN an image with stained discs on glass
    rng = np.random.default_rng(0)
    rgb = np.full((400, 300, 3), 242, np.uint8)
    yy, xx = np.mgrid[0:400, 0:300]
    for cy, cx, r in [(50, 60, 30), (200, 150, 70), (370, 250, 20), (100, 290, 3)]:
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (200, 120, 170)
    rgb = np.clip(rgb.astype(int) + rng.integers(-3, 4, rgb.shape), 0, 255).astype(np.uint8)
    reader = ArrayReader(rgb)
    strips: list[int] = []

    def recorded(part: np.ndarray) -> np.ndarray:
        strips.append(part.shape[0])
        return tissue_mask(part)

    # WHEN the mask is computed over level 0 in strips of ~20 rows
    rgb_read, ds = tissue_overview(reader, 512)
    mask = strip_mask(rgb_read, recorded, strip_px=300 * 20)
    # THEN it equals the mask of the whole image, the overview was read once, and the mask's temporaries
    # never exceeded a strip plus its margins
    assert ds == 1.0
    np.testing.assert_array_equal(mask, tissue_mask(rgb))
    assert reader.reads == [(300, 400)]
    assert len(strips) == 20 and max(strips) <= 20 + 16


def test_tile_map_stores_tiles_as_uint8_and_assembles_on_demand() -> None:
    # GIVEN a 3x3 map of 4-px tiles with two tiles stored
    tm = TileMap(3, 3, 4)
    tm.put(Tile(0, 0, 0, 0), np.full((4, 4), 0.5, np.float32))
    tm.put(Tile(2, 1, 0, 0), np.full((4, 4), 1.0, np.float32))
    # THEN it holds one byte per stored output pixel
    assert tm.nbytes == 32 and all(t.dtype == np.uint8 for t in tm.tiles.values())
    # AND the dense map is float16, 0 where nothing ran, cropped on request
    dense = code_values(tm.to_codes(10, 11))
    assert dense.shape == (10, 11) and dense.dtype == np.float16
    assert abs(float(dense[0, 0]) - 0.5) < 0.003 and float(dense[5, 9]) == 1.0 and float(dense[9, 0]) == 0.0


def test_the_code_map_and_its_tables_are_the_float16_map_and_its_comparisons() -> None:
    # GIVEN a map whose two tiles hold every code 0-255, and the dense float16 map as stored codes scale to
    tm = TileMap(2, 2, 16)
    every = np.arange(256, dtype=np.float32).reshape(16, 16) / 255.0
    tm.put(Tile(0, 0, 0, 0), every)
    tm.put(Tile(1, 1, 0, 0), every[::-1])
    codes = tm.to_codes(30, 29)
    stated = codes.astype(np.float16) * np.float16(1.0 / 255.0)
    # WHEN / THEN the codes are the stored bytes (0 where nothing ran), the float16 map is the stated one bit
    # for bit, and each level's table of codes is the float16 comparison (levels float16 cannot hold too)
    assert codes.dtype == np.uint8 and codes.shape == (30, 29) and int(codes[0, 16]) == 0
    np.testing.assert_array_equal(np.sort(codes[:16, :16], axis=None), np.arange(256))
    np.testing.assert_array_equal(code_values(codes).view(np.uint16), stated.view(np.uint16))
    for level in (0.25, 0.5, 0.75, 0.3, 1 / 3, 0.0, 1.0, -1.0, 2.0, np.float64(0.3)):
        np.testing.assert_array_equal(codes_at_least(level)[codes], stated >= level, err_msg=str(level))
    assert codes_at_least(0.5).sum() == 128 and not codes_at_least(1.5).any()


def test_an_overlapping_grid_is_read_in_bands_row_by_row_and_an_aligned_one_in_its_order() -> None:
    # GIVEN a nuclei-style grid (512-px windows, 64 px of overlap: 384 px apart) over a level 3.5 bands wide,
    # a hole without tissue in its middle, and the tissue model's grid (no overlap) over the same level
    width = int(3.5 * READ_BAND_PX)
    mask = np.ones((40, width // 64), dtype=bool)
    mask[12:30, 120:240] = False
    grid = grid_over_tissue(0, (width, 2560), 1.0, 512, mask, 64.0, overlap=64, min_tissue=0.5)
    aligned = grid_over_tissue(0, (width, 2560), 1.0, 512, mask, 64.0)
    # WHEN their read orders are taken
    order = read_order(grid)
    # THEN the overlapping grid's tiles all come once, band after band of columns whose windows span at most
    # READ_BAND_PX level pixels (21 windows: 20 x 384 + 512 = 8192), row by row within each band
    assert sorted(order, key=lambda t: (t.row, t.col)) == grid.tiles and len(order) < grid.total
    bands = [[t for t in order if t.col // 21 == b] for b in range(4)]
    assert [t for band in bands for t in band] == order
    for band in bands:
        assert band == sorted(band, key=lambda t: (t.row, t.col))
        xs = [t.x for t in band]
        assert max(xs) + grid.read_size - min(xs) <= READ_BAND_PX
    assert max(t.col for t in bands[0]) == 20 and min(t.col for t in bands[1]) == 21
    # AND the aligned grid, which shares no tiles, keeps the grid's order; a subset is ordered the same way
    assert read_order(aligned) == aligned.tiles
    assert read_order(grid, grid.tiles[::3]) == [t for t in order if t in set(grid.tiles[::3])]
