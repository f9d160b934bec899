"""The object pipeline (segmentation / detection kinds): overlapping tiles -> objects -> level-0 objects.

Tiles overlap by the spec's `tile_overlap` model pixels (default 64) on every side, and a tile keeps
only the objects whose centroid falls in its *core* (the part no neighbour owns). Cores partition the
slide, so an object on a tile seam is found whole (the window reaches past the seam) and kept once.
Reading reuses the tile pipeline's grid (`grid_for_model`) and reader threads (`iter_tiles`); the
model's per-tile outputs are decoded by the spec's instance decoder (inference/instances.py:
threshold, hovernet, stardist, boxes) in a small thread pool (OpenCV releases the GIL for most of the
work), and mapped to level 0 here, the same way for every decoder. Boxes are the exception to the core
rule: a window keeps the boxes centred within half the overlap of its core, and non-maximum suppression
at level 0 merges the copies that neighbouring windows found.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from scanbridge.domain.errors import ModelInvalidError
from scanbridge.domain.feature_spool import FeatureSpool, StreamedScanResult
from scanbridge.domain.models import ModelSpec
from scanbridge.domain.results import ScanResult
from scanbridge.heap import gc_paused
from scanbridge.imaging.readers.base import ScanReader
from scanbridge.imaging.tiling import DEFAULT_MIN_TISSUE, Tile, TileGrid, grid_for_model, read_order
from scanbridge.inference import ihc, stains
from scanbridge.inference.device import default_post_threads, default_reader_threads, yield_to_model
from scanbridge.inference.instances import (
    Decoder,
    WindowObjects,
    decoder_for,
    merge_boxes,
    output_names,
    output_problems,
)
from scanbridge.inference.nuclei import Nuclei
from scanbridge.inference.object_table import ObjectTable, SlideObject
from scanbridge.inference.pipeline import PipelineStats, ProgressFn, iter_tiles
from scanbridge.inference.postprocess import (
    MEASUREMENT_DIGITS,
    FeatureText,
    MeasurementsText,
    geometry_feature,
    hex_to_rgb,
    polygon_geometry,
    rounded,
)
from scanbridge.inference.resume import CheckpointStore, TileResume
from scanbridge.inference.session import OnnxModel

OBJECT_KINDS = frozenset({"segmentation", "detection"})
DEFAULT_OVERLAP = 64
MAX_POLYGONS = 200_000  # beyond this a scan's GeoJSON carries points only (counts stay exact)


@dataclass
class ObjectRun:
    """Every object of a scan (column-wise; a list of SlideObjects is stored as a table) plus what it took
    to find them."""

    objects: ObjectTable
    stats: PipelineStats
    grid: TileGrid
    post_s: float = 0.0  # CPU seconds of the per-tile post-processing, summed over its threads
    stain_vectors: stains.StainVectors | None = None  # the scan's, when the model takes them

    def __post_init__(self) -> None:
        if not isinstance(self.objects, ObjectTable):
            self.objects = ObjectTable.of(self.objects)


NO_OUTLINE = np.zeros((0, 2))  # a nucleus's contour where the result draws none (`draws_outlines`)


def draws_outlines(spec: ModelSpec) -> bool:
    """Whether the result draws each nucleus's outline (`outputs.polygons`, default yes). Boxes always keep
    theirs: the merge across tiles compares them."""
    return spec.decoder == "boxes" or bool(spec.outputs.get("polygons", True))


def reads_in_bands(spec: ModelSpec) -> bool:
    """Whether `run_objects` reads its grid in bands of columns (`tiling.read_order`): every decoder but
    boxes, whose merge across tiles (NMS) breaks ties by the grid's order."""
    return spec.decoder != "boxes"


