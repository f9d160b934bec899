"""IHC compartments (inference/ihc.py): grades, H-score and the cell ring, on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from scanbridge.inference import ihc


def _disc_outline(cx: float, cy: float, r: float, n: int = 64) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(a), cy + r * np.sin(a)])


def test_grades_and_h_score_follow_the_thresholds() -> None:
    # GIVEN QuPath-style thresholds for 1+ / 2+ / 3+
    levels = (0.2, 0.4, 0.6)
    # WHEN nuclei of known mean DAB are graded / THEN each gets the number of thresholds it reaches
    grades = [ihc.grade(v, levels) for v in (0.05, 0.2, 0.39, 0.41, 0.9)]
    assert grades == [0, 1, 1, 2, 3]
    # AND the H-score is 1 x %1+ + 2 x %2+ + 3 x %3+ (here 100 * (2 + 2 + 3) / 5)
    assert ihc.h_score(grades) == pytest.approx(140.0)
    assert ihc.h_score([]) is None and ihc.h_score([3, 3]) == pytest.approx(300.0)


def test_the_cell_ring_reads_the_membrane_not_the_nucleus() -> None:
    # GIVEN a pale nucleus (DAB 0.05, r = 6 px) framed by a brown membrane ring (DAB 0.8) out to 9 px
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    dist = np.hypot(xx - 32.0, yy - 32.0)
    plane = np.where(dist <= 6.0, 0.05, np.where(dist <= 9.0, 0.8, 0.0)).astype(np.float32)
    outline = _disc_outline(32.0, 32.0, 6.0)
    # WHEN the ring 3 px out from the outline is measured
    ring = ihc.ring_mean(outline, plane, 3.0)
    # THEN it reads the membrane, not the nucleus inside nor the glass outside
    assert ring is not None and ring > 0.6
    # AND the nucleus's own grade and cell figures come apart: a negative nucleus in a positive cell
    stains = np.stack([np.zeros_like(plane), np.zeros_like(plane), plane])
    m = ihc.nucleus_measurements({"hscore_thresholds": [0.25, 0.45, 0.65], "cell_expansion_um": 1.5,
                                  "intensity_channel": 2}, {"cell_positive": 0.3}, 0.05, outline, stains, 0.5)
    assert m["DAB grade"] == 0 and m["Cell positive"] == 1.0 and m["Cell DAB OD mean"] > 0.6
    results, summary = ihc.summary_figures([m["DAB grade"], 3.0], [m["Cell positive"], 0.0])
    assert results["h_score"] == pytest.approx(150.0) and results["cell_positivity_percent"] == pytest.approx(50.0)
    assert results["grade_counts"] == {"0": 1, "1+": 0, "2+": 0, "3+": 1} and "H-score" in summary


def test_a_ring_outside_the_window_is_none() -> None:
    # GIVEN an outline entirely outside the plane / WHEN measured / THEN no ring
    assert ihc.ring_mean(_disc_outline(-50.0, -50.0, 4.0), np.ones((16, 16), np.float32), 2.0) is None
