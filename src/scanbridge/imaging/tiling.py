"""A tile grid over a pyramid level that keeps only the tiles touching tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One tile: its grid cell and its top-left in the level's pixels."""

    col: int
    row: int
    x: int
    y: int


@dataclass(frozen=True)
class TileGrid:
    """The grid at one level: tile size, grid shape and the tiles kept."""

    level: int
    downsample: float
    tile_size: int
    cols: int
    rows: int
    tiles: list[Tile]

    @property
    def total(self) -> int:
        """Tiles in the full grid, background included."""
        return self.cols * self.rows


def grid_over_tissue(level: int, level_size: tuple[int, int], downsample: float, tile_size: int,
                     mask: np.ndarray | None, mask_downsample: float) -> TileGrid:
    """Tiles of `tile_size` level pixels whose footprint meets the mask (every tile when mask is None)."""
    w, h = level_size
    cols, rows = max(1, math.ceil(w / tile_size)), max(1, math.ceil(h / tile_size))
    if mask is None:
        keep = np.ones((rows, cols), dtype=bool)
    else:
        grown = np.pad(mask.astype(np.int32), ((1, 0), (1, 0)))
        integral = grown.cumsum(0).cumsum(1)
        scale = tile_size * downsample / mask_downsample  # mask pixels per tile
        r0 = np.clip(np.floor(np.arange(rows) * scale).astype(int) - 1, 0, mask.shape[0])
        r1 = np.clip(np.ceil((np.arange(rows) + 1) * scale).astype(int) + 1, 0, mask.shape[0])
        c0 = np.clip(np.floor(np.arange(cols) * scale).astype(int) - 1, 0, mask.shape[1])
        c1 = np.clip(np.ceil((np.arange(cols) + 1) * scale).astype(int) + 1, 0, mask.shape[1])
        sums = (integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0])
        keep = sums > 0
    tiles = [Tile(int(c), int(r), int(c) * tile_size, int(r) * tile_size) for r, c in zip(*np.nonzero(keep), strict=True)]
    return TileGrid(level=level, downsample=downsample, tile_size=tile_size, cols=cols, rows=rows, tiles=tiles)
