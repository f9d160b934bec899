"""Segmentation quality: AP50 (TP / (TP + FP + FN)), pixel Jaccard and Hungarian matching on known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scanbridge.domain.errors import ValidationError
from scanbridge.entrypoints.cli import main as cli_main
from scanbridge.services.evaluation import evaluate, evaluate_masks, geojson_objects, load_source, rasterise


def _squares(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """A label mask with one label per (y0, x0, y1, x1) box, labels 1..n."""
    out = np.zeros(shape, np.int32)
    for i, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        out[y0:y1, x0:x1] = i
    return out


BOXES = [(5, 5, 15, 15), (5, 30, 15, 40), (30, 5, 40, 15), (30, 30, 40, 40)]


def _square_feature(x0: float, y0: float, x1: float, y1: float) -> dict[str, object]:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}


def _disc_feature(cx: float, cy: float, r: float, k: int = 64) -> dict[str, object]:
    ring = [[cx + r * math.cos(a), cy + r * math.sin(a)] for a in np.linspace(0, 2 * math.pi, k + 1)]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}


def _fc(features: list[dict[str, object]]) -> dict[str, object]:
    return {"type": "FeatureCollection", "features": features}


def test_identical_masks_score_perfectly_whatever_the_label_values() -> None:
    # GIVEN a mask and the same objects under other label values
    gt = _squares((50, 50), BOXES)
    pred = np.where(gt > 0, gt * 7 + 100, 0)
    # WHEN evaluated
    ev = evaluate_masks(pred, gt)
    # THEN every object is a true positive and both scores are 1
    assert (ev.ap50, ev.jaccard, ev.tp, ev.fp, ev.fn, ev.n_pred, ev.n_gt) == (1.0, 1.0, 4, 0, 0, 4, 4)
    assert ev.mean_matched_iou == pytest.approx(1.0)


def test_a_missing_object_is_one_false_negative_and_an_extra_one_a_false_positive() -> None:
    # GIVEN ground truth with 4 objects, a prediction missing one, another with one extra
    gt = _squares((50, 50), BOXES)
    missing = _squares((50, 50), BOXES[:3])
    extra = _squares((60, 60), [*BOXES, (45, 45, 55, 55)])[:50, :50]
    # WHEN evaluated
    ev = evaluate_masks(missing, gt)
    ev_extra = evaluate_masks(extra, gt)
    # THEN FN = 1 and AP50 = 3 / 4; the extra object is FP = 1 and AP50 = 4 / 5
    assert (ev.tp, ev.fp, ev.fn) == (3, 0, 1) and ev.ap50 == pytest.approx(0.75)
    assert ev.jaccard == pytest.approx(0.75)
    assert (ev_extra.tp, ev_extra.fp, ev_extra.fn) == (4, 1, 0) and ev_extra.ap50 == pytest.approx(0.8)


def test_shifted_objects_lower_the_iou_until_they_stop_matching() -> None:
    # GIVEN 10x10 squares shifted by 2 px (IoU 80/120) and by 5 px (IoU 50/150)
    gt = _squares((50, 50), BOXES)
    small = _squares((50, 50), [(y0, x0 + 2, y1, x1 + 2) for y0, x0, y1, x1 in BOXES])
    large = _squares((50, 50), [(y0, x0 + 5, y1, x1 + 5) for y0, x0, y1, x1 in BOXES])
    # WHEN evaluated
    ev_small, ev_large = evaluate_masks(small, gt), evaluate_masks(large, gt)
    # THEN the small shift still matches, with the exact IoU; the large one does not (IoU 1/3 < 0.5)
    assert ev_small.tp == 4 and ev_small.mean_matched_iou == pytest.approx(80 / 120)
    assert ev_small.jaccard == pytest.approx(320 / 480)
    assert (ev_large.tp, ev_large.fp, ev_large.fn, ev_large.ap50) == (0, 4, 4, 0.0)
    assert ev_large.mean_matched_iou is None


def test_hungarian_assignment_maximises_the_true_positives() -> None:
    # GIVEN 10-px-tall strips: g1 = columns 0-9, g2 = columns 10-12; pred A = columns 2-12, pred B = 0-1.
    # IoU(A, g1) = 80/130 is the best single pair, but then g2's only partner (A, IoU 30/110) is taken and
    # B's only partner (g1, IoU 20/100) too: greedy best-first finds 1 match at threshold 0.2
    gt = np.zeros((10, 20), np.int32)
    gt[:, 0:10], gt[:, 10:13] = 1, 2
    pred = np.zeros((10, 20), np.int32)
    pred[:, 2:13], pred[:, 0:2] = 1, 2
    # WHEN evaluated at threshold 0.2 (cellpose evaluates several) and at 0.5
    low, ap50 = evaluate_masks(pred, gt, threshold=0.2), evaluate_masks(pred, gt)
    # THEN the Hungarian assignment finds both (A -> g2, B -> g1); at 0.5 only A -> g1 remains
    assert (low.tp, low.fp, low.fn) == (2, 0, 0)
    assert low.mean_matched_iou == pytest.approx((30 / 110 + 20 / 100) / 2)
    assert (ap50.tp, ap50.fp, ap50.fn) == (1, 1, 1) and ap50.mean_matched_iou == pytest.approx(80 / 130)


def test_an_iou_of_exactly_one_half_counts() -> None:
    # GIVEN pred A = g1 + the top half of g2, pred B = the bottom half of g2 (IoU exactly 0.5)
    gt = _squares((20, 40), [(0, 0, 10, 10), (0, 10, 10, 20)])
    pred = np.zeros((20, 40), np.int32)
    pred[0:10, 0:10] = 1
    pred[0:5, 10:20] = 1  # A: IoU(A, g1) = 100/150
    pred[5:10, 10:20] = 2  # B: IoU(B, g2) = 50/100
    # WHEN evaluated
    ev = evaluate_masks(pred, gt)
    # THEN both objects match (the threshold is inclusive) with their own IoUs
    assert (ev.tp, ev.fp, ev.fn) == (2, 0, 0)
    assert ev.mean_matched_iou == pytest.approx((100 / 150 + 0.5) / 2)


def test_the_assignment_is_one_to_one_and_keeps_the_higher_iou() -> None:
    # GIVEN one gt square; an exact pred, a pred covering 60 % of it, and that one plus a stray object
    gt = _squares((30, 30), [(0, 0, 10, 10)])
    exact = _fc([_square_feature(0, 0, 10, 10)])
    partial = _fc([_square_feature(0, 0, 6, 10)])
    both = _fc([_square_feature(0, 0, 6, 10), _square_feature(20, 20, 30, 30)])
    # WHEN each is evaluated against the gt mask (GeoJSON rasterised on the mask's grid)
    ev_exact, ev_partial = evaluate(exact, gt), evaluate(partial, gt)
    ev_both = evaluate(both, gt)
    # THEN the exact one scores IoU 1, the partial 0.6, and the stray object is a false positive
    assert ev_exact.mean_matched_iou == pytest.approx(1.0)
    assert ev_partial.mean_matched_iou == pytest.approx(0.6)
    assert (ev_both.tp, ev_both.fp, ev_both.fn) == (1, 1, 0)


def test_geojson_is_rasterised_with_pixel_centres_at_half_integers() -> None:
    # GIVEN a 10x10 square polygon from (5, 5) to (15, 15) and a polygon with a hole
    square = geojson_objects(_fc([_square_feature(5, 5, 15, 15)]))
    ring = [[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]
    hole = [[5, 5], [15, 5], [15, 15], [5, 15], [5, 5]]
    donut = geojson_objects(_fc([{"type": "Feature", "properties": {},
                                  "geometry": {"type": "Polygon", "coordinates": [ring, hole]}}]))
    # WHEN rasterised
    labels = rasterise(square, (0, 0), (30, 30))
    d = rasterise(donut, (0, 0), (30, 30))
    # THEN exactly pixels 5..14 are inside, and the hole is background
    assert labels.sum() == 100 and labels[5:15, 5:15].all()
    assert d.sum() == 400 - 100 and not d[5:15, 5:15].any()



def test_a_hole_leaves_an_earlier_object_under_it() -> None:
    # GIVEN a small square, then a ring-shaped object whose hole lies exactly over it
    small = [[20, 20], [30, 20], [30, 30], [20, 30], [20, 20]]
    outer = [[10, 10], [40, 10], [40, 40], [10, 40], [10, 10]]
    hole = [[15, 15], [35, 15], [35, 35], [15, 35], [15, 15]]
    objects = geojson_objects(_fc([{"type": "Feature", "properties": {},
                                    "geometry": {"type": "Polygon", "coordinates": rings}}
                                   for rings in ([small], [outer, hole])]))
    # WHEN rasterised, the ring second (on top)
    labels = rasterise(objects, (0, 0), (50, 50))
    # THEN the small square keeps all its pixels (the hole paints nothing) and the ring has only its own
    assert int((labels == 1).sum()) == 10 * 10
    assert int((labels == 2).sum()) == 30 * 30 - 20 * 20

def test_two_geojson_sets_share_one_grid_and_points_are_not_objects() -> None:
    # GIVEN discs far from the origin as gt, the same discs 1 px off as pred, and a MultiPoint feature
    centres = [(1000.0 + 30 * i, 2000.0 + 20 * (i % 3)) for i in range(12)]
    gt = _fc([_disc_feature(x, y, 6) for x, y in centres])
    points = {"type": "Feature", "properties": {}, "geometry": {"type": "MultiPoint", "coordinates": [[0, 0]]}}
    pred = _fc([_disc_feature(x + 1, y, 6) for x, y in centres] + [points])
    # WHEN evaluated
    ev = evaluate(pred, gt)
    # THEN every disc matches with IoU ~0.8 and the points do not count
    assert (ev.tp, ev.fp, ev.fn, ev.n_pred) == (12, 0, 0, 12)
    assert 0.75 < (ev.mean_matched_iou or 0) < 0.9


def test_empty_sets_agree_and_bad_inputs_are_refused() -> None:
    # GIVEN empty sets, masks of different shapes, a non-GeoJSON body and a float mask
    empty = _fc([])
    # WHEN / THEN empty vs empty is perfect agreement; pred empty vs gt objects is all FN
    assert evaluate(empty, empty).ap50 == 1.0
    ev = evaluate(empty, _squares((50, 50), BOXES))
    assert (ev.tp, ev.fn, ev.ap50, ev.jaccard) == (0, 4, 0.0, 0.0)
    with pytest.raises(ValidationError):
        evaluate_masks(np.zeros((5, 5), np.int32), np.zeros((6, 5), np.int32))
    with pytest.raises(ValidationError):
        evaluate({"type": "nope"}, empty)
    with pytest.raises(ValidationError):
        evaluate_masks(np.full((5, 5), 0.5), np.zeros((5, 5), np.int32))
    with pytest.raises(ValidationError):  # a grid larger than the rasterisation limit
        evaluate(_fc([_square_feature(0, 0, 10, 10)]), _fc([_square_feature(1e5, 1e5, 1e5 + 10, 1e5 + 10)]))


def test_cli_evaluate_reads_geojson_and_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a gt mask (.npy) and a pred GeoJSON missing one of its four squares
    np.save(tmp_path / "gt.npy", _squares((50, 50), BOXES))
    pred = _fc([_square_feature(x0, y0, x1, y1) for y0, x0, y1, x1 in BOXES[:3]])
    (tmp_path / "pred.geojson").write_text(json.dumps(pred))
    # WHEN `scanbridge evaluate PRED GT --json` and the readable form run
    assert cli_main(["evaluate", str(tmp_path / "pred.geojson"), str(tmp_path / "gt.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert cli_main(["evaluate", str(tmp_path / "gt.npy"), str(tmp_path / "gt.npy")]) == 0
    text = capsys.readouterr().out
    # THEN the figures are the known ones, and load_source reads both kinds
    assert (out["tp"], out["fn"], out["ap50"], out["jaccard"]) == (3, 1, 0.75, 0.75)
    assert "AP50" in text and "1.000" in text
    assert isinstance(load_source(tmp_path / "gt.npy"), np.ndarray)
    assert load_source(tmp_path / "pred.geojson")["type"] == "FeatureCollection"  # type: ignore[index]
    # AND a file that is neither is a clear error (exit 2)
    (tmp_path / "junk.txt").write_text("nope")
    assert cli_main(["evaluate", str(tmp_path / "junk.txt"), str(tmp_path / "gt.npy")]) == 2
