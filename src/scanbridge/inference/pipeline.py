"""The tile pipeline: reader threads decode tissue tiles ahead of the model, which gets full batches.

OpenSlide (and the other readers' codecs) and Pillow's resize release the GIL, and so does
onnxruntime while it runs, so reader threads (by default as many as the cores less one) and the model
overlap in one process. Readers take the next tile from a shared cursor and put finished tiles on a
bounded queue in *completion* order:
a batch is the first `batch_size` tiles ready, so one slow tile never stalls the model. Peak memory is
bounded by the queue (plus one batch), not by the slide; the model's output is kept per tissue tile
as uint8 (p * 255), so background costs nothing and tissue costs one byte per output pixel.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from scanbridge.domain.errors import InferenceError
from scanbridge.imaging.readers.base import ScaledRegions, ScanReader
from scanbridge.imaging.readers.jpeg_dct import dct_scale
from scanbridge.imaging.tiling import Tile, TileGrid
from scanbridge.inference.device import default_reader_threads
from scanbridge.inference.resume import CheckpointStore, TileResume, map_hooks
from scanbridge.inference.session import OnnxModel

ProgressFn = Callable[[int, int], None]
QUEUE_BATCHES = 2  # tiles decoded ahead of the model: this many batches (at least 2 per reader)


@dataclass
class PipelineStats:
    """What one pass of the pipeline did."""

    tiles_total: int = 0
    tiles_processed: int = 0
    batches: int = 0
    batch_size: int = 0
    readers: int = 0
    read_s: float = 0.0
    infer_s: float = 0.0
    wait_s: float = 0.0
    wall_s: float = 0.0


def as_codes(values: np.ndarray) -> np.ndarray:
    """Probabilities (0-1) as a TileMap stores them: uint8 codes, p * 255 in float32, rounded, clipped."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