def _tile_objects(decoder: Decoder, grid: TileGrid, tile: Tile, outputs: dict[str, np.ndarray],
                  l0_origin: tuple[int, int], mpp: tuple[float, float] | None,
                  stain_names: list[str]) -> ObjectTable:
    """One window's objects whose centroid is in the tile's core (boxes: within half the overlap of it),
    mapped to level-0, column-wise. A nucleus keeps its outline only where the result draws it
    (`draws_outlines`; the measurements are made on the window's outline either way)."""
    step = grid.read_size / grid.tile_size * grid.downsample  # level-0 px per model px in this window
    ox, oy = l0_origin
    # The core, in global model pixels, is [col*stride, (col+1)*stride); test the level-0 centroid against
    # it so that the decision depends on the object's position only, never on which window saw it.
    md = grid.model_downsample
    core: tuple[float, float, float, float] = (tile.col * grid.stride, tile.row * grid.stride,
                                               (tile.col + 1) * grid.stride, (tile.row + 1) * grid.stride)
    margin = max(0, grid.overlap - 2)  # a cheap pre-filter in window pixels; the exact test is below
    keep: tuple[float, float, float, float] | None = \
        (margin, margin, grid.tile_size - margin, grid.tile_size - margin) if grid.overlap else None
    if decoder.merges_across_tiles:
        half = grid.overlap / 2
        core = (core[0] - half, core[1] - half, core[2] + half, core[3] + half)
        keep = None
    spec = decoder.spec
    found = decoder.decode(outputs, keep=keep)
    x, y = ox + found.cx * step, oy + found.cy * step
    gx, gy = x / md, y / md
    mine = np.flatnonzero((core[0] <= gx) & (gx < core[2]) & (core[1] <= gy) & (gy < core[3]))
    if mine.size == 0:
        return ObjectTable()
    found, x, y = found.take(mine), x[mine], y[mine]
    n = found.nuclei
    if n is not None and not draws_outlines(spec):
        coords, offsets = NO_OUTLINE, np.zeros(len(found) + 1, dtype=np.int64)
    else:
        ring, offsets = corners_of(found.coords, found.offsets) if n is not None else (found.coords, found.offsets)
        coords = np.column_stack([ox + ring[:, 0] * step, oy + ring[:, 1] * step])
    columns: list[tuple[str, np.ndarray, np.ndarray | None]] = [("Centroid X px", x, None), ("Centroid Y px", y, None)]
    columns += _nucleus_columns(n, step, mpp, stain_names) if n is not None else _box_columns(found, step, mpp)
    if found.score is not None:
        columns.append(("Score", found.score, None))
    if found.class_fraction is not None:
        columns.append(("Type fraction", found.class_fraction, None))
    positive = np.full(len(found), -1, dtype=np.int8)
    if n is not None and n.positive_score is not None:  # IHC compartments: grade, cell ring (inference/ihc.py)
        columns += ihc.nuclei_measurements(spec.outputs, spec.thresholds, n.positive_score, n.coords, n.offsets,
                                           outputs.get(str(spec.outputs.get("stain_output"))), decoder.map_mpp)
        positive = (n.positive_score >= decoder.params.positive_threshold).astype(np.int8)
    labels = spec.labels
    names: list[str | None] = [None] * len(found) if found.class_index is None else \
        [labels[c].name if 0 <= c < len(labels) else None for c in found.class_index.tolist()]
    return ObjectTable.from_columns(x=x, y=y, coords=coords, coord_offsets=offsets, columns=columns,
                                    positive=positive, class_names=names, shape="nucleus" if n is not None else "box")


def _box_columns(found: WindowObjects, step: float,
                 mpp: tuple[float, float] | None) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Width, height and area of each detection's box (level-0 px, and µm where the scan has a pixel size)."""
    xs, ys = found.coords[:, 0].reshape(-1, 4), found.coords[:, 1].reshape(-1, 4)
    width = (xs.max(axis=1) - xs.min(axis=1)) * step
    height = (ys.max(axis=1) - ys.min(axis=1)) * step
    out: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        ("Width px", width, None), ("Height px", height, None), ("Area px^2", width * height, None)]
    if mpp:
        out += [("Width µm", width * mpp[0], None), ("Height µm", height * mpp[1], None),
                ("Area µm^2", width * height * mpp[0] * mpp[1], None)]
    return out


def corners(ring: np.ndarray) -> np.ndarray:
    """The ring without its collinear vertices: the same polygon, about a third of the vertices.

    Outlines traced on the pixel grid run in straight steps along edges and diagonals; with half-pixel
    window coordinates the cross products are exact, so only truly collinear vertices go. The least
    (y, x) vertex is an extreme point and always stays (the GeoJSON rings start there).
    """
    return corners_of(ring, np.array([0, len(ring)], dtype=np.int64))[0]


