"""The tile pipeline: reader threads decode tissue tiles ahead of the model, which gets full batches.

OpenSlide (and the other readers' codecs) release the GIL while decoding, and so does onnxruntime
while it runs, so a few reader threads and the model overlap in one process. The queue of tiles in
flight is bounded, so memory does not grow with the slide.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from scanbridge.imaging.readers.base import ScanReader
from scanbridge.imaging.tiling import Tile, TileGrid
from scanbridge.inference.session import OnnxModel

ProgressFn = Callable[[int, int], None]


@dataclass
class PipelineStats:
    """What one pass of the pipeline did."""

    tiles_total: int = 0
    tiles_processed: int = 0
    batches: int = 0
    read_s: float = 0.0
    infer_s: float = 0.0
    wall_s: float = 0.0


def read_tile(reader: ScanReader, grid: TileGrid, tile: Tile) -> np.ndarray:
    """One tile (RGB, tile_size square, padded white past the edge) at the grid's level."""
    loc = (int(round(tile.x * grid.downsample)), int(round(tile.y * grid.downsample)))
    return reader.read_region(loc, grid.level, (grid.tile_size, grid.tile_size))


def run_grid(reader: ScanReader, model: OnnxModel, grid: TileGrid, *, batch_size: int = 8,
             readers: int = 2, progress: ProgressFn | None = None) -> tuple[np.ndarray, PipelineStats]:
    """Run the model over every tile of `grid`; returns its first output pasted into one map."""
    spec = model.spec
    out_tile = grid.tile_size // spec.output_downsample
    canvas = np.zeros((grid.rows * out_tile, grid.cols * out_tile), dtype=np.float32)
    stats = PipelineStats(tiles_total=grid.total)
    started = time.perf_counter()
    prefetch = max(batch_size * 2, readers * 2)

    def timed_read(tile: Tile) -> np.ndarray:
        t0 = time.perf_counter()
        img = read_tile(reader, grid, tile)
        stats.read_s += time.perf_counter() - t0
        return img

    def flush(tiles: list[Tile], images: list[np.ndarray]) -> None:
        t0 = time.perf_counter()
        outputs = model.run(np.stack(images))
        stats.infer_s += time.perf_counter() - t0
        first = outputs[spec.output_name] if spec.output_name in outputs else next(iter(outputs.values()))
        for tile, out in zip(tiles, first, strict=True):
            plane = out[0] if out.ndim == 3 else out
            r0, c0 = tile.row * out_tile, tile.col * out_tile
            canvas[r0:r0 + out_tile, c0:c0 + out_tile] = plane[:out_tile, :out_tile]
        stats.tiles_processed += len(tiles)
        stats.batches += 1
        if progress:
            progress(stats.tiles_processed, len(grid.tiles))

    with ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="tile-reader") as pool:
        todo = iter(grid.tiles)
        pending: deque[tuple[Tile, Future[np.ndarray]]] = deque()
        for tile in todo:
            pending.append((tile, pool.submit(timed_read, tile)))
            if len(pending) >= prefetch:
                break
        batch_tiles: list[Tile] = []
        batch_images: list[np.ndarray] = []
        while pending:
            tile, future = pending.popleft()
            batch_images.append(future.result())
            batch_tiles.append(tile)
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(timed_read, nxt)))
            if len(batch_tiles) == batch_size:
                flush(batch_tiles, batch_images)
                batch_tiles, batch_images = [], []
        if batch_tiles:
            flush(batch_tiles, batch_images)
    stats.wall_s = time.perf_counter() - started
    return canvas, stats