class TileMap:
    """The model's first output per tile core, quantized to uint8 and stored only for tiles that ran."""

    def __init__(self, rows: int, cols: int, out_tile: int) -> None:
        self.rows, self.cols, self.out_tile = rows, cols, out_tile
        self.tiles: dict[tuple[int, int], np.ndarray] = {}

    def put(self, tile: Tile, plane: np.ndarray) -> None:
        """Store one tile's core (values in [0, 1])."""
        self.tiles[(tile.row, tile.col)] = as_codes(plane)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tiles."""
        return sum(t.nbytes for t in self.tiles.values())

    def to_codes(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """The dense map as stored (uint8 p * 255, background 0), cropped to height x width."""
        h = self.rows * self.out_tile if height is None else height
        w = self.cols * self.out_tile if width is None else width
        dense = np.zeros((h, w), dtype=np.uint8)
        t = self.out_tile
        for (r, c), q in self.tiles.items():
            r0, c0 = r * t, c * t
            if r0 >= h or c0 >= w:
                continue
            part = q[:h - r0, :w - c0]
            dense[r0:r0 + part.shape[0], c0:c0 + part.shape[1]] = part
        return dense


#: a stored code's probability: float16(code) * float16(1 / 255), each of the 256 computed once
CODE_VALUES = np.arange(256, dtype=np.uint8).astype(np.float16) * np.float16(1.0 / 255.0)
CODE_VALUES.setflags(write=False)


def code_values(codes: np.ndarray) -> np.ndarray:
    """The float16 probabilities of a uint8 code map (TileMap.to_codes): the table's bits looked up by
    OpenCV (np.take would first copy the codes as int64, 8 bytes per pixel)."""
    bits = cv2.LUT(np.ascontiguousarray(codes, dtype=np.uint8), CODE_VALUES.view(np.uint16))
    return np.asarray(bits).view(np.float16)


def codes_at_least(level: float) -> np.ndarray:
    """Which of the 256 codes stand for a probability >= `level` (numpy's float16 comparison, its rounding
    of `level` included): `codes_at_least(level)[codes]` is `code_values(codes) >= level`, decided once per
    code instead of per pixel (postprocess.CodeMapPolygons)."""
    return np.asarray(np.greater_equal(CODE_VALUES, level))


class ClassTileMap:
    """Region kinds' per-tile class maps: the argmax label and each kept class's probability, as uint8.

    One tile's output is (K,) or (K, 1, 1) for tile-classification (one map pixel per tile) or
    (K, h, w) for semantic-segmentation (its core is kept); channels-last (h, w, K) is read too when
    unambiguous. Label 255 marks pixels no tile ran on.
    """

    NONE = 255

    def __init__(self, rows: int, cols: int, out_tile: int, out_margin: int, classes: int,
                 keep: list[int]) -> None:
        if classes >= self.NONE:
            raise ValueError(f"at most {self.NONE - 1} classes")
        self.rows, self.cols, self.out_tile, self.out_margin = rows, cols, out_tile, out_margin
        self.classes, self.keep = classes, list(keep)
        self.labels: dict[tuple[int, int], np.ndarray] = {}
        self.probs: dict[tuple[int, int], np.ndarray] = {}

    def plane(self, out: np.ndarray) -> np.ndarray:
        """One tile's output as (K, h, w), cropped to its core; InferenceError when it does not fit."""
        y = np.asarray(out, dtype=np.float32)
        if y.ndim == 1:
            y = y.reshape(-1, 1, 1)
        elif y.ndim == 3 and y.shape[0] != self.classes and y.shape[2] == self.classes:
            y = y.transpose(2, 0, 1)  # a channels-last (h, w, K) export
        if y.ndim != 3 or y.shape[0] != self.classes:
            raise InferenceError(f"a tile's output has shape {list(out.shape)}; {self.classes} class channels expected")
        m, t = self.out_margin, self.out_tile
        core = y[:, m:m + t, m:m + t]
        if core.shape[1:] != (t, t):
            raise InferenceError(f"a tile's output is {list(y.shape[1:])} pixels; a {t}x{t} core after a margin of "
                             f"{m} expected")
        return core

    def put(self, tile: Tile, out: np.ndarray) -> None:
        """Store one tile: argmax over the class axis, and the kept classes' probabilities (x 255)."""
        core = self.plane(out)
        self.labels[(tile.row, tile.col)] = np.argmax(core, axis=0).astype(np.uint8)
        kept = core[self.keep] if self.keep else core[:0]
        self.probs[(tile.row, tile.col)] = np.clip(np.rint(kept * 255.0), 0, 255).astype(np.uint8)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tiles."""
        return sum(a.nbytes for a in self.labels.values()) + sum(a.nbytes for a in self.probs.values())

    def _dense(self, parts: dict[tuple[int, int], np.ndarray], index: int | None, height: int, width: int,
               fill: int) -> np.ndarray:
        dense = np.full((height, width), fill, dtype=np.uint8)
        t = self.out_tile
        for (r, c), q in parts.items():
            r0, c0 = r * t, c * t
            if r0 >= height or c0 >= width:
                continue
            plane = q if index is None else q[index]
            part = plane[:height - r0, :width - c0]
            dense[r0:r0 + part.shape[0], c0:c0 + part.shape[1]] = part
        return dense

    def label_array(self, height: int, width: int) -> np.ndarray:
        """The dense label map (uint8; NONE where no tile ran), cropped to height x width."""
        return self._dense(self.labels, None, height, width, self.NONE)

    def prob_array(self, channel: int, height: int, width: int) -> np.ndarray:
        """The dense probability map of one kept output channel (uint8, p x 255; 0 where no tile ran)."""
        return self._dense(self.probs, self.keep.index(channel), height, width, 0)


def read_tile(reader: ScanReader, grid: TileGrid, tile: Tile) -> np.ndarray:
    """One tile (RGB, tile_size square at the model's scale, white past the edge) from the grid's level.

    When the model reads coarser than the level, a reader with a DCT path (JPEG tiles: readers.jpeg_dct)
    decodes the window at 1/2, 1/4 or 1/8 directly; what is left of the scale is a box average/resize."""
    size, origin = grid.read_size, grid.level0_origin(tile)
    img = None
    scale = dct_scale(size, grid.tile_size)
    if scale > 1 and isinstance(reader, ScaledRegions):
        img = reader.read_region_scaled(origin, grid.level, (size, size), scale)
    if img is None:
        img = reader.read_region(origin, grid.level, (size, size))
    have = img.shape[0]
    if have != grid.tile_size:
        pil = Image.fromarray(img)
        factor = have // grid.tile_size
        if factor * grid.tile_size == have:  # integer scale: box average, the fastest exact path
            pil = pil.reduce(factor)
        else:
            pil = pil.resize((grid.tile_size, grid.tile_size), Image.Resampling.BOX)
        img = np.asarray(pil)
    return img


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


def iter_tiles(reader: ScanReader, grid: TileGrid, tiles: list[Tile] | None = None, *, readers: int | None = None,
               queue_size: int = 16, stats: PipelineStats | None = None) -> Generator[tuple[Tile, np.ndarray], None, None]:
    """Decode `tiles` (default: the grid's) in `readers` threads (None: the cores less one, see
    device.default_reader_threads); yields (tile, image) as each is ready."""
    todo = list(grid.tiles if tiles is None else tiles)
    n_readers = max(1, min(readers or default_reader_threads(), len(todo) or 1))
    ready: queue.Queue[object] = queue.Queue(maxsize=max(queue_size, 2 * n_readers))
    stop = threading.Event()
    cursor = iter(todo)
    lock = threading.Lock()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:
                    tile = next(cursor, None)
                if tile is None:
                    break
                t0 = time.perf_counter()
                img = read_tile(reader, grid, tile)
                if stats is not None:
                    stats.read_s += time.perf_counter() - t0
                if not put((tile, img)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failure(exc))
            return
        put(_DONE)

    threads = [threading.Thread(target=work, name=f"tile-reader-{i}", daemon=True) for i in range(n_readers)]
    for t in threads:
        t.start()
    try:
        finished = 0
        while finished < n_readers:
            item = ready.get()
            if item is _DONE:
                finished += 1
            elif isinstance(item, _Failure):
                raise item.exc
            else:
                yield item  # type: ignore[misc]
    finally:
        stop.set()
        for t in threads:
            t.join()


def run_grid(reader: ScanReader, model: OnnxModel, grid: TileGrid, *, batch_size: int | None = None,
             readers: int | None = None, progress: ProgressFn | None = None,
             checkpoint: CheckpointStore | None = None) -> tuple[TileMap, PipelineStats]:
    """Run the model over every tile of `grid`; returns its first output's tile cores, compactly.

    With a `checkpoint`, tiles it holds are not run again and finished ones are saved to it (resume.py).
    """
    ds_out = model.spec.output_downsample
    if grid.overlap % ds_out or grid.tile_size % ds_out:
        raise ValueError(f"tile size and overlap must be multiples of the output downsample {ds_out}")
    out_tile, out_margin = grid.stride // ds_out, grid.overlap // ds_out
    result = TileMap(grid.rows, grid.cols, out_tile)

    def put(tile: Tile, out: np.ndarray) -> None:
        plane = out[0] if out.ndim == 3 else out
        result.put(tile, plane[out_margin:out_margin + out_tile, out_margin:out_margin + out_tile])

    hooks = map_hooks(TileResume(checkpoint, grid, model.spec) if checkpoint else None, {"tiles": result.tiles})
    stats = run_tiles(reader, model, grid, put, batch_size=batch_size, readers=readers, progress=progress, **hooks)
    return result, stats


def run_class_grid(reader: ScanReader, model: OnnxModel, grid: TileGrid, *, batch_size: int | None = None,
                   readers: int | None = None, progress: ProgressFn | None = None,
                   checkpoint: CheckpointStore | None = None) -> tuple[ClassTileMap, PipelineStats]:
    """Region kinds: run the model over `grid` and keep each tile's class map (see ClassTileMap)."""
    spec = model.spec
    keep = [i for i, lb in enumerate(spec.labels) if lb.name not in spec.background_labels]
    if spec.kind == "tile-classification":
        result = ClassTileMap(grid.rows, grid.cols, 1, 0, len(spec.labels), keep)
    else:
        ds_out = spec.output_downsample
        if grid.overlap % ds_out or grid.tile_size % ds_out:
            raise ValueError(f"tile size and overlap must be multiples of the output downsample {ds_out}")
        result = ClassTileMap(grid.rows, grid.cols, grid.stride // ds_out, grid.overlap // ds_out,
                              len(spec.labels), keep)
    hooks = map_hooks(TileResume(checkpoint, grid, spec) if checkpoint else None,
                      {"labels": result.labels, "probs": result.probs})
    stats = run_tiles(reader, model, grid, result.put, batch_size=batch_size, readers=readers, progress=progress,
                      **hooks)
    return result, stats


def run_tiles(reader: ScanReader, model: OnnxModel, grid: TileGrid, put: Callable[[Tile, np.ndarray], None], *,
              batch_size: int | None = None, readers: int | None = None, progress: ProgressFn | None = None,
              tiles: list[Tile] | None = None, done: int = 0,
              on_batch: Callable[[list[Tile]], None] | None = None) -> PipelineStats:
    """Run the model over every tile of `grid` in batches; hands `put` each tile's primary output.

    Resuming: only `tiles` run (default: the grid's), `done` more count as finished for progress, and
    `on_batch` gets each batch's tiles once `put` has them (a checkpoint's hook).
    """
    batch = max(1, batch_size or model.batch_size_for(grid.tile_size))
    readers = readers or default_reader_threads()
    stats = PipelineStats(tiles_total=grid.total, batch_size=batch, readers=readers)
    total = len(grid.tiles)
    started = time.perf_counter()
    buffer = np.empty((batch, grid.tile_size, grid.tile_size, 3), dtype=np.uint8)
    batch_tiles: list[Tile] = []

    def flush() -> None:
        n = len(batch_tiles)
        t0 = time.perf_counter()
        outputs = model.run(buffer[:n])
        stats.infer_s += time.perf_counter() - t0
        first = model.primary_output(outputs)
        for tile, out in zip(batch_tiles, first, strict=True):
            put(tile, out)
        stats.tiles_processed += n
        stats.batches += 1
        if on_batch:
            on_batch(list(batch_tiles))
        batch_tiles.clear()
        if progress:
            progress(done + stats.tiles_processed, total)

    ready = iter_tiles(reader, grid, tiles, readers=readers, queue_size=batch * QUEUE_BATCHES, stats=stats)
    try:
        waited = time.perf_counter()
        for tile, img in ready:
            stats.wait_s += time.perf_counter() - waited
            buffer[len(batch_tiles)] = img
            batch_tiles.append(tile)
            if len(batch_tiles) == batch:
                flush()
            waited = time.perf_counter()
        if batch_tiles:
            flush()
    finally:
        ready.close()  # stops the readers at once when the model fails
    stats.wall_s = time.perf_counter() - started
    return stats