def corners_of(coords: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`corners` of every ring of rings back to back (`coords`, `offsets`): the rings and their offsets.

    A ring of fewer than 4 vertices, or one that would keep fewer than 3, stays as it is.
    """
    lengths = np.diff(offsets)
    if len(coords) == 0 or not (lengths > 0).all():
        return coords, offsets
    starts, ends = offsets[:-1], offsets[1:]
    nxt = np.arange(1, len(coords) + 1)
    nxt[ends - 1] = starts
    step = coords[nxt] - coords  # step[i]: from vertex i to the next (the last one closes its ring)
    into = np.empty_like(step)  # the step arriving at each vertex
    into[1:] = step[:-1]
    into[starts] = step[ends - 1]
    kept = (into[:, 0] * step[:, 1] - into[:, 1] * step[:, 0]) != 0
    reduced = (lengths >= 4) & (np.add.reduceat(kept, starts) >= 3)
    kept |= np.repeat(~reduced, lengths)
    out = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(np.add.reduceat(kept, starts), out=out[1:])
    return coords[kept], out


RAD_TO_DEG = 180.0 / math.pi  # what math.degrees multiplies by


def _nucleus_columns(n: Nuclei, step: float, mpp: tuple[float, float] | None,
                     stain_names: list[str]) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """The shape and stain measurements of nuclei (level-0 px, µm where the scan has a pixel size)."""
    area_px = n.area * step * step
    out: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        ("Area px^2", area_px, None), ("Perimeter px", n.perimeter * step, None),
        ("Major axis px", n.major_axis * step, None), ("Minor axis px", n.minor_axis * step, None),
        ("Eccentricity", n.eccentricity, None), ("Solidity", n.solidity, None), ("Extent", n.extent, None),
        ("Orientation deg", n.orientation * RAD_TO_DEG, None)]
    if mpp:
        um = math.sqrt(mpp[0] * mpp[1])
        out += [("Area µm^2", area_px * mpp[0] * mpp[1], None), ("Perimeter µm", n.perimeter * step * um, None),
                ("Major axis µm", n.major_axis * step * um, None), ("Minor axis µm", n.minor_axis * step * um, None)]
    for j, name in enumerate(stain_names[:n.stain_means.shape[1]]):
        out.append((f"{name} OD mean", n.stain_means[:, j], None))
    if n.positive_score is not None:
        out.append(("Positive probability mean", n.positive_score, None))
    return out


def run_objects(reader: ScanReader, model: OnnxModel, mask: np.ndarray | None, mask_downsample: float, *,
                tile_size: int | None = None, overlap: int | None = None, batch_size: int | None = None,
                readers: int | None = None, post_workers: int | None = None, progress: ProgressFn | None = None,
                min_tissue: float = DEFAULT_MIN_TISSUE, checkpoint: CheckpointStore | None = None,
                stain_vectors: stains.StainVectors | None = None) -> ObjectRun:
    """Run an object model over the tissue of a scan with overlapping tiles; each object found once.

    With a `checkpoint`, tiles it holds are not run again (their objects come from it) and finished
    tiles' objects are saved to it (resume.py). `stain_vectors`: the scan's, when already estimated (a model
    that takes them otherwise gets them from `scan_stain_vectors` on this grid).

    Post-processing threads (`post_workers`, default `device.default_post_threads`) step back behind the
    model's (`device.yield_to_model`): they run on the cores' time the model leaves, so decoding objects
    overlaps inference instead of slowing it.

    Raises ModelInvalidError when the spec's decoder is misconfigured or cannot decode the first batch.
    """
    spec = model.spec
    meta = reader.metadata
    target_ds = spec.mpp / meta.mpp[0] if (spec.mpp and meta.mpp) else 1.0
    size = tile_size or spec.input_size
    margin = int(spec.outputs.get("tile_overlap", DEFAULT_OVERLAP)) if overlap is None else overlap
    grid = grid_for_model(meta.level_dimensions, meta.level_downsamples, target_ds, size, mask,
                          mask_downsample, overlap=margin, min_tissue=min_tissue)
    model_mpp = (meta.mpp[0] * grid.model_downsample) if meta.mpp else (spec.mpp or 0.5)
    decoder = decoder_for(spec, model_mpp)
    reach = decoder.config.output_crop * spec.output_downsample
    if not decoder.merges_across_tiles and reach > grid.overlap:
        raise ModelInvalidError(f"a tile overlap of {grid.overlap} model px leaves tile cores outside the "
                                f"model's output (output_crop x output_downsample = {reach})",
                                details={"problems": ["tile_overlap smaller than the output crop"]})
    stain_names = [str(s) for s in spec.outputs.get("stain_channels", [])]
    vectors = None
    if stains.STAIN_INPUT in model.optional_inputs:
        vectors = stain_vectors if stain_vectors is not None else scan_stain_vectors(reader, grid, readers=readers)
    if vectors is not None and vectors.second == "DAB" and decoder.params.blob_contrast > 0:
        # H-DAB: nuclei are found on haematoxylin and DAB as they are (QuPath too detects on another image
        # for H-DAB than for H&E); the blob-seed test is for H&E, where collagen is as purple as a nucleus
        decoder.params = replace(decoder.params, blob_contrast=0.0)
    inputs = {stains.STAIN_INPUT: vectors.deconvolution} if vectors is not None else None
    extra_names = output_names(spec)
    batch = max(1, batch_size or model.batch_size_for(size))
    readers = readers or default_reader_threads()
    stats = PipelineStats(tiles_total=grid.total, batch_size=batch, readers=readers)
    total = len(grid.tiles)
    started = time.perf_counter()
    post_s = [0.0]
    resume = TileResume(checkpoint, grid, spec) if checkpoint is not None else None
    objects = ObjectTable.of(resume.restore_objects(SlideObject)) if resume else ObjectTable()
    done = len(resume.done) if resume else 0

    copies = _Copies()

    def post(tile: Tile, outputs: dict[str, np.ndarray]) -> ObjectTable:
        t0 = time.thread_time()  # this thread's CPU time: waiting for the GIL or a core does not count
        found = _tile_objects(decoder, grid, tile, outputs, grid.level0_origin(tile), meta.mpp, stain_names)
        copies.give_back(outputs.values())  # nothing found refers to them
        post_s[0] += time.thread_time() - t0
        return found

    buffer = np.empty((batch, size, size, 3), dtype=np.uint8)
    batch_tiles: list[Tile] = []
    post_workers = max(1, post_workers or default_post_threads())
    with ThreadPoolExecutor(max_workers=post_workers, thread_name_prefix="object-post",
                            initializer=yield_to_model) as pool:
        posts = _Posts(pool, post)

        def flush() -> None:
            n = len(batch_tiles)
            t0 = time.perf_counter()
            outputs = model.run(buffer[:n], inputs)
            stats.infer_s += time.perf_counter() - t0
            first = model.primary_output(outputs)
            if stats.batches == 0:
                problems = output_problems(spec, {**outputs, spec.output_name: first}, input_size=size)
                if problems:
                    raise ModelInvalidError(f"the outputs of {spec.name!r} cannot be decoded: {problems[0]}",
                                            details={"problems": problems})
            extra = {name: outputs[name] for name in extra_names if name in outputs}
            for i, tile in enumerate(batch_tiles):
                # copies, not views: onnxruntime's outputs live in its CPU arena, and a batch's held by the
                # post-processing threads while the next batch runs makes the arena grow (OnnxModel.run)
                tile_outputs = {spec.output_name: copies.copy(first[i]),
                                **{name: copies.copy(out[i]) for name, out in extra.items()}}
                posts.submit(tile, tile_outputs)
            stats.tiles_processed += n
            stats.batches += 1
            save = resume is not None and resume.due()
            if resume:
                resume.finished(batch_tiles)
            batch_tiles.clear()
            # a batch's tiles (at least one per post thread) left to decode while the model runs the next one: the
            # post threads then work on the cores' time the model leaves through the whole run, instead of the
            # model waiting here for them; at most two batches of copied outputs (4 MiB a nuclei tile) in flight
            posts.drain(objects, keep=0 if save else max(post_workers, batch))
            if save and resume:  # every finished tile's objects are in `objects` now
                resume.save_objects(objects)
            if progress:
                progress(done + stats.tiles_processed, total)

        todo = resume.todo() if resume else None
        if reads_in_bands(spec):  # the tile cache stays flat; the objects are sorted after
            todo = read_order(grid, todo)
        tiles: Iterator[tuple[Tile, np.ndarray]] = iter_tiles(reader, grid, todo, readers=readers,
                                                              queue_size=batch * 2, stats=stats)
        try:
            for tile, img in tiles:
                buffer[len(batch_tiles)] = img
                batch_tiles.append(tile)
                if len(batch_tiles) == batch:
                    flush()
            if batch_tiles:
                flush()
        finally:
            tiles.close()  # type: ignore[attr-defined]
        posts.drain(objects, keep=0)
    if decoder.merges_across_tiles:
        objects = _merged(objects, decoder.config.nms_iou)
    stats.wall_s = time.perf_counter() - started
    return ObjectRun(objects=objects.sorted(), stats=stats, grid=grid, post_s=post_s[0], stain_vectors=vectors)


class _Copies:
    """Arrays the tiles' outputs are copied into, used again once a tile's post-processing is done: a tile's
    outputs are 1-4 MiB blocks, each a fresh mapping (inference/heap.py) whose page faults cost the thread
    that runs the model ~0.5 ms per MiB. It holds no more arrays than were in flight at once."""

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def copy(self, a: np.ndarray) -> np.ndarray:
        """A copy of `a` that owns its memory (a free array of its shape and type, else a new one)."""
        key = (a.shape, a.dtype.str)
        with self._lock:
            free = self._free.get(key)
            out = free.pop() if free else None
        if out is None:
            out = np.empty(a.shape, dtype=a.dtype)
        np.copyto(out, a)
        return out

    def give_back(self, arrays: Iterable[np.ndarray]) -> None:
        """Arrays from `copy` that are no longer read."""
        with self._lock:
            for a in arrays:
                self._free.setdefault((a.shape, a.dtype.str), []).append(a)


def scan_stain_vectors(reader: ScanReader, grid: TileGrid, *, readers: int | None = None) -> stains.StainVectors:
    """The scan's stain vectors, once per scan: Macenko's estimate from up to `stains.SAMPLE_TILES` of the
    grid's tissue tiles, spread over the grid and read at the model's resolution (the reference vectors
    when the estimate is implausible). Every tile of the scan is then deconvolved with the same matrix.
    The sample is taken from the whole grid, so a resumed scan gets the same estimate; its tiles are read
    in the pipeline's reader threads and used in the grid's order."""
    picked = [grid.tiles[i] for i in stains.spread(len(grid.tiles))]
    read = {(t.row, t.col): img for t, img in iter_tiles(reader, grid, picked, readers=readers)}
    return stains.estimate_from_tiles([read[(t.row, t.col)] for t in picked])


def _merged(objects: ObjectTable, iou: float) -> ObjectTable:
    """The boxes left by per-class non-maximum suppression at level 0 (copies from overlapping windows go)."""
    if not len(objects):
        return objects
    coords, offsets = objects.contours()
    starts = offsets[:-1]
    boxes = np.column_stack([np.minimum.reduceat(coords, starts), np.maximum.reduceat(coords, starts)])
    score, has_score = objects.column("Score")
    scores = np.zeros(len(objects))
    scores[has_score] = score
    names = sorted({"", *objects.class_names})
    by_id = np.array([names.index(n) for n in objects.class_names] + [names.index("")], dtype=np.int64)
    classes = by_id[objects.class_ids]
    return objects.take(merge_boxes(boxes, scores, classes, iou))


class _Posts:
    """The tiles' post-processing in a pool of threads below the model's priority (`device.yield_to_model`),
    collected in the order the tiles were handed in.

    A caller that has to wait for it (`drain`) first runs tiles no thread has started itself, at its own
    priority: on a busy machine the pool's threads get the cores last, and the model would otherwise wait
    on them; on a quiet one the caller and the pool share the cores the model leaves between batches.
    """

    def __init__(self, pool: ThreadPoolExecutor, work: Callable[[Tile, dict[str, np.ndarray]], ObjectTable]) -> None:
        self._pool, self._work = pool, work
        self._pending: deque[tuple[Future[ObjectTable], Tile, dict[str, np.ndarray]]] = deque()

    def submit(self, tile: Tile, outputs: dict[str, np.ndarray]) -> None:
        """Post-process one tile's outputs in the pool."""
        self._pending.append((self._pool.submit(self._work, tile, outputs), tile, outputs))

    def drain(self, into: ObjectTable, *, keep: int) -> None:
        """Add the finished tiles' objects to `into`, in order, until at most `keep` tiles are left pending."""
        pending = self._pending
        while pending:
            future = pending[0][0]
            if future.done():
                into.add(pending.popleft()[0].result())
            elif len(pending) <= keep:
                return
            elif not self._run_one_here():
                wait([future])

    def _run_one_here(self) -> bool:
        """Run the oldest tile no thread has started in the calling thread; False when every one has been."""
        for i, (future, tile, outputs) in enumerate(self._pending):
            if future.cancel():  # not started: no thread will run it now
                done: Future[ObjectTable] = Future()
                done.set_result(self._work(tile, outputs))
                self._pending[i] = (done, tile, outputs)
                return True
        return False


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


OUTLINE_CHUNK = 4096  # objects whose outlines are checked at once with shapely's arrays (bounded memory)


def _iter_outlines(objs: ObjectTable, width: int,
                   height: int) -> Iterator[tuple[dict[str, Any], list[float]] | None]:
    """Each object's outline as (GeoJSON Polygon rounded to 0.01 px, bbox), one at a time; None where it
    has no area.

    Outlines from nuclei.py are simple rings, so most need no repair: validity, area and bounds are
    checked for `OUTLINE_CHUNK` objects at once (shapely's array functions) and their GeoJSON is written
    straight from the coordinates. The rest (invalid, or reaching past the slide) are repaired and clipped
    one by one.
    """
    coords, offsets = objs.contours()
    slide = shapely.box(0, 0, width, height)
    for c0 in range(0, len(objs), OUTLINE_CHUNK):
        c1 = min(len(objs), c0 + OUTLINE_CHUNK)
        yield from _chunk_outlines(coords, offsets[c0:c1 + 1], width, height, slide)


def _chunk_outlines(all_coords: np.ndarray, offsets: np.ndarray, width: int, height: int,
                    slide: Polygon) -> Iterator[tuple[dict[str, Any], list[float]] | None]:
    """`_iter_outlines` for the objects whose outlines lie at `offsets` in `all_coords`."""
    count = len(offsets) - 1
    sizes = np.diff(offsets)
    rings = np.flatnonzero(sizes >= 3)
    if rings.size == 0:
        yield from [None] * count
        return
    span = all_coords[offsets[0]:offsets[-1]]
    coords = (span if rings.size == count else span[np.repeat(sizes >= 3, sizes)]).astype(np.float64, copy=False)
    lengths = sizes[rings]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    polys = shapely.polygons(shapely.linearrings(coords, indices=np.repeat(np.arange(rings.size), lengths)))
    lo, hi = np.minimum.reduceat(coords, starts), np.maximum.reduceat(coords, starts)
    simple = shapely.is_valid(polys) & (shapely.area(polys) > 0) & (lo >= 0).all(axis=1) \
        & (hi[:, 0] <= width) & (hi[:, 1] <= height)
    del polys
    rounded = np.round(coords, 2)
    boxes = np.round(np.hstack([lo, hi]), 2).tolist()
    first = _top_left(rounded, starts, lengths).tolist()
    ccw = (_signed_area2(rounded, starts, lengths) > 0).tolist()
    nxt = 0
    for j, i in enumerate(rings.tolist()):
        yield from [None] * (i - nxt)  # objects with fewer than 3 vertices
        nxt = i + 1
        if simple[j]:
            # RFC 7946 (as postprocess.ORIENTATION says): positive signed area, from the top-left vertex
            if ccw[j]:
                ring = rounded[starts[j]:starts[j] + lengths[j]].tolist()
                k = first[j]
            else:
                ring = rounded[starts[j]:starts[j] + lengths[j]][::-1].tolist()
                k = lengths[j] - 1 - first[j]
            ring = ring[k:] + ring[:k + 1]
            yield {"type": "Polygon", "coordinates": [ring]}, boxes[j]
            continue
        poly = _polygon(all_coords[offsets[i]:offsets[i + 1]])
        if poly is not None and not slide.contains(poly):
            poly = poly.intersection(slide)
        yield polygon_geometry(poly) if isinstance(poly, Polygon) and not poly.is_empty else None
    yield from [None] * (count - nxt)


def _signed_area2(coords: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Twice the shoelace (signed) area of each open ring of `coords` (rings back to back)."""
    nxt = np.arange(1, len(coords) + 1)
    nxt[starts + lengths - 1] = starts  # each ring's last vertex joins its first
    x, y = coords[:, 0], coords[:, 1]
    return np.add.reduceat(x * y[nxt] - x[nxt] * y, starts)


def _top_left(coords: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Index, within each ring of `coords` (rounded to 0.01, rings back to back), of its least (y, x) vertex."""
    cents = np.rint(coords * 100.0).astype(np.int64)  # coords are rounded to 0.01: exact integers
    key = cents[:, 1] * (2 * int(np.abs(cents[:, 0]).max()) + 1) + cents[:, 0]  # orders as (y, x) does
    hits = np.flatnonzero(key == np.repeat(np.minimum.reduceat(key, starts), lengths))
    return hits[np.searchsorted(hits, starts)] - starts


def _polygon(contour: np.ndarray) -> Polygon | None:
    if len(contour) < 3:
        return None
    poly = Polygon(contour)
    if not poly.is_valid:
        fixed = shapely.make_valid(poly)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, Polygon) and not g.is_empty]
        if not parts:
            return None
        poly = max(parts, key=lambda g: g.area)
    return poly if poly.area > 0 else None


