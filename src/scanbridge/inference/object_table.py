"""The objects of a scan stored column-wise: flat memory per object (issue #17 item 5).

A `SlideObject` with its ~21 measurements in a dict costs ~1.6 kB of live Python objects (a dict, its
floats, a small array) and pins the heap between the tiles' transient allocations. `ObjectTable` keeps
every object's fields in a few numpy arrays instead: centroids, outlines back to back with their offsets,
measurement values back to back with their offsets and the index of their key tuple (each distinct
tuple stored once, so every object keeps its own keys in its own order), the positive flag, the class
and the shape: ~0.5 kB per nucleus, in a handful of large blocks. Each tile's objects become a block in
the post-processing thread (`ObjectTable.of`); `sorted` joins the blocks once. Reading an object
(`table[i]`) builds its `SlideObject` on demand; `column` reads one measurement for every object at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from scanbridge.inference.rows import Rows, take_rings


@dataclass
class SlideObject:
    """One object in level-0 pixels (and µm where the scan has a pixel size)."""

    x: float
    y: float
    contour: np.ndarray  # (k, 2) level-0 x, y
    measurements: dict[str, float]
    positive: bool | None
    class_name: str | None = None  # the label of a typed nucleus or a detection's class
    shape: str = "nucleus"  # "nucleus" (an outline) or "box" (a detection's box)


_SHAPES = ("nucleus", "box")


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
    return out


def _empty_block() -> dict[str, np.ndarray]:
    offsets = np.zeros(1, dtype=np.int64)
    return {"x": np.zeros(0), "y": np.zeros(0), "coords": np.zeros((0, 2)), "coord_offsets": offsets,
            "values": np.zeros(0), "value_offsets": offsets.copy(), "keyset": np.zeros(0, dtype=np.int32),
            "positive": np.zeros(0, dtype=np.int8), "class_id": np.zeros(0, dtype=np.int32),
            "box": np.zeros(0, dtype=np.bool_)}


class ObjectTable(Rows[SlideObject]):
    """Objects column-wise, in blocks that `add` appends and `sorted` joins; a Sequence of SlideObjects."""

    def __init__(self) -> None:
        self._keysets: list[tuple[str, ...]] = []
        self._keyset_ids: dict[tuple[str, ...], int] = {}
        self._classes: list[str] = []
        self._class_ids: dict[str, int] = {}
        self._blocks: list[dict[str, np.ndarray]] = []
        self._n = 0

    @classmethod
    def of(cls, objects: Iterable[SlideObject]) -> ObjectTable:
        """A table of `objects`, in their order (their dicts and arrays are copied, not kept)."""
        table = cls()
        objs = list(objects)
        if not objs:
            return table
        keysets = [table._keyset(tuple(o.measurements)) for o in objs]
        contours = [np.asarray(o.contour, dtype=np.float64).reshape(-1, 2) for o in objs]
        table._append({
            "x": np.array([o.x for o in objs], dtype=np.float64),
            "y": np.array([o.y for o in objs], dtype=np.float64),
            "coords": np.concatenate(contours),
            "coord_offsets": _offsets([len(c) for c in contours]),
            "values": np.array([v for o in objs for v in o.measurements.values()], dtype=np.float64),
            "value_offsets": _offsets([len(o.measurements) for o in objs]),
            "keyset": np.array(keysets, dtype=np.int32),
            "positive": np.array([-1 if o.positive is None else int(o.positive) for o in objs], dtype=np.int8),
            "class_id": np.array([-1 if o.class_name is None else table._class(o.class_name) for o in objs],
                                 dtype=np.int32),
            "box": np.array([o.shape == "box" for o in objs], dtype=np.bool_),
        })
        return table

    @classmethod
    def from_columns(cls, *, x: np.ndarray, y: np.ndarray, coords: np.ndarray, coord_offsets: np.ndarray,
                     columns: Sequence[tuple[str, np.ndarray, np.ndarray | None]], positive: np.ndarray,
                     class_names: Sequence[str | None], shape: str) -> ObjectTable:
        """A table of n objects given column-wise: centroids, outlines back to back, measurement columns
        (name, values, which objects have it or None for all) in key order, positive flags (-1 not graded),
        each object's class name, and the objects' shape; the same table as `of` on their SlideObjects."""
        table = cls()
        n = len(x)
        if n == 0:
            return table
        keys = tuple(name for name, _, _ in columns)
        values = np.column_stack([np.asarray(v, dtype=np.float64) for _, v, _ in columns]) if columns \
            else np.zeros((n, 0))
        if all(has is None for _, _, has in columns):
            keyset = np.full(n, table._keyset(keys), dtype=np.int32)
            flat, counts = values.ravel(), np.full(n, len(keys), dtype=np.int64)
        else:
            present = np.column_stack([np.ones(n, dtype=bool) if has is None else has for _, _, has in columns])
            patterns, first, inverse = np.unique(present, axis=0, return_index=True, return_inverse=True)
            ids = np.zeros(len(patterns), dtype=np.int32)
            for j in np.argsort(first).tolist():  # key tuples numbered as first met, as `of` does
                ids[j] = table._keyset(tuple(k for k, on in zip(keys, patterns[j].tolist(), strict=True) if on))
            keyset, flat, counts = ids[inverse.ravel()], values[present], present.sum(axis=1)
        names = {name: table._class(name) for name in dict.fromkeys(c for c in class_names if c is not None)}
        table._append({
            "x": np.asarray(x, dtype=np.float64), "y": np.asarray(y, dtype=np.float64),
            "coords": np.asarray(coords, dtype=np.float64).reshape(-1, 2),
            "coord_offsets": np.asarray(coord_offsets, dtype=np.int64),
            "values": flat, "value_offsets": _offsets(counts.tolist()), "keyset": keyset,
            "positive": np.asarray(positive, dtype=np.int8),
            "class_id": np.array([-1 if c is None else names[c] for c in class_names], dtype=np.int32),
            "box": np.full(n, shape == "box", dtype=np.bool_),
        })
        return table

    def _keyset(self, keys: tuple[str, ...]) -> int:
        found = self._keyset_ids.get(keys)
        if found is None:
            found = self._keyset_ids[keys] = len(self._keysets)
            self._keysets.append(keys)
        return found

    def _class(self, name: str) -> int:
        found = self._class_ids.get(name)
        if found is None:
            found = self._class_ids[name] = len(self._classes)
            self._classes.append(name)
        return found

    def _append(self, block: dict[str, np.ndarray]) -> None:
        self._blocks.append(block)
        self._n += len(block["x"])

    def add(self, other: ObjectTable | Iterable[SlideObject]) -> None:
        """Append another table's objects (or SlideObjects), after this one's."""
        table = other if isinstance(other, ObjectTable) else ObjectTable.of(other)
        keyset_map = np.array([self._keyset(k) for k in table._keysets], dtype=np.int32)
        class_map = np.array([self._class(c) for c in table._classes] + [-1], dtype=np.int32)  # -1 stays -1
        for block in table._blocks:
            self._append({**block, "keyset": keyset_map[block["keyset"]], "class_id": class_map[block["class_id"]]})

    def _joined(self) -> dict[str, np.ndarray]:
        """Every block as one (the table keeps the joined block)."""
        if len(self._blocks) != 1:
            blocks = self._blocks
            if not blocks:
                return _empty_block()
            joined: dict[str, np.ndarray] = {}
            for key in blocks[0]:
                parts = [b[key] for b in blocks]
                if key.endswith("_offsets"):
                    ends = np.cumsum([p[-1] for p in parts])
                    parts = [parts[0]] + [p[1:] + start for p, start in zip(parts[1:], ends[:-1], strict=True)]
                joined[key] = np.concatenate(parts)
            self._blocks = [joined]
        return self._blocks[0]

    def take(self, indices: np.ndarray) -> ObjectTable:
        """A table of the objects at `indices`, in that order (one block)."""
        block = self._joined()
        idx = np.asarray(indices, dtype=np.int64)
        out = ObjectTable()
        out._keysets, out._keyset_ids = list(self._keysets), dict(self._keyset_ids)
        out._classes, out._class_ids = list(self._classes), dict(self._class_ids)
        picked: dict[str, np.ndarray] = {}
        for field, offsets_key in (("coords", "coord_offsets"), ("values", "value_offsets")):
            picked[field], picked[offsets_key] = take_rings(block[field], block[offsets_key], idx)
        for key in ("x", "y", "keyset", "positive", "class_id", "box"):
            picked[key] = block[key][idx]
        out._append(picked)
        return out

    def sorted(self) -> ObjectTable:
        """The objects by (y, x), ties in the order they were added (as `sorted` orders SlideObjects)."""
        if self._n == 0:
            return self
        block = self._joined()
        return self.take(np.lexsort((block["x"], block["y"])))

    # --- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def row(self, i: int) -> SlideObject:
        """Object i as a SlideObject."""
        b = self._joined()
        c0, c1 = int(b["coord_offsets"][i]), int(b["coord_offsets"][i + 1])
        positive = int(b["positive"][i])
        class_id = int(b["class_id"][i])
        return SlideObject(x=float(b["x"][i]), y=float(b["y"][i]), contour=b["coords"][c0:c1],
                           measurements=self.measurements(i), positive=None if positive < 0 else bool(positive),
                           class_name=None if class_id < 0 else self._classes[class_id],
                           shape=_SHAPES[int(b["box"][i])])

    def __iter__(self) -> Iterator[SlideObject]:
        for i in range(self._n):
            yield self[i]

    def measurements(self, i: int) -> dict[str, float]:
        """Object `i`'s measurements as a new dict (its keys in their own order)."""
        b = self._joined()
        v0, v1 = int(b["value_offsets"][i]), int(b["value_offsets"][i + 1])
        return dict(zip(self._keysets[int(b["keyset"][i])], b["values"][v0:v1].tolist(), strict=True))

    def measurement_values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, ...]]]:
        """Every object's measurement values back to back, their (n + 1) offsets, each object's index into the
        key tuples, and the key tuples (object i's values are in the order of its keys)."""
        b = self._joined()
        return b["values"], b["value_offsets"], b["keyset"], list(self._keysets)

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Measurement `name` of every object: (values where present, a mask of the objects that have it)."""
        b = self._joined()
        position = np.array([keys.index(name) if name in keys else -1 for keys in self._keysets] or [-1],
                            dtype=np.int64)[b["keyset"]] if self._n else np.zeros(0, dtype=np.int64)
        present = position >= 0
        return b["values"][b["value_offsets"][:-1][present] + position[present]], present

    @property
    def x(self) -> np.ndarray:
        """Centroid x of every object (level-0 px)."""
        return self._joined()["x"]

    @property
    def y(self) -> np.ndarray:
        """Centroid y of every object (level-0 px)."""
        return self._joined()["y"]

    @property
    def positive(self) -> np.ndarray:
        """Per object: 1 positive, 0 negative, -1 not graded (int8)."""
        return self._joined()["positive"]

    @property
    def is_box(self) -> np.ndarray:
        """Per object: whether it is a detection's box (else a nucleus outline)."""
        return self._joined()["box"]

    @property
    def class_ids(self) -> np.ndarray:
        """Per object: the index of its class in `class_names`, -1 without one."""
        return self._joined()["class_id"]

    @property
    def class_names(self) -> list[str]:
        """The classes met, in the order first met."""
        return list(self._classes)

    def contours(self) -> tuple[np.ndarray, np.ndarray]:
        """Every outline back to back ((m, 2) level-0 x, y) and the (n + 1) offsets of each object's."""
        b = self._joined()
        return b["coords"], b["coord_offsets"]
