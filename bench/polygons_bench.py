"""Tissue polygons from masks with many holes: mask_to_polygons now (STRtree nesting) and before (the
symmetric_difference fold it replaced, kept here only as the reference).

    python bench/polygons_bench.py [--before] [--json]

Masks: a square of tissue with k x k square holes (225 / 484 / 961 / 1936 holes) on a 1024 px mask, and
a 40x slide's tissue-model mask (100,000 x 80,000 level-0 px at 0.25 µm/px, 8 µm per map pixel:
3125 x 2500) with 1936 holes and 1936 islands. `--before` also times the old fold (50 s at 1936 holes).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import reduce
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon, box
from skimage import measure

from scanbridge.inference.postprocess import _polygons_of, mask_to_polygons


def holes_mask(k: int, side: int = 1024) -> np.ndarray:
    """A tissue square with k x k square holes."""
    mask = np.zeros((side, side), dtype=bool)
    mask[8:side - 8, 8:side - 8] = True
    pitch = (side - 32) // k
    for i in range(k):
        for j in range(k):
            y, x = 16 + i * pitch, 16 + j * pitch
            mask[y + pitch // 4:y + pitch // 4 + max(1, pitch // 3), x + pitch // 4:x + pitch // 4 + max(1, pitch // 3)] = False
    return mask


def slide_mask(k: int = 44) -> np.ndarray:
    """A 40x slide's tissue mask at 8 µm/px: two tissue blobs with k*k holes, each hole holding an island."""
    h, w = 2500, 3125
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((xx - 1000) / 800.0) ** 2 + ((yy - 1250) / 1100.0) ** 2 < 1
    mask |= ((xx - 2300) / 700.0) ** 2 + ((yy - 1200) / 1000.0) ** 2 < 1
    pitch = 1400 // k
    for i in range(k):
        for j in range(k):
            y, x = 550 + i * pitch, 300 + 2 * j * pitch // 2 + (j * pitch)
            if y + pitch >= h or x + pitch >= w:
                continue
            mask[y:y + pitch // 2, x:x + pitch // 2] = False
            mask[y + pitch // 8:y + pitch // 8 + 2, x + pitch // 8:x + pitch // 8 + 2] = True
    return mask


def fold_polygons(mask: np.ndarray, scale: float, bounds: tuple[int, int]) -> list[Polygon]:
    """The replaced algorithm (reference only): every ring folded in with symmetric_difference."""
    padded = np.pad(mask.astype(np.float32), 1)
    rings = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) >= 4:
            rings.append(Polygon(np.column_stack([contour[:, 1] - 0.5, contour[:, 0] - 0.5]) * scale))
    region = reduce(lambda a, b: a.symmetric_difference(b), rings)
    return _polygons_of(shapely.make_valid(region.intersection(box(0, 0, bounds[0], bounds[1]))))


def _time(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    """Print the timings (and hole counts) per mask."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", action="store_true", help="also time the old symmetric_difference fold")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for k in (15, 22, 31, 44):
        mask = holes_mask(k)
        bounds = (mask.shape[1] * 8, mask.shape[0] * 8)
        t_now, polys = _time(mask_to_polygons, mask, 8.0, bounds)
        row: dict[str, Any] = {"mask": f"{mask.shape[1]}x{mask.shape[0]}", "holes": sum(len(p.interiors) for p in polys),
                               "now_s": round(t_now, 3)}
        if args.before:
            t_old, old = _time(fold_polygons, mask, 8.0, bounds)
            row["before_s"] = round(t_old, 3)
            row["same_area"] = abs(sum(p.area for p in old) - sum(p.area for p in polys)) < 1e-6
        rows.append(row)
    mask = slide_mask()
    t_now, polys = _time(mask_to_polygons, mask, 32.0, (100_000, 80_000))
    rows.append({"mask": "40x slide 3125x2500", "holes": sum(len(p.interiors) for p in polys),
                 "polygons": len(polys), "now_s": round(t_now, 3)})
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
