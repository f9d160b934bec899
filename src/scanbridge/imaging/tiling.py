"""Tile grids in the model's pixel space over one pyramid level, kept only where there is tissue.

A grid lives in *model pixels* (the model's mpp). It reads from the pyramid level whose downsample is
the largest not above the model's, and `scale` level pixels make one model pixel (1.0 when a level
matches; otherwise each read window is `scale` times larger and resized down). Tiles step by
`stride = tile_size - 2 * overlap`: each tile's read window reaches `overlap` model pixels past its
core on every side, so post-processing can drop the border where a model sees no context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from scanbridge.cpus import usable_cores
from scanbridge.imaging.readers.base import READ_BAND_PX, ScaledRegions, ScanMetadata, ScanReader, best_level
from scanbridge.imaging.readers.jpeg_dct import DCT_SCALES

SCALE_SNAP = 0.01  # a level within 1 % of the model's scale is read as is
STRIP_PX = 1 << 18  # overview pixels per strip when the tissue mask is computed strip by strip
STRIP_MARGIN = 8  # rows of context above and below each strip
# A tile runs when at least this share of its core is tissue. Every tile touching tissue (0) reads the
# tissue's perimeter in glass: +15 % tiles over the tissue share on a 400 MP slide with 25 % tissue in
# 1 mm blobs. Half the core (0.5, the centre rule of CLAM's contour check) matches the tissue's area but
# drops the tissue in edge tiles (-4 % of the area there, -13 % of the nuclei on a 2 mm slide). A quarter
# reads +5 % and loses about 1 % of the area; models declare their own (`outputs.min_tissue`), e.g. the
# tissue detector 0 (its job is the edges) and the nucleus models 0.1 (a lost nucleus is a wrong count).
DEFAULT_MIN_TISSUE = 0.25
# The tissue mask's working resolution (`mask_downsample`): about MASK_UM µm per mask pixel, HistoQC's ~1.25x
# work size (CLAM segments at ~64x downsample, QuPath's tissue detection at 20 µm/px), but never coarser than
# MASK_MIN_SIDE px on the slide's long side (small images and fixtures keep a usable mask), nor finer than the
# overview (a slide without a pixel size: the overview itself).
MASK_UM = 8.0
MASK_MIN_SIDE = 512


@dataclass(frozen=True)
class Tile:
    """One tile: its grid cell and the top-left of its read window in the level's pixels."""

    col: int
    row: int
    x: int
    y: int


@dataclass(frozen=True)
class TileGrid:
    """The grid at one level: tile size and overlap (model px), level px per model px, the tiles kept."""

    level: int
    downsample: float
    tile_size: int
    cols: int
    rows: int
    tiles: list[Tile]
    scale: float = 1.0
    overlap: int = 0

    @property
    def total(self) -> int:
        """Tiles in the full grid, background included."""
        return self.cols * self.rows

    @property
    def stride(self) -> int:
        """Model pixels between neighbouring tiles (the tile's core)."""
        return self.tile_size - 2 * self.overlap

    @property
    def read_size(self) -> int:
        """Side of one read window in level pixels."""
        return max(1, round(self.tile_size * self.scale))

    @property
    def model_downsample(self) -> float:
        """Level-0 pixels per model pixel."""
        return self.downsample * self.scale

    def level0_origin(self, tile: Tile) -> tuple[int, int]:
        """Top-left of the tile's read window in level-0 pixels (negative past the top/left edge)."""
        return round(tile.x * self.downsample), round(tile.y * self.downsample)


def pick_level(level_downsamples: Sequence[float], target_downsample: float) -> tuple[int, float]:
    """The level to read for a model at `target_downsample` (level-0 px per model px), and the resize scale."""
    level = best_level(tuple(level_downsamples), target_downsample)
    scale = max(target_downsample, 1e-9) / level_downsamples[level]
    if abs(scale - 1.0) <= SCALE_SNAP or scale < 1.0:
        scale = 1.0
    return level, scale


def grid_over_tissue(level: int, level_size: tuple[int, int], downsample: float, tile_size: int,
                     mask: np.ndarray | None, mask_downsample: float, *, scale: float = 1.0, overlap: int = 0,
                     min_tissue: float = DEFAULT_MIN_TISSUE) -> TileGrid:
    """Tiles whose core has at least `min_tissue` of its area in the mask, and some tissue (every tile
    when mask is None)."""
    stride = tile_size - 2 * overlap
    if overlap < 0 or stride <= 0:
        raise ValueError(f"overlap {overlap} does not fit in tile size {tile_size}")
    w_model, h_model = level_size[0] / scale, level_size[1] / scale
    cols, rows = max(1, math.ceil(w_model / stride)), max(1, math.ceil(h_model / stride))
    if mask is None:
        keep = np.ones((rows, cols), dtype=bool)
    else:
        keep = _tissue_cells(mask, stride * scale * downsample / mask_downsample, rows, cols, min_tissue)
    tiles = [Tile(int(c), int(r), round((int(c) * stride - overlap) * scale),
                  round((int(r) * stride - overlap) * scale))
             for r, c in zip(*np.nonzero(keep), strict=True)]
    return TileGrid(level=level, downsample=downsample, tile_size=tile_size, cols=cols, rows=rows, tiles=tiles,
                    scale=scale, overlap=overlap)