def objects_result(scan_id: str, model: OnnxModel, run: ObjectRun, *, bounds: tuple[int, int],
                   mpp: tuple[float, float] | None, tissue_mm2: float | None, stream: bool = True) -> ScanResult:
    """The ScanResult of an object model: per-nucleus polygons and/or per-class points, counts, density.

    With `stream` (the default) each feature is written as JSON text to a FeatureSpool as it is made and the
    result is a StreamedScanResult (flat memory: no dict per nucleus is kept); without, the features are a
    list of dicts in `geojson`, as before. Both give the same JSON.

    Objects with a class (typed nuclei, detections) are drawn in their label's name and colour, and counted
    per class. Boxes follow `outputs.draw` (points, boxes or both); nuclei `outputs.polygons`.
    """
    spec = model.spec
    objs = run.objects
    positive_mode = spec.outputs.get("positive_channel") is not None
    boxes_mode = spec.decoder == "boxes"
    draw = str(spec.outputs.get("draw", "both"))
    polygons_wanted = draw != "points" if boxes_mode else draws_outlines(spec)
    want_polygons = polygons_wanted and len(objs) <= MAX_POLYGONS
    class_ids = objs.class_ids
    typed = bool((class_ids >= 0).any())
    class_names = objs.class_names
    labels = {lab.name.lower(): lab for lab in spec.labels}
    nucleus_label = spec.labels[0] if spec.labels and not positive_mode else None
    features: FeatureSpool | list[dict[str, Any]] = FeatureSpool() if stream else []
    width, height = bounds
    positive, is_box = objs.positive, objs.is_box

    with gc_paused():  # ~10 containers per outline, none in a cycle: collecting would only walk them
        if want_polygons:
            lines = _FeatureLines(objs, features) if isinstance(features, FeatureSpool) else None
            for i, outline in enumerate(_iter_outlines(objs, width, height)):
                if outline is None:
                    continue
                box = bool(is_box[i])
                if class_ids[i] >= 0:
                    name = class_names[class_ids[i]]
                    cls = labels.get(name.lower())
                    colour = cls.color if cls else "#ff0000"
                elif positive_mode:
                    cls = labels.get("positive" if positive[i] == 1 else "negative")
                    name = cls.name if cls else ("Positive" if positive[i] == 1 else "Negative")
                    colour = cls.color if cls else "#ff0000"
                else:
                    name = nucleus_label.name if nucleus_label else ("Detection" if box else "Nucleus")
                    colour = nucleus_label.color if nucleus_label else "#3f51b5"
                if lines is not None:
                    lines.append(i, *outline, box=box, name=name, colour=colour)
                    continue
                features.append(geometry_feature(*outline, annotation_type="detection" if box else "nucleus",
                                                 class_name=name, colour=colour, measurements=objs.measurements(i),
                                                 object_type="detection"))
    xs, ys = np.clip(objs.x, 0.0, width), np.clip(objs.y, 0.0, height)
    n_positive, n_negative = int((positive == 1).sum()), int((positive == 0).sum())
    if positive_mode:
        for key, group in (("positive", positive == 1), ("negative", positive == 0)):
            if not group.any():
                continue
            cls = labels.get(key)
            name = cls.name if cls else key.title()
            colour = cls.color if cls else "#ff0000"
            features.append(_points_feature(xs[group], ys[group], annotation_type=key, name=name, colour=colour,
                                            measurements={"Num nuclei": float(group.sum())}))
    found = class_ids[class_ids >= 0]
    ids, first, counts = np.unique(found, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")  # the classes in the order the (sorted) objects meet them
    class_counts = {class_names[int(ids[k])]: int(counts[k]) for k in order}
    if typed and not positive_mode and (draw != "boxes" if boxes_mode else not want_polygons):
        for name, n in class_counts.items():
            group = class_ids == class_names.index(name)
            cls = labels.get(name.lower())
            features.append(_points_feature(xs[group], ys[group], annotation_type=name.lower(), name=name,
                                            colour=cls.color if cls else "#ff0000",
                                            measurements={"Num detections" if boxes_mode else "Num nuclei": float(n)}))
    count = len(objs)
    area, has_area = objs.column("Area µm^2")
    areas = area[~is_box[has_area]]
    mean_area = float(np.mean(areas)) if areas.size else None
    density = count / tissue_mm2 if tissue_mm2 else None
    summary: dict[str, str] = {"Detections" if boxes_mode else "Nuclei": f"{count:,}"}
    for name, n in sorted(class_counts.items()):
        summary[f"{name} {'detections' if boxes_mode else 'nuclei'}"] = f"{n:,}"
    results: dict[str, Any] = {
        "model": {"name": spec.name, "version": spec.version, "provider": model.provider},
        "nuclei_count": count,
        "tissue_area_mm2": tissue_mm2,
        "nuclei_density_per_mm2": round(density, 2) if density is not None else None,
        "mean_nucleus_area_um2": round(mean_area, 3) if mean_area is not None else None,
    }
    if typed:
        results["class_counts"] = dict(sorted(class_counts.items()))
    if positive_mode:
        pct = 100.0 * n_positive / count if count else None
        label = str(spec.outputs.get("summary_label", "Positivity"))
        summary[label] = f"{pct:.1f} %" if pct is not None else "n/a (no nuclei)"
        summary["Positive nuclei"] = f"{n_positive:,}"
        summary["Negative nuclei"] = f"{n_negative:,}"
        results.update(positive_count=n_positive, negative_count=n_negative,
                       positivity_percent=round(pct, 3) if pct is not None else None)
        ihc_results, ihc_summary = ihc.summary_figures(objs.column("DAB grade")[0].tolist(),
                                                       objs.column("Cell positive")[0].tolist())
        results.update(ihc_results)
        summary.update(ihc_summary)
    summary["Nuclei density"] = (f"{_fmt(density, 0)} /mm² of tissue" if density is not None
                                 else "n/a (scan has no pixel size)")
    summary["Tissue area"] = f"{tissue_mm2:.3f} mm²" if tissue_mm2 is not None else "n/a (scan has no pixel size)"
    if mean_area is not None:
        summary["Mean nucleus area"] = f"{mean_area:.1f} µm²"
    if not want_polygons and bool(spec.outputs.get("polygons", True)):
        summary["Note"] = f"{count:,} nuclei: outlines left out of the GeoJSON (limit {MAX_POLYGONS:,})"
    stain_results, stain_summary = _stain_figures(run.stain_vectors)
    results.update(stain_results)
    summary.update(stain_summary)
    summary["Model"] = f"{spec.name} v{spec.version}"
    results["report"] = {"summary": summary, "rois": None}
    return _scan_result(scan_id, results, features)


class _FeatureLines:
    """The objects' polygon features written to a spool as text (`postprocess.FeatureText`: the same text as
    `geometry_feature`'s dicts through json.dumps): each kind's layout and each key tuple's text made once,
    every object's measurements rounded at once, no dict per object."""

    def __init__(self, objs: ObjectTable, spool: FeatureSpool) -> None:
        values, offsets, keyset, keysets = objs.measurement_values()
        self._values: list[float] = rounded(values, MEASUREMENT_DIGITS).tolist()
        self._offsets: list[int] = offsets.tolist()
        self._keyset: list[int] = keyset.tolist()
        self._measurements = [MeasurementsText(keys) for keys in keysets]
        self._kinds: dict[tuple[str, str, bool], FeatureText] = {}
        self._spool = spool

    def append(self, i: int, geometry: dict[str, Any], bbox: list[float], *, box: bool, name: str,
               colour: str) -> None:
        """Object `i`'s feature: `geometry` and `bbox`, drawn as `name` in `colour`."""
        kind = self._kinds.get((name, colour, box))
        if kind is None:
            kind = self._kinds[(name, colour, box)] = FeatureText(
                annotation_type="detection" if box else "nucleus", class_name=name, colour=colour,
                object_type="detection")
        values = self._values[self._offsets[i]:self._offsets[i + 1]]
        self._spool.append_text(kind.line(bbox, geometry, self._measurements[self._keyset[i]](values)))


def _stain_figures(vectors: stains.StainVectors | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The scan's stain vectors as results (`stain_vectors`) and a summary line; nothing when the model
    took none."""
    if vectors is None:
        return {}, {}
    return {"stain_vectors": vectors.to_json()}, {"Stain vectors": vectors.summary()}


def _points_feature(xs: np.ndarray, ys: np.ndarray, *, annotation_type: str, name: str, colour: str,
                    measurements: dict[str, float]) -> dict[str, Any]:
    """One MultiPoint annotation of object centroids (already clipped to the slide), rounded to 0.01 px."""
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
    return {
        "type": "Feature", "id": _uuid(), "bbox": [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)],
        "geometry": {"type": "MultiPoint",
                     "coordinates": [[round(x, 2), round(y, 2)] for x, y in zip(xs.tolist(), ys.tolist(), strict=True)]},
        "properties": {"annotation_type": annotation_type, "objectType": "annotation",
                       "classification": {"name": name, "color": hex_to_rgb(colour)},
                       "measurements": measurements},
    }


def _scan_result(scan_id: str, results: dict[str, Any],
                 features: FeatureSpool | list[dict[str, Any]]) -> ScanResult:
    """A StreamedScanResult over a spool, else a ScanResult holding the features' list."""
    if isinstance(features, FeatureSpool):
        return StreamedScanResult.from_spool(scan_id, results, features)
    return ScanResult(scanId=scan_id, results=results, geojson={"type": "FeatureCollection", "features": features})


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())
