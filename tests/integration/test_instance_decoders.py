"""Bring-your-own instance models (HoVer-Net-, StarDist- and detector-style ONNX exports) on a synthetic
slide with known nuclei: every decoder finds them where they are, typed, once (tile seams included)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.spatial import cKDTree

from scanbridge.devtools import instance_models as im
from scanbridge.devtools import synth
from scanbridge.domain.errors import ModelInvalidError
from scanbridge.domain.models import ModelSpec
from scanbridge.domain.results import geojson_problems
from scanbridge.imaging.readers import open_scan
from scanbridge.inference.analyze import ScanAnalysis, analyze_scan
from scanbridge.inference.session import OnnxModel
from scanbridge.inference.validation import validate_onnx
from scanbridge.services.evaluation import evaluate

SIZE = 1024
RADIUS_PX = 6.0  # 3 µm at 0.5 µm/px, the slide's and the models' scale


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SlideTruth]:
    path = tmp_path_factory.mktemp("instances") / "ki67.svs"
    return path, synth.make_slide(path, SIZE, SIZE, mpp=0.5, tissue_fraction=0.5, seed=3, positive_fraction=0.5)


def _analyse(path: Path, spec: dict[str, Any], data: bytes) -> ScanAnalysis:
    model = OnnxModel(ModelSpec(**spec), data, prefer_gpu=False)
    reader = open_scan([path])
    try:
        return analyze_scan("scan", reader, model)
    finally:
        reader.close()


def _interior(truth: synth.SlideTruth) -> np.ndarray:
    """Mask of the truth nuclei whose whole disc is tissue (the renderer clips the others)."""
    return truth.whole_nuclei()


def _truth_labels(truth: synth.SlideTruth) -> np.ndarray:
    """The truth nuclei as a label mask (pixel centres within r, inside the tissue as rendered)."""
    labels = np.zeros((truth.height, truth.width), dtype=np.int32)
    yy, xx = np.mgrid[0:truth.height, 0:truth.width]
    for k, n in enumerate(truth.nuclei, start=1):
        x0, x1, y0, y1 = int(n.cx - n.r - 1), int(n.cx + n.r + 2), int(n.cy - n.r - 1), int(n.cy + n.r + 2)
        sub = (xx[y0:y1, x0:x1] + 0.5 - n.cx) ** 2 + (yy[y0:y1, x0:x1] + 0.5 - n.cy) ** 2 <= n.r ** 2
        labels[y0:y1, x0:x1][sub] = k
    return labels * truth.tissue_mask(1)


def _objects(analysis: ScanAnalysis, geometry: str = "Polygon") -> list[dict[str, Any]]:
    fc = analysis.result.geojson
    assert fc is not None
    return [f for f in fc["features"] if f["geometry"]["type"] == geometry]


def _centroids(features: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[f["properties"]["measurements"]["Centroid X px"],
                      f["properties"]["measurements"]["Centroid Y px"]] for f in features])


def _check_found(features: list[dict[str, Any]], truth: synth.SlideTruth, *, radius: float = 1.5) -> np.ndarray:
    """Recall on interior nuclei and precision within `radius` px; returns the matched truth index per feature."""
    found, real = _centroids(features), np.array([[n.cx, n.cy] for n in truth.nuclei])
    to_truth, match = cKDTree(real).query(found)
    to_found, _ = cKDTree(found).query(real)
    interior = _interior(truth)
    recall = float(np.mean(to_found[interior] <= radius))
    precision = float(np.mean(to_truth <= radius))
    assert recall >= 0.98 and precision >= 0.97, (recall, precision)
    return np.where(to_truth <= radius, match, -1)


def test_hovernet_logits_with_a_valid_crop_give_typed_nuclei(slide: tuple[Path, synth.SlideTruth]) -> None:
    # GIVEN a HoVer-Net-style export: np as logits (softmax declared), hv maps and a 3-type map, its outputs
    # cropped by 8 px on every side as a valid-convolution network's are
    path, truth = slide
    spec = im.hovernet_spec(crop=8, logits=True)
    # WHEN the slide runs through it
    analysis = _analyse(path, spec, im.build_hovernet_model(RADIUS_PX, crop=8, logits=True))
    features = _objects(analysis)
    # THEN every nucleus is found once where it is, with its outline matching the truth disc (AP50)
    match = _check_found(features, truth)
    assert geojson_problems(analysis.result.geojson or {}, SIZE, SIZE) == []
    quality = evaluate(analysis.result.geojson or {}, _truth_labels(truth))
    assert quality.ap50 >= 0.9 and (quality.mean_matched_iou or 0) >= 0.8, quality
    # AND each nucleus carries its type (the majority type inside it, the background type skipped)
    positive = np.array([n.positive for n in truth.nuclei])
    names = [f["properties"]["classification"]["name"] for f in features]
    typed = [(name == "Positive") == positive[m] for name, m in zip(names, match, strict=True) if m >= 0]
    assert set(names) == {"Positive", "Negative"} and np.mean(typed) >= 0.98
    assert all(f["properties"]["measurements"]["Type fraction"] > 0.5 for f in features)
    counts = analysis.result.results["class_counts"]  # type: ignore[index]
    assert counts == {"Negative": names.count("Negative"), "Positive": names.count("Positive")}


def test_half_resolution_hovernet_maps_with_their_downsample_work(slide: tuple[Path, synth.SlideTruth]) -> None:
    # GIVEN a HoVer-Net-style export whose maps are at half resolution, declared as output_downsample 2
    path, truth = slide
    spec = im.hovernet_spec(downsample=2)
    # WHEN the slide runs through it
    analysis = _analyse(path, spec, im.build_hovernet_model(RADIUS_PX, downsample=2))
    features = _objects(analysis)
    # THEN the nuclei are found in level-0 pixels (the map's 2x2 pixels mapped back), sized like the truth
    _check_found(features, truth)
    areas = np.array([f["properties"]["measurements"]["Area µm^2"] for f in features])
    assert abs(float(np.median(areas)) - math.pi * 3.0**2) < 0.15 * math.pi * 3.0**2
    assert analysis.result.results["nuclei_count"] == len(features)  # type: ignore[index]


def test_stardist_rays_give_star_convex_nuclei(slide: tuple[Path, synth.SlideTruth]) -> None:
    # GIVEN a StarDist-style export: object probability + 32 radial distances (input pixels)
    path, truth = slide
    spec = im.stardist_spec()
    spec["outputs"]["tile_overlap"] = 32
    # WHEN the slide runs through it
    analysis = _analyse(path, spec, im.build_stardist_model(RADIUS_PX))
    features = _objects(analysis)
    # THEN the polygons match the truth discs, and each carries its probability
    _check_found(features, truth, radius=2.0)
    quality = evaluate(analysis.result.geojson or {}, _truth_labels(truth))
    assert quality.ap50 >= 0.9 and (quality.mean_matched_iou or 0) >= 0.8, quality
    assert all(0.5 < f["properties"]["measurements"]["Score"] <= 1.0 for f in features)


@pytest.mark.parametrize("box_format", ["xyxy", "cxcywh"])
def test_boxes_are_one_per_object_across_tile_seams(slide: tuple[Path, synth.SlideTruth], box_format: str) -> None:
    # GIVEN a detector export: (N, 100, 6) rows box, score, class in input pixels; tiles of 256 px with a
    # 32 px overlap, so their cores meet every 192 px
    path, truth = slide
    spec = im.box_spec(box_format=box_format)
    stride = spec["input_size"] - 2 * spec["outputs"]["tile_overlap"]
    # WHEN the slide runs through it
    analysis = _analyse(path, spec, im.build_box_model(RADIUS_PX, box_format=box_format))
    boxes = [f for f in _objects(analysis) if f["properties"]["annotation_type"] == "detection"]
    # THEN every nucleus has exactly one box, those on a tile seam (seen whole by two windows) too
    found, real = _centroids(boxes), np.array([[n.cx, n.cy] for n in truth.nuclei])
    near = cKDTree(found).query_ball_point(real, r=3.0)
    counts = np.array([len(hits) for hits in near])
    on_seam = np.array([min(n.cx % stride, -n.cx % stride, n.cy % stride, -n.cy % stride) < n.r for n in truth.nuclei])
    assert on_seam.sum() >= 10
    assert (counts[on_seam] == 1).all() and (counts == 1).all()
    assert len(boxes) == len(truth.nuclei)
    # AND each box is its class's label, 2 r wide, with its score in the measurements
    positive = np.array([n.positive for n in truth.nuclei])
    for hits, pos in zip(near, positive, strict=True):
        props = boxes[hits[0]]["properties"]
        assert props["classification"]["name"] == ("Positive" if pos else "Negative")
        assert props["measurements"]["Score"] >= 0.5
        assert abs(props["measurements"]["Width px"] - 2 * RADIUS_PX) < 1e-3
    # AND the per-class points (draw: both) count the same objects
    points = {f["properties"]["classification"]["name"]: len(f["geometry"]["coordinates"])
              for f in _objects(analysis, "MultiPoint")}
    assert points == {"Positive": int(positive.sum()), "Negative": int((~positive).sum())}
    assert geojson_problems(analysis.result.geojson or {}, SIZE, SIZE) == []


def test_a_scan_refuses_outputs_its_decoder_cannot_decode(slide: tuple[Path, synth.SlideTruth]) -> None:
    # GIVEN a HoVer-Net-style export whose spec names an hv output the model does not have and forgets
    # its half-resolution maps' downsample
    path, _ = slide
    spec = im.hovernet_spec()
    spec["outputs"]["hv_output"] = "horizontal_vertical"
    # WHEN a scan runs through it
    with pytest.raises(ModelInvalidError) as caught:
        _analyse(path, spec, im.build_hovernet_model(RADIUS_PX, downsample=2))
    # THEN it stops at the first batch with a coded error listing every problem
    problems = caught.value.details["problems"]
    assert caught.value.code == "MODEL_INVALID"
    assert any("'horizontal_vertical' not found" in p for p in problems)
    assert any("output_downsample 2" in p for p in problems)


def test_the_upload_check_accepts_each_export_and_refuses_a_forgotten_downsample() -> None:
    # GIVEN the three export styles with their specs, and a half-resolution HoVer-Net export declared
    # at full resolution
    good = [(im.hovernet_spec(logits=True, crop=8), im.build_hovernet_model(RADIUS_PX, logits=True, crop=8)),
            (im.stardist_spec(), im.build_stardist_model(RADIUS_PX)), (im.box_spec(), im.build_box_model(RADIUS_PX))]
    # WHEN the upload check (load + dry run) looks at them
    # THEN the good ones pass, and the bad one is refused with each map named and the fix in the message
    for spec, data in good:
        assert validate_onnx(ModelSpec(**spec), data)["sha256"]
    with pytest.raises(ModelInvalidError) as caught:
        validate_onnx(ModelSpec(**im.hovernet_spec()), im.build_hovernet_model(RADIUS_PX, downsample=2))
    problems = caught.value.details["problems"]
    assert len(problems) == 3 and all("declare output_downsample 2" in p for p in problems), problems


def test_threshold_decoder_reads_a_half_resolution_cropped_map(slide: tuple[Path, synth.SlideTruth]) -> None:
    # GIVEN the default decoder on a two-channel map (nucleus in channel 1) at half resolution, 4 px cropped
    path, truth = slide
    spec = im.hovernet_spec(downsample=2, crop=4, typed=False)
    spec["outputs"] = {"probability_channel": 1, "output_crop": 4, "tile_overlap": 64, "min_tissue": 0.1}
    # WHEN the slide runs through it
    analysis = _analyse(path, spec, im.build_hovernet_model(RADIUS_PX, downsample=2, crop=4))
    # THEN the nuclei are where the truth has them, with the truth's area
    features = _objects(analysis)
    _check_found(features, truth)
    areas = np.array([f["properties"]["measurements"]["Area µm^2"] for f in features])
    assert abs(float(np.median(areas)) - math.pi * 3.0**2) < 0.15 * math.pi * 3.0**2