def _tissue_cells(mask: np.ndarray, cell: float, rows: int, cols: int, min_tissue: float) -> np.ndarray:
    """Per grid cell of `cell` mask pixels: whether it has tissue, at least `min_tissue` of its area."""
    r0 = np.clip(np.floor(np.arange(rows) * cell).astype(int), 0, mask.shape[0])
    r1 = np.clip(np.ceil((np.arange(rows) + 1) * cell).astype(int), 0, mask.shape[0])
    c0 = np.clip(np.floor(np.arange(cols) * cell).astype(int), 0, mask.shape[1])
    c1 = np.clip(np.ceil((np.arange(cols) + 1) * cell).astype(int), 0, mask.shape[1])
    at = _integral_rows(mask, np.concatenate([r0, r1]))
    top, bottom = at[:rows], at[rows:]
    sums = bottom[:, c1] - top[:, c1] - bottom[:, c0] + top[:, c0]
    area = np.maximum(np.outer(r1 - r0, c1 - c0), 1)
    return np.asarray((sums > 0) & (sums / area >= min_tissue))


def _integral_rows(mask: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Rows `ys` (0..h) of the mask's summed-area table ((h + 1, w + 1), a zero row and column first),
    without building the table: the mask is summed between the rows asked for (flat memory, not 8 bytes
    per mask pixel three times over)."""
    w = mask.shape[1]
    bounds = np.unique(ys[ys > 0])
    out = np.zeros((len(ys), w + 1), dtype=np.int64)
    if bounds.size:
        starts = np.concatenate([[0], bounds[:-1]])
        rows = np.ascontiguousarray(mask).view(np.uint8)
        # each band's column sums by OpenCV's SIMD reduce (int32: a band has < 2^31 rows), 1/20 of
        # np.add.reduceat's time at 1250² (it widens every pixel to int64 first)
        between = np.stack([cv2.reduce(rows[a:b], 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[0]
                            for a, b in zip(starts.tolist(), bounds.tolist(), strict=True)]).astype(np.int64)
        table = np.zeros((bounds.size + 1, w + 1), dtype=np.int64)  # row 0: y = 0
        np.cumsum(np.cumsum(between, axis=0), axis=1, out=table[1:, 1:])
        out[:] = table[np.searchsorted(bounds, ys, side="right")]
    return out


def read_order(grid: TileGrid, tiles: Sequence[Tile] | None = None) -> list[Tile]:
    """`tiles` (default: the grid's) in the order an overlapping grid is read: bands of columns whose
    windows span at most READ_BAND_PX level pixels, left to right, each band row by row (the grid's own
    order within a row). Windows share tiles with the one on their right and the one below; read row by
    row across the whole level, the tiles kept for the row below grow with the slide's width, in bands
    they stay one band's (the reader's tile cache, `tiled_tiff.TiledPyramid`). Grids without overlap
    share no tiles: their order is kept."""
    todo = list(grid.tiles if tiles is None else tiles)
    if grid.overlap <= 0:
        return todo
    step = grid.stride * grid.scale  # level pixels between neighbouring windows
    per_band = max(1, int((READ_BAND_PX - grid.read_size) // step) + 1)
    return sorted(todo, key=lambda t: (t.col // per_band, t.row, t.col))


def grid_for_model(level_dimensions: Sequence[tuple[int, int]], level_downsamples: Sequence[float],
                   target_downsample: float, tile_size: int, mask: np.ndarray | None, mask_downsample: float, *,
                   overlap: int = 0, min_tissue: float = DEFAULT_MIN_TISSUE) -> TileGrid:
    """The tissue grid at the model's scale: picks the level, then tiles it (see `grid_over_tissue`)."""
    level, scale = pick_level(level_downsamples, target_downsample)
    return grid_over_tissue(level, level_dimensions[level], level_downsamples[level], tile_size, mask,
                            mask_downsample, scale=scale, overlap=overlap, min_tissue=min_tissue)


def overview_level(level_dimensions: Sequence[tuple[int, int]], max_side: int) -> int | None:
    """The finest pyramid level no larger than `max_side` on either side, or None when every level is larger."""
    for i, (w, h) in enumerate(level_dimensions):
        if max(w, h) <= max_side:
            return i
    return None


def tissue_overview(reader: ScanReader, max_side: int) -> tuple[np.ndarray, float]:
    """An RGB overview and its downsample, read whole from the finest pyramid level within `max_side`.

    Reading a small level keeps memory bounded by `max_side`, not by the slide (a thumbnail resized from
    a larger level reads that whole level first). Without such a level it falls back to the thumbnail.
    """
    meta = reader.metadata
    level = overview_level(meta.level_dimensions, max_side)
    if level is None:
        return reader.thumbnail(max_side)
    rgb = reader.read_region((0, 0), level, meta.level_dimensions[level])
    return rgb, float(meta.level_downsamples[level])


def mask_downsample(meta: ScanMetadata, overview_downsample: float) -> float:
    """Level-0 px per tissue-mask px: MASK_UM µm, at most the long side over MASK_MIN_SIDE, at least the
    overview's (see MASK_UM)."""
    if not meta.mpp:
        return overview_downsample
    physical = MASK_UM / meta.mpp[0]
    return max(overview_downsample, min(physical, max(meta.dimensions) / MASK_MIN_SIDE))


def mask_image(reader: ScanReader, max_side: int, target_downsample: float,
               overview: Callable[[], tuple[np.ndarray, float]]) -> tuple[np.ndarray, float]:
    """The RGB image the tissue mask is computed on, about `target_downsample` level-0 px per pixel, and its
    downsample (the x axis').

    It is made from the overview level (the finest within `max_side`; the scanner's own coarser levels are not
    trusted: some writers store them in other colours): decoded at 1/2, 1/4 or 1/8 in the JPEG DCT domain
    where the level's tiles allow (readers.jpeg_dct), else the overview itself (`overview()`, one read shared
    with the thumbnails); what is left resized by area averaging (OpenCV's INTER_AREA). The path depends on
    the file only, not on what was read before, so a scan's mask is always the same.
    """
    meta = reader.metadata
    level = overview_level(meta.level_dimensions, max_side)
    if level is not None:
        level_ds = float(meta.level_downsamples[level])
        lw, lh = meta.level_dimensions[level]
        factor = target_downsample / level_ds
        scale = next((s for s in DCT_SCALES if s <= factor * (1 + SCALE_SNAP) and lw % s == 0 and lh % s == 0), 1)
        if abs(factor - scale) <= SCALE_SNAP * factor:
            target_downsample = level_ds * scale  # a DCT scale that is the target: nothing left to resize
        scaled = reader.read_region_scaled((0, 0), level, (lw, lh), scale) \
            if scale > 1 and isinstance(reader, ScaledRegions) else None
        if scaled is not None:
            return _area_resized(scaled, level_ds * lw / scaled.shape[1], target_downsample)
    rgb, ds = overview()
    return _area_resized(rgb, ds, target_downsample)


def _area_resized(rgb: np.ndarray, downsample: float, target_downsample: float) -> tuple[np.ndarray, float]:
    """`rgb` (at `downsample`) area-averaged down to `target_downsample` (never enlarged), and its downsample."""
    h, w = rgb.shape[:2]
    factor = target_downsample / downsample
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    if factor <= 1 + SCALE_SNAP or size == (w, h):
        return rgb, downsample
    small = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)
    return small, downsample * w / size[0]


