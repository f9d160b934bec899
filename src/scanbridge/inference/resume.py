"""Resumable scans: a scan's finished tiles, checkpointed in parts, so a retried worker runs only the rest.

A checkpoint belongs to one scan, one model version and one tile grid: its `fingerprint` is the model's
name and version plus a hash of the grid (level, scale, tile size, overlap, every tile kept), so a grid
that changed (another model version, another tissue mask, another tile size) never resumes wrongly.
Every `interval_s` the tiles finished since the last part are written as one new part
(numpy's savez_compressed, never pickle): for map kinds the tiles' uint8 outputs, for object kinds the
objects found (the post-processing of every finished tile drained first). Parts are only ever added,
so a checkpoint costs what the outputs cost once, however long the scan runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from scanbridge.domain.models import ModelSpec
from scanbridge.imaging.tiling import Tile, TileGrid
from scanbridge.ports import CheckpointStore

log = logging.getLogger(__name__)

Cell = tuple[int, int]  # (row, col)
T = TypeVar("T")


def grid_fingerprint(grid: TileGrid, spec: ModelSpec) -> str:
    """`name@version-<hash of the grid>`: what a checkpoint must match to be resumed."""
    shape = {"kind": spec.kind, "input_size": spec.input_size, "output_downsample": spec.output_downsample,
             "level": grid.level, "downsample": grid.downsample, "tile_size": grid.tile_size, "cols": grid.cols,
             "rows": grid.rows, "scale": grid.scale, "overlap": grid.overlap}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    digest.update(np.array([(t.col, t.row, t.x, t.y) for t in grid.tiles], dtype=np.int64).tobytes())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{spec.name}@{spec.version}")[:80]
    return f"{safe}-{digest.hexdigest()[:24]}"


class TileResume:
    """One scan's checkpoint while it runs: what is done already, and saving what gets done."""

    def __init__(self, store: CheckpointStore, grid: TileGrid, spec: ModelSpec,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._grid = grid
        self.fingerprint = grid_fingerprint(grid, spec)
        self._clock = clock
        self._last = clock()
        self._pending: list[Cell] = []
        self._saved_objects = 0
        try:
            self._parts = store.parts(self.fingerprint)
        except Exception:  # an unreadable checkpoint costs a rerun, never the scan
            log.exception("checkpoint unreadable; the scan starts over")
            self._parts = []
        self._index = len(self._parts)
        self.done: set[Cell] = {(int(r), int(c)) for part in self._parts for r, c in part["cells"].reshape(-1, 2)}
        if self.done:
            log.info("resuming a scan: %d of %d tiles already done", len(self.done), len(grid.tiles))

    def todo(self) -> list[Tile]:
        """The grid's tiles not done yet, in grid order."""
        return [t for t in self._grid.tiles if (t.row, t.col) not in self.done]

    def restore_maps(self, maps: dict[str, dict[Cell, np.ndarray]]) -> None:
        """Fill each named per-tile map (e.g. TileMap.tiles) with the checkpointed tiles' arrays."""
        for part in self._parts:
            cells = [(int(r), int(c)) for r, c in part["cells"].reshape(-1, 2)]
            for name, into in maps.items():
                stacked = part[f"map__{name}"]
                for cell, value in zip(cells, stacked, strict=True):
                    into[cell] = value

    def restore_objects(self, cls: type[T]) -> list[T]:
        """The checkpointed objects (instances of the dataclass `cls`), in the order they were found."""
        found: list[T] = []
        for part in self._parts:
            found.extend(unpack_objects(cls, part))
        self._saved_objects = len(found)
        return found

    def due(self) -> bool:
        """Whether a part is due (every `interval_s`; 0: after every batch)."""
        return self._clock() - self._last >= self._store.interval_s

    def finished(self, tiles: Iterable[Tile]) -> None:
        """Tiles whose outputs are now stored (in the maps, or drained into the object list)."""
        self._pending.extend((t.row, t.col) for t in tiles)

    def save_maps(self, maps: dict[str, dict[Cell, np.ndarray]]) -> None:
        """Write the tiles finished since the last part (their arrays from `maps`) as a new part."""
        if not self._pending:
            return
        arrays = {f"map__{name}": np.stack([m[cell] for cell in self._pending]) for name, m in maps.items()}
        self._write(arrays)

    def save_objects(self, objects: Sequence[Any]) -> None:
        """Write the tiles finished since the last part and the objects found since, as a new part."""
        if not self._pending:
            return
        new = objects[self._saved_objects:]
        self._write(pack_objects(new))
        self._saved_objects = len(objects)

    def _write(self, arrays: dict[str, np.ndarray]) -> None:
        cells = np.array(self._pending, dtype=np.int32).reshape(-1, 2)
        try:
            self._store.save(self.fingerprint, self._index, {"cells": cells, **arrays})
        except Exception:  # a checkpoint is an extra: the scan goes on without it
            log.exception("checkpoint not saved")
            return
        self.done.update(self._pending)
        self._pending = []
        self._index += 1
        self._last = self._clock()


def pack_objects(objects: Sequence[Any]) -> dict[str, np.ndarray]:
    """Dataclass objects as plain arrays, field by field (arrays, dicts of floats, bools, numbers, strings)."""
    out: dict[str, np.ndarray] = {"objects__n": np.array(len(objects), dtype=np.int64)}
    if not objects:
        return out
    for f in dataclasses.fields(objects[0]):
        values = [getattr(o, f.name) for o in objects]
        sample = next((v for v in values if v is not None), None)
        key = f"objects__{f.name}"
        if isinstance(sample, np.ndarray):
            arrays = [np.asarray(v) for v in values]
            out[f"{key}__array"] = np.concatenate(arrays) if arrays else np.zeros((0,))
            out[f"{key}__lengths"] = np.array([len(a) for a in arrays], dtype=np.int64)
        elif isinstance(sample, dict):
            names = list(dict.fromkeys(k for v in values for k in v))
            table = np.full((len(values), len(names)), np.nan)
            col = {k: i for i, k in enumerate(names)}
            for i, v in enumerate(values):
                for k, x in v.items():
                    table[i, col[k]] = float(x)
            out[f"{key}__keys"] = np.array(names, dtype=np.str_)
            out[f"{key}__values"] = table
        elif isinstance(sample, bool | np.bool_):
            out[f"{key}__bool"] = np.array([-1 if v is None else int(bool(v)) for v in values], dtype=np.int8)
        elif isinstance(sample, int | np.integer) and all(v is not None for v in values):
            out[f"{key}__int"] = np.array(values, dtype=np.int64)
        elif isinstance(sample, float | int | np.floating | np.integer):
            out[f"{key}__float"] = np.array([np.nan if v is None else float(v) for v in values])
            out[f"{key}__none"] = np.array([v is None for v in values])
        else:  # strings, None: JSON text (no pickle)
            out[f"{key}__json"] = np.array([json.dumps(v) for v in values], dtype=np.str_)
    return out


def unpack_objects(cls: type[T], part: dict[str, np.ndarray]) -> list[T]:
    """The objects `pack_objects` wrote, rebuilt as `cls` instances."""
    n = int(part.get("objects__n", np.array(0)))
    if n == 0:
        return []
    columns: dict[str, list[Any]] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"objects__{f.name}"
        if f"{key}__array" in part:
            flat, lengths = part[f"{key}__array"], part[f"{key}__lengths"]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            columns[f.name] = [flat[s:s + k] for s, k in zip(starts.tolist(), lengths.tolist(), strict=True)]
        elif f"{key}__keys" in part:
            names = [str(k) for k in part[f"{key}__keys"]]
            table = part[f"{key}__values"]
            columns[f.name] = [{k: float(x) for k, x in zip(names, row.tolist(), strict=True) if not np.isnan(x)}
                               for row in table]
        elif f"{key}__bool" in part:
            columns[f.name] = [None if v < 0 else bool(v) for v in part[f"{key}__bool"].tolist()]
        elif f"{key}__int" in part:
            columns[f.name] = part[f"{key}__int"].tolist()
        elif f"{key}__float" in part:
            nones = part[f"{key}__none"].tolist()
            columns[f.name] = [None if none else x for x, none in zip(part[f"{key}__float"].tolist(), nones,
                                                                      strict=True)]
        elif f"{key}__json" in part:
            columns[f.name] = [json.loads(str(v)) for v in part[f"{key}__json"]]
    return [cls(**{name: col[i] for name, col in columns.items()}) for i in range(n)]


def map_hooks(resume: TileResume | None, maps: dict[str, dict[Cell, np.ndarray]]) -> dict[str, Any]:
    """run_tiles' keyword arguments that resume `maps` and checkpoint them (none without a checkpoint)."""
    if resume is None:
        return {}
    resume.restore_maps(maps)

    def on_batch(tiles: list[Tile]) -> None:
        resume.finished(tiles)
        if resume.due():
            resume.save_maps(maps)

    return {"tiles": resume.todo(), "done": len(resume.done), "on_batch": on_batch}
