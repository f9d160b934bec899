"""IHC positivity by compartment (QuPath's positive cell detection, the parts that matter for a score).

- Nucleus: positive when the mean DAB optical density *inside the nucleus outline* reaches the spec's
  `thresholds["positive"]`; graded 1+ / 2+ / 3+ by `outputs.hscore_thresholds` on the same mean, and
  the H-score is 1 x %1+ + 2 x %2+ + 3 x %3+ (0-300).
- Cell (optional, `outputs.cell_expansion_um` > 0): the ring from the nucleus outline out to that
  distance (the cytoplasm / membrane of a cytoplasmic or membrane marker), its mean DAB reported
  separately ("Cell DAB OD mean", `cell_positive_count`). DAB in that ring never makes the *nucleus*
  positive: a nucleus framed by brown membranes stays negative.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from scanbridge.inference.nuclei import disc as _disc

DEFAULT_HSCORE = (0.2, 0.4, 0.6)  # QuPath's thresholdPositive1..3 defaults (DAB OD)


def grade(value: float, thresholds: tuple[float, float, float] | list[float]) -> int:
    """0 (negative), 1, 2 or 3: how many of the ascending thresholds `value` reaches."""
    return int(sum(value >= t for t in thresholds))


def h_score(grades: list[int]) -> float | None:
    """The H-score of per-nucleus grades (0-3): sum of grade x % of nuclei with that grade (0-300)."""
    if not grades:
        return None
    counts = np.bincount(np.asarray(grades, dtype=np.intp), minlength=4)
    return float(100.0 * (counts[1] + 2 * counts[2] + 3 * counts[3]) / len(grades))


def ring_mean(contour: np.ndarray, plane: np.ndarray, expand_px: float) -> float | None:
    """Mean of `plane` over the ring between a nucleus outline and that outline expanded by `expand_px`.

    `contour` is the outline in continuous window coordinates (pixel (i, j) covers [j, j+1) x [i, i+1));
    the ring is cut at the window's edge. None when the ring has no pixel.
    """
    values, has = ring_means(contour, np.array([0, len(contour)], dtype=np.int64), plane, expand_px)
    return float(values[0]) if has[0] else None


def ring_means(coords: np.ndarray, offsets: np.ndarray, plane: np.ndarray,
               expand_px: float) -> tuple[np.ndarray, np.ndarray]:
    """`ring_mean` of many outlines back to back (`coords`, `offsets`): the means and which rings have a pixel.

    Each outline is filled (cv2.fillPoly, 1/16 px) in its own canvas, its bounding box grown by the ring and
    a pixel, and the canvas dilated by the ring's disc. The canvases of outlines away from the window's edge
    are laid side by side in one image: one fill and one dilation make each its own, since nothing a canvas
    holds comes within the disc of its sides. The others are made one by one.
    """
    n = len(offsets) - 1
    values, has = np.zeros(n), np.zeros(n, dtype=bool)
    if n == 0:
        return values, has
    r = max(1, round(expand_px))
    h, w = plane.shape
    starts = offsets[:-1]
    lo = np.floor(np.minimum.reduceat(coords, starts, axis=0)).astype(np.int64) - r - 1
    hi = np.ceil(np.maximum.reduceat(coords, starts, axis=0)).astype(np.int64) + r + 1
    inner = (lo >= 0).all(axis=1) & (hi[:, 0] <= w) & (hi[:, 1] <= h)
    for i in np.flatnonzero(~inner).tolist():
        x0, y0 = max(int(lo[i, 0]), 0), max(int(lo[i, 1]), 0)
        x1, y1 = min(int(hi[i, 0]), w), min(int(hi[i, 1]), h)
        if x1 <= x0 or y1 <= y0:
            continue
        nucleus = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        pts = np.round((coords[offsets[i]:offsets[i + 1]] - [x0 + 0.5, y0 + 0.5]) * 16).astype(np.int32)
        cv2.fillPoly(nucleus, [pts], 1, lineType=cv2.LINE_8, shift=4)  # pixel centres at integer + 0.5
        ring = cv2.dilate(nucleus, _disc(r)) - nucleus
        if ring.any():
            has[i] = True
            values[i] = cv2.mean(np.ascontiguousarray(plane[y0:y1, x0:x1], dtype=np.float32), mask=ring)[0]
    flat = np.asarray(plane, dtype=np.float32).ravel()
    lengths = np.diff(offsets)
    # each outline as ring_mean places it in its own canvas (1/16 px fixed point)
    pts = np.round((coords - np.repeat(lo + 0.5, lengths, axis=0)) * 16).astype(np.int32)
    inner_idx = np.flatnonzero(inner)
    for part in range(0, len(inner_idx), RING_CANVASES):
        idx = inner_idx[part:part + RING_CANVASES]
        size = hi[idx] - lo[idx]  # (k, 2) canvas width, height
        at = np.cumsum(size[:, 0]) - size[:, 0]  # each canvas's first column
        canvas = np.zeros((int(size[:, 1].max()), int(at[-1] + size[-1, 0])), dtype=np.uint8)
        cv2.fillPoly(canvas, [pts[offsets[i]:offsets[i + 1]] + np.array([16 * a, 0], dtype=np.int32)
                              for i, a in zip(idx.tolist(), at.tolist(), strict=True)],
                     1, lineType=cv2.LINE_8, shift=4)  # moved by whole pixels: the same fill
        ring = cv2.dilate(canvas, _disc(r)) - canvas
        # the ring pixels in the canvases' raster order, which is each canvas's own raster order
        rows, cols = np.divmod(np.flatnonzero(ring.view(bool)), canvas.shape[1])
        cell = np.repeat(np.arange(len(idx)), size[:, 0])[cols]
        src = (lo[idx, 1][cell] + rows) * w + lo[idx, 0][cell] + cols - at[cell]
        count = np.bincount(cell, minlength=len(idx))
        # cv2.mean under a mask: the float32 values added in raster order (in float64), times 1 / count
        total = np.bincount(cell, weights=flat[src], minlength=len(idx))
        values[idx] = total * (1.0 / np.maximum(count, 1))
        has[idx] = count > 0
    return values, has


RING_CANVASES = 256  # outlines filled in one image at most (its width in 1/16 px stays far inside int32)


def nucleus_measurements(outputs_spec: dict[str, Any], thresholds: dict[str, float], score: float,
                         contour: np.ndarray, stains: np.ndarray | None, map_mpp: float) -> dict[str, float]:
    """The IHC measurements of one nucleus: its grade (with `hscore_thresholds`) and, with
    `cell_expansion_um`, the mean DAB of the cell ring around it and whether that ring is positive.

    `score` is the nucleus's positive-channel mean, `contour` its outline and `stains` the window's stain
    planes (C, h, w), both in window map pixels of `map_mpp` µm.
    """
    out: dict[str, float] = {}
    levels = outputs_spec.get("hscore_thresholds")
    if levels:
        out["DAB grade"] = float(grade(score, [float(v) for v in levels]))
    expand_um = float(outputs_spec.get("cell_expansion_um", 0.0) or 0.0)
    channel = outputs_spec.get("intensity_channel")
    if expand_um > 0 and stains is not None and channel is not None and int(channel) < stains.shape[0]:
        value = ring_mean(contour, stains[int(channel)], expand_um / map_mpp)
        if value is not None:
            out["Cell DAB OD mean"] = value
            out["Cell positive"] = float(value >= float(thresholds.get("cell_positive", 0.3)))
    return out


def nuclei_measurements(outputs_spec: dict[str, Any], thresholds: dict[str, float], scores: np.ndarray,
                        coords: np.ndarray, offsets: np.ndarray, stains: np.ndarray | None,
                        map_mpp: float) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """`nucleus_measurements` of many nuclei as columns (name, values, which nuclei have it or None for all):
    `scores` their positive-channel means, their outlines back to back (`coords`, `offsets`)."""
    out: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    levels = outputs_spec.get("hscore_thresholds")
    if levels:
        steps = np.array([float(v) for v in levels])
        out.append(("DAB grade", (scores[:, None] >= steps[None, :]).sum(axis=1).astype(np.float64), None))
    expand_um = float(outputs_spec.get("cell_expansion_um", 0.0) or 0.0)
    channel = outputs_spec.get("intensity_channel")
    if expand_um > 0 and stains is not None and channel is not None and int(channel) < stains.shape[0]:
        value, has = ring_means(coords, offsets, stains[int(channel)], expand_um / map_mpp)
        cut = float(thresholds.get("cell_positive", 0.3))
        out += [("Cell DAB OD mean", value, has), ("Cell positive", (value >= cut).astype(np.float64), has)]
    return out


def summary_figures(dab_grades: list[float], cell_positive: list[float]) -> tuple[dict[str, Any], dict[str, str]]:
    """Scan-level IHC figures from the nuclei's `DAB grade` and `Cell positive` measurements (of the nuclei
    that have them): (results keys, summary lines).

    H-score and the count per grade when nuclei are graded; cell positivity (the ring compartment,
    reported apart from nuclear positivity) when cells were measured.
    """
    results: dict[str, Any] = {}
    summary: dict[str, str] = {}
    grades = [int(g) for g in dab_grades]
    score = h_score(grades)
    if score is not None:
        counts = np.bincount(np.asarray(grades, dtype=np.intp), minlength=4)
        results["h_score"] = round(score, 2)
        results["grade_counts"] = {"0": int(counts[0]), "1+": int(counts[1]), "2+": int(counts[2]),
                                   "3+": int(counts[3])}
        summary["H-score"] = f"{score:.0f} (1+ {counts[1]:,}, 2+ {counts[2]:,}, 3+ {counts[3]:,})"
    if cell_positive:
        positive = int(sum(cell_positive))
        results["cell_positive_count"] = positive
        results["cell_positivity_percent"] = round(100.0 * positive / len(cell_positive), 3)
        summary["Cell positivity (DAB, cytoplasm/membrane)"] = f"{100.0 * positive / len(cell_positive):.1f} %"
    return results, summary