def strip_mask(rgb: np.ndarray, mask_fn: Callable[[np.ndarray], np.ndarray], *,
               strip_px: int = STRIP_PX, threads: int | None = None) -> np.ndarray:
    """`mask_fn` (e.g. `tissue_mask`) of an RGB overview, computed strip by strip.

    It runs on horizontal strips of about `strip_px` pixels that overlap their neighbours by STRIP_MARGIN
    rows (only each strip's own rows are kept), so its float temporaries never exceed one strip per thread:
    peak memory is the overview and the boolean mask plus a constant. The strips are independent, so
    `threads` of them (default: the cores this process may use) run at once; `mask_fn` must release the GIL
    for that to pay (numpy and OpenCV do).
    """
    h, w = rgb.shape[:2]
    rows = max(8, strip_px // max(w, 1))
    mask = np.zeros((h, w), dtype=bool)

    def one(y0: int) -> None:
        top, bottom = max(0, y0 - STRIP_MARGIN), min(h, y0 + rows + STRIP_MARGIN)
        part = mask_fn(rgb[top:bottom])
        mask[y0:min(h, y0 + rows)] = part[y0 - top:y0 - top + min(rows, h - y0)]

    starts = range(0, h, rows)
    workers = min(len(starts), threads or usable_cores())
    if workers <= 1:
        for y0 in starts:
            one(y0)
        return mask
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tissue-mask") as pool:
        for done in [pool.submit(one, y0) for y0 in starts]:
            done.result()
    return mask

