"""Regions of tiled TIFF levels straight from their compressed tiles: tifffile finds them, imagecodecs decodes.

This is the fast path of the TIFF readers. OpenSlide's `read_region` decodes through libtiff and paints
each tile through cairo into an RGBA buffer, one region at a time per slide handle; here each tile is
read with `os.pread` (thread-safe, no shared file position) and decoded by tifffile's per-page decoder
(imagecodecs: libjpeg-turbo, libwebp, OpenJPEG, zstd, JPEG XL ...) in the calling thread, so reader
threads decode in parallel. Decoded tiles that a window takes only part of are kept in a small LRU cache,
since overlapping model windows read them again: the model's grid runs row by row, so a tile is read again
by the window on its right or in the next row, never after that; the cache drops what lies above the rows
being read and never holds more than one row of windows' tiles, and an overlapping grid is read in bands
of columns at most READ_BAND_PX wide (`tiling.read_order`), so that row is one band's (memory flat in the
slide's size, the hits of an unbounded cache but at the bands' seams). At integer level coordinates the pixels equal OpenSlide's (tests compare them).
JPEG levels also decode a region at 1/2, 1/4 or 1/8 in the DCT domain (`read_scaled`, jpeg_dct.py) when the
model reads coarser than the level.

Hand-written rather than tifffile's zarr store: that needs zarr (not a dependency) and reads through one
file handle under a lock.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from scanbridge.domain.errors import CorruptScanError
from scanbridge.imaging.readers import jpeg_dct
from scanbridge.imaging.readers.base import READ_BAND_PX, reduce_rgb

CACHE_BYTES = 64 * 2**20  # decoded tiles kept per reader, at most (TiledPyramid.read bounds them tighter)
# JPEG 2000 tiles whose writer stored YCbCr itself: Aperio's 33003 and libvips' 33004 (libvips converts
# tiles to YCbCr before encoding, as Aperio does; OpenSlide and libvips' own reader convert back); 33005 is RGB.
YCBCR_JP2K = frozenset({33003, 33004})
JPEG = 7
#: photometric interpretations whose JPEG tiles decode to what the full-size path gives: grey, RGB, YCbCr
DCT_PHOTOMETRICS = frozenset({1, 2, 6})


def ycbcr_to_rgb(tile: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr (JPEG's) to RGB, uint8."""
    ycc = tile.astype(np.float32)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def decodable(page: Any) -> bool:
    """Whether `page` is a tiled, 8-bit, chunky RGB(A)/grey level whose codec imagecodecs has."""
    try:
        if not page.is_tiled or int(page.bitspersample) != 8 or int(page.planarconfig) != 1:
            return False
        if int(page.samplesperpixel) not in (1, 3, 4) or int(getattr(page, "tiledepth", 1)) != 1:
            return False
        page.decode  # noqa: B018 - tifffile raises here when no codec decodes the page's compression
    except Exception:  # noqa: BLE001 - tifffile raises many kinds for pages it cannot decode
        return False
    return True


