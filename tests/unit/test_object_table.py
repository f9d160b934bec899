"""The column-wise object store of the object pipeline (inference/object_table.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from scanbridge.inference.object_table import ObjectTable, SlideObject


def _objects(n: int, seed: int = 0) -> list[SlideObject]:
    """Objects with every kind of field: outlines of varying length, keys that vary (and in their own
    order), classes, positivity None / True / False and both shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        keys = {"Area px^2": float(rng.random() * 100), "Solidity": float(rng.random())}
        if i % 3 == 0:
            keys = {"Score": float(rng.random()), **keys}  # another key order
        if i % 4 == 0:
            keys["Cell positive"] = float(i % 2)
        out.append(SlideObject(x=float(rng.integers(0, 50)), y=float(rng.integers(0, 50)),
                               contour=rng.random((3 + i % 7, 2)) * 100,
                               measurements=keys, positive=(None, True, False)[i % 3],
                               class_name=(None, "Tumor", "Stroma")[i % 3 if i % 5 else 0],
                               shape="box" if i % 6 == 5 else "nucleus"))
    return out


def _same(a: SlideObject, b: SlideObject) -> bool:
    return (a.x, a.y, a.positive, a.class_name, a.shape) == (b.x, b.y, b.positive, b.class_name, b.shape) \
        and np.array_equal(a.contour, b.contour) and list(a.measurements.items()) == list(b.measurements.items())


def test_a_table_gives_back_every_object_with_its_keys_in_their_order() -> None:
    # GIVEN objects added in three tables of different classes and key sets (as tiles add them)
    objs = _objects(60)
    table = ObjectTable()
    for part in (objs[:7], objs[7:30], objs[30:]):
        table.add(ObjectTable.of(part))
    # WHEN they are read back, and sorted
    ordered = table.sorted()
    # THEN each object is the one added, measurements in their own key order, and sorting is by (y, x) with
    # ties in the order added, as sorted() orders the objects
    assert len(table) == 60 and all(_same(a, b) for a, b in zip(table, objs, strict=True))
    expected = sorted(objs, key=lambda o: (o.y, o.x))
    assert all(_same(a, b) for a, b in zip(ordered, expected, strict=True))
    assert [o.class_name for o in table[5:9]] == [o.class_name for o in objs[5:9]]


def test_a_column_reads_one_measurement_of_the_objects_that_have_it() -> None:
    # GIVEN objects of which a quarter have "Cell positive"
    objs = _objects(40, seed=1)
    table = ObjectTable.of(objs)
    # WHEN the column is read
    values, present = table.column("Cell positive")
    # THEN it holds exactly those objects' values, in order; a key no object has is empty
    assert present.tolist() == ["Cell positive" in o.measurements for o in objs]
    assert values.tolist() == [o.measurements["Cell positive"] for o in objs if "Cell positive" in o.measurements]
    assert table.column("Nope")[0].size == 0 and not ObjectTable().column("Score")[1].any()
    # AND take() keeps the chosen objects only, in the order asked
    picked = table.take(np.array([9, 2, 30]))
    assert all(_same(a, objs[i]) for a, i in zip(picked, [9, 2, 30], strict=True))


def test_a_table_holds_a_fraction_of_the_memory_of_the_objects() -> None:
    # GIVEN 5,000 nucleus-like objects (18 corners, 21 measurements each)
    rng = np.random.default_rng(2)
    names = [f"measurement {k}" for k in range(21)]

    def make() -> list[SlideObject]:
        return [SlideObject(x=float(i), y=float(i), contour=rng.random((18, 2)),
                            measurements={k: float(rng.random()) for k in names}, positive=None) for i in range(5000)]

    # WHEN they are kept as SlideObjects, and as a table
    tracemalloc.start()
    try:
        objs = make()
        as_objects = tracemalloc.get_traced_memory()[0]
        del objs
        base = tracemalloc.get_traced_memory()[0]
        table = ObjectTable.of(make())
        as_table = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # THEN the table needs well under half the memory (the values themselves: 8 bytes each)
    assert len(table) == 5000 and as_table < as_objects / 2