class TiledLevel:
    """One tiled TIFF page: its tile grid, byte ranges and decoder."""

    def __init__(self, page: Any) -> None:
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.across = math.ceil(self.width / self.tile_w)
        self.down = math.ceil(self.height / self.tile_h)
        self.offsets = tuple(int(o) for o in page.dataoffsets)
        self.counts = tuple(int(c) for c in page.databytecounts)
        self.samples = int(page.samplesperpixel)
        self.jpegtables = getattr(page, "jpegtables", None)
        self.compression = int(page.compression)
        self._decode = page.decode
        photometric = int(page.photometric)
        # what tifffile decides for the full-size decode (jpeg_decode_colorspace): photometric RGB without a
        # JFIF marker is RGB in the JPEG too (Aperio), so libjpeg must be told not to convert from YCbCr
        self.jpeg_rgb = self.compression == JPEG and photometric == 2 and not page.is_jfif
        self.dct = (self.compression == JPEG and self.samples in (1, 3) and photometric in DCT_PHOTOMETRICS
                    and not tuple(page.extrasamples))

    def scalable(self, scale: int) -> bool:
        """Whether tiles of this level decode at 1/`scale` in the DCT domain into whole pixels."""
        return self.dct and scale in jpeg_dct.DCT_SCALES and not self.tile_w % scale and not self.tile_h % scale

    def decode_scaled(self, data: bytes, index: int, scale: int) -> np.ndarray:
        """One tile at 1/`scale`, RGB uint8 (tile_h // scale, tile_w // scale, 3): in the DCT domain, or
        decoded at full size and box-averaged where libjpeg-turbo refuses the stream."""
        stream = jpeg_dct.with_tables(self.jpegtables, data)
        tile = None
        if not self.jpeg_rgb:
            tile = jpeg_dct.decode_scaled(stream, scale, self.tile_w, self.tile_h, grey=self.samples == 1)
        elif not jpeg_dct.has_colour_marker(stream):  # a marker of its own would overrule ours: full size then
            tile = jpeg_dct.decode_scaled(jpeg_dct.mark_rgb(stream), scale, self.tile_w, self.tile_h)
        return tile if tile is not None else reduce_rgb(self.decode(data, index), scale)

    def decode(self, data: bytes, index: int) -> np.ndarray:
        """One tile as RGB uint8 (tile_h, tile_w, 3)."""
        arr = self._decode(data, index, jpegtables=self.jpegtables)[0]
        if arr is None:
            raise CorruptScanError(f"tile {index} has no data")
        tile = np.asarray(arr).reshape(arr.shape[-3], arr.shape[-2], arr.shape[-1])
        if tile.shape[0] != self.tile_h or tile.shape[1] != self.tile_w:
            full = np.full((self.tile_h, self.tile_w, tile.shape[2]), 255, np.uint8)
            full[:tile.shape[0], :tile.shape[1]] = tile[:self.tile_h, :self.tile_w]
            tile = full
        if self.samples == 3 and self.compression in YCBCR_JP2K:
            return ycbcr_to_rgb(tile)
        if self.samples == 1:
            return np.repeat(tile, 3, axis=2)
        if self.samples == 4:  # unassociated alpha: composite onto white, as the plain reader does
            rgb = tile[:, :, :3].astype(np.float32)
            alpha = tile[:, :, 3:4].astype(np.float32) / 255.0
            return np.clip(rgb * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
        return tile


class TiledPyramid:
    """Level regions decoded from compressed tiles; tiles a region takes only part of are cached (LRU, at most
    one row of regions' tiles, nothing above the rows being read): overlapping windows share them, while
    tile-aligned windows (the tissue model) cache nothing."""

    def __init__(self, path: Path, levels: list[TiledLevel]) -> None:
        self.levels = levels
        self._fd = os.open(path, os.O_RDONLY)
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._top: dict[int, int] = {}  # per level, the top of the last region read
        self._lock = threading.Lock()
        self.tiles_decoded = 0

    def _tile(self, level: int, index: int, scale: int = 1, *, keep: int = 0) -> np.ndarray:
        """One decoded tile; cached when `keep` > 0 (a region that took part of it: the rest is likely read
        by the next, overlapping window; a tile a region covers whole is not read again), the cache then
        trimmed to `keep` tiles and CACHE_BYTES, least recently used first."""
        key = (level, index, scale)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        lv = self.levels[level]
        count = lv.counts[index]
        if count == 0:  # a sparse tile: nothing was scanned there
            tile = np.full((lv.tile_h // scale, lv.tile_w // scale, 3), 255, np.uint8)
        else:
            try:
                data = os.pread(self._fd, count, lv.offsets[index])
                tile = lv.decode(data, index) if scale == 1 else lv.decode_scaled(data, index, scale)
            except CorruptScanError:
                raise
            except Exception as exc:  # codecs raise their own error types on bad data
                raise CorruptScanError(f"the scan's image data cannot be decoded (level {level}, tile {index}): "
                                       f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            self.tiles_decoded += 1
            if keep > 0 and key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
                while len(self._cache) > 1 and (len(self._cache) > keep or self._cache_bytes > CACHE_BYTES):
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= old.nbytes
        return tile

    def read(self, level: int, x: int, y: int, w: int, h: int, scale: int = 1) -> np.ndarray:
        """RGB uint8 (h, w, 3) of `level` with top-left (x, y) in that level's pixels; white outside.

        With `scale` (a divisor of x, y, w, h and the tile size): the same region from tiles decoded at
        1/scale, (h // scale, w // scale, 3) (`read_scaled` checks that it applies).

        The tiles it takes only part of are cached for the regions after it. Regions come row by row (the
        model's grid), so a tile is read again by the next region on its right or in the next row: the tiles
        that end above the previous row of regions are dropped, and at most `row_tiles(level, h)` are kept (one row of
        regions this high across the level) in any order of reads."""
        lv, s = self.levels[level], scale
        out = np.full((h // s, w // s, 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lv.width), min(y + h, lv.height)
        if x0 >= x1 or y0 >= y1:
            return out
        keep = self.row_tiles(level, h)
        self._forget_above(level, y0)
        for row in range(y0 // lv.tile_h, (y1 - 1) // lv.tile_h + 1):
            for col in range(x0 // lv.tile_w, (x1 - 1) // lv.tile_w + 1):
                tx, ty = col * lv.tile_w, row * lv.tile_h
                sx0, sy0 = max(x0, tx), max(y0, ty)
                sx1, sy1 = min(x1, tx + lv.tile_w), min(y1, ty + lv.tile_h)
                whole = sx0 == tx and sy0 == ty and sx1 == min(tx + lv.tile_w, lv.width) and \
                    sy1 == min(ty + lv.tile_h, lv.height)
                tile = self._tile(level, row * lv.across + col, s, keep=0 if whole else keep)
                out[(sy0 - y) // s:(sy1 - y) // s, (sx0 - x) // s:(sx1 - x) // s] = \
                    tile[(sy0 - ty) // s:(sy1 - ty) // s, (sx0 - tx) // s:(sx1 - tx) // s]
        return out

    def _forget_above(self, level: int, top: int) -> None:
        """When the regions move down to a new row (`top`), drop the cached tiles of `level` that end above
        the previous row's top: neither the regions of that row still in other reader threads nor any later
        one (the grid runs row by row) reaches them."""
        lv = self.levels[level]
        with self._lock:
            last, self._top[level] = self._top.get(level, 0), top
            if top <= last:
                return  # the same row of regions, or a new pass from higher up: nothing to drop
            gone = [key for key in self._cache if key[0] == level and (key[1] // lv.across + 1) * lv.tile_h <= last]
            for key in gone:
                self._cache_bytes -= self._cache.pop(key).nbytes

    @property
    def cached_tiles(self) -> int:
        """Decoded tiles held in the cache now."""
        with self._lock:
            return len(self._cache)

    def row_tiles(self, level: int, height: int) -> int:
        """The most tiles kept while regions `height` level pixels high are read: the tile rows such a region
        can span, plus one for the reader threads' regions in flight, across the level or, where it is
        wider, across one band of regions (READ_BAND_PX: an overlapping grid is read band by band)."""
        lv = self.levels[level]
        across = min(lv.across, READ_BAND_PX // lv.tile_w + 2)
        return across * ((max(height, 1) - 1) // lv.tile_h + 3)

    def read_scaled(self, level: int, x: int, y: int, w: int, h: int, scale: int) -> np.ndarray | None:
        """`read(..., scale)` where the level's JPEG tiles decode at 1/scale and the region is aligned to
        it; None otherwise (other codecs gain nothing; a region over a level edge that splits a block would
        mix image and white in that block: the caller reads those at full size and resizes)."""
        lv = self.levels[level]
        if not lv.scalable(scale) or x % scale or y % scale or w % scale or h % scale or \
                jpeg_dct.splits_edge_block(x, w, lv.width, scale) or \
                jpeg_dct.splits_edge_block(y, h, lv.height, scale):
            return None
        return self.read(level, x, y, w, h, scale)

    def close(self) -> None:
        """Close the file and drop the cache."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0


def tile_candidates(tif: Any) -> dict[tuple[int, int], TiledLevel]:
    """An open TiffFile's decodable tiled pages by (width, height), read while the file is open: the first
    series' levels (SubIFD / OME pyramids), then every top-level page (what OpenSlide calls levels;
    tifffile files an SVS level it takes for a thumbnail under another series)."""
    pages: list[Any] = [lv.keyframe for lv in tif.series[0].levels]
    pages += [p for p in tif.pages if getattr(p, "is_tiled", False)]
    candidates: dict[tuple[int, int], TiledLevel] = {}
    for page in pages:
        size = (int(page.imagewidth), int(page.imagelength))
        if size not in candidates and decodable(page):
            candidates[size] = TiledLevel(page)
    return candidates


def pyramid_from(path: Path, candidates: dict[tuple[int, int], TiledLevel],
                 level_dimensions: tuple[tuple[int, int], ...]) -> TiledPyramid | None:
    """A TiledPyramid whose level i is the candidate of size level_dimensions[i], or None when some level
    has none (the caller then keeps its own decoder for every level)."""
    chosen = [candidates.get((int(d[0]), int(d[1]))) for d in level_dimensions]
    if any(level is None for level in chosen):
        return None
    return TiledPyramid(path, [level for level in chosen if level is not None])


def open_pyramid(path: Path, level_dimensions: tuple[tuple[int, int], ...], tif: Any = None) -> TiledPyramid | None:
    """`pyramid_from` for a file (`tif`: the caller's open TiffFile of it, else it is opened here)."""
    import tifffile

    try:
        if tif is not None:
            return pyramid_from(path, tile_candidates(tif), level_dimensions)
        with tifffile.TiffFile(path) as opened:
            return pyramid_from(path, tile_candidates(opened), level_dimensions)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError):
        return None
