"""Instance decoders (inference/instances.py): the upload check's output_problems, HoVer-Net's watershed,
StarDist's ray convention and the boxes' NMS, on arrays and on the devtools models' real dry-run outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from scanbridge.devtools import instance_models as im
from scanbridge.domain.catalog import BUILTIN_SPECS
from scanbridge.domain.models import ModelSpec
from scanbridge.inference.instances import box_nms, decoder_for, hovernet_labels, output_problems
from scanbridge.inference.session import OnnxModel


def _dry_run(spec: dict[str, Any], data: bytes, size: int = 256) -> dict[str, np.ndarray]:
    """The model's outputs for a batch of two white tiles, by name (raw, as the upload check sees them)."""
    model = OnnxModel(ModelSpec(**spec), data, prefer_gpu=False)
    x = model.prepare(np.full((2, size, size, 3), 255, dtype=np.uint8))
    return dict(zip(model.output_names, model.session.run(None, {model.spec.input_name: x}), strict=True))


@pytest.mark.parametrize(("spec", "data"), [
    (im.hovernet_spec(), im.build_hovernet_model()),
    (im.hovernet_spec(downsample=2, crop=4), im.build_hovernet_model(downsample=2, crop=4)),
    (im.stardist_spec(), im.build_stardist_model()),
    (im.box_spec(), im.build_box_model()),
])
def test_models_whose_outputs_fit_their_decoder_pass(spec: dict[str, Any], data: bytes) -> None:
    # GIVEN a model and the spec that describes it
    outputs = _dry_run(spec, data)
    # WHEN the upload check looks at its dry-run outputs
    problems = output_problems(ModelSpec(**spec), outputs)
    # THEN it finds nothing wrong
    assert problems == []


def test_the_builtin_object_models_pass() -> None:
    # GIVEN the built-in nuclei and ihc-positivity specs and outputs of their shapes
    for name in ("nuclei", "ihc-positivity"):
        spec = BUILTIN_SPECS[name]
        channels = 2 if name == "ihc-positivity" else 1
        outputs = {spec.output_name: np.zeros((2, channels, 512, 512), np.float32),
                   "stain_od": np.zeros((2, 3, 512, 512), np.float32)}
        # WHEN / THEN the check passes them
        assert output_problems(spec, outputs) == [], name


def test_a_half_resolution_map_without_its_downsample_is_refused() -> None:
    # GIVEN a HoVer-Net-style model with half-resolution maps whose spec says output_downsample 1
    spec = im.hovernet_spec()
    outputs = _dry_run(spec, im.build_hovernet_model(downsample=2))
    # WHEN it is checked
    problems = output_problems(ModelSpec(**spec), outputs)
    # THEN each of its three maps is named, with the downsample that would fit
    assert len(problems) == 3 and all("128x128" in p and "output_downsample 2" in p for p in problems), problems


def test_a_cropped_map_without_output_crop_is_refused() -> None:
    # GIVEN a valid-convolution-style model (maps 2 x 6 px smaller than the input), no output_crop declared
    spec = im.hovernet_spec()
    outputs = _dry_run(spec, im.build_hovernet_model(crop=6))
    # WHEN it is checked
    problems = output_problems(ModelSpec(**spec), outputs)
    # THEN the fix is named
    assert problems and all("244x244" in p and "output_crop 6" in p for p in problems), problems


def test_every_problem_of_a_broken_hovernet_export_is_listed() -> None:
    # GIVEN a HoVer-Net spec whose hv output is missing, whose type map has 4 channels for 3 labels and
    # whose nuclear probability has 3 channels
    spec = ModelSpec(**im.hovernet_spec())
    outputs = {"np": np.zeros((2, 3, 256, 256), np.float32), "tp": np.zeros((2, 4, 256, 256), np.float32)}
    # WHEN it is checked
    problems = output_problems(spec, outputs)
    # THEN all three problems are listed at once
    assert any("'hv' not found" in p for p in problems)
    assert any("'tp' has 4 channels" in p for p in problems)
    assert any("'np' has 3 channels" in p for p in problems)
    # AND hv maps with 3 channels, or no hv_output at all, are refused too
    outputs["hv"] = np.zeros((2, 3, 256, 256), np.float32)
    assert any("'hv' has 3 channels; 2 expected" in p for p in output_problems(spec, outputs))
    no_hv = im.hovernet_spec()
    del no_hv["outputs"]["hv_output"]
    assert any("needs outputs.hv_output" in p for p in output_problems(ModelSpec(**no_hv), outputs))


def test_stardist_without_rays_and_bad_boxes_are_refused() -> None:
    # GIVEN a StarDist spec whose rays output is absent, and detector outputs of the wrong shapes
    stardist = ModelSpec(**im.stardist_spec())
    boxes = ModelSpec(**im.box_spec())
    # WHEN they are checked
    # THEN the missing rays, a (N, M, 4) output, a map instead of rows and a missing class column are named
    assert any("'rays' not found" in p for p in output_problems(stardist, {"prob": np.zeros((2, 1, 256, 256))}))
    assert any("(N, M, >=5)" in p for p in output_problems(boxes, {"boxes": np.zeros((2, 100, 4))}))
    assert any("(N, M, >=5)" in p for p in output_problems(boxes, {"boxes": np.zeros((2, 2, 64, 64))}))
    assert any("no class column" in p for p in output_problems(boxes, {"boxes": np.zeros((2, 100, 5))}))


def test_bad_decoder_settings_are_refused() -> None:
    # GIVEN a detector spec with an unknown box format and draw mode, an IoU out of range and a crop the
    # tile overlap cannot cover on a segmentation spec
    bad = im.box_spec()
    bad["outputs"].update(box_format="yxyx", draw="circles", nms_iou=1.5)
    crop = im.hovernet_spec(crop=40, downsample=2)
    # WHEN they are checked
    problems = output_problems(ModelSpec(**bad), {"boxes": np.zeros((2, 100, 6))})
    crop_problems = output_problems(ModelSpec(**crop), {})
    # THEN each bad value is named
    assert len([p for p in problems if "box_format" in p or "draw" in p or "nms_iou" in p]) == 3, problems
    assert any("tile_overlap" in p for p in crop_problems), crop_problems


def test_hovernet_splits_touching_nuclei_a_threshold_would_merge() -> None:
    # GIVEN two touching discs (radius 8, centres 13 px apart) and their exact HoVer-Net targets: each
    # pixel's x / y offset to its own nucleus' centre, scaled to [-1, 1] per nucleus
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    centres = [(24.0, 32.0), (37.0, 32.0)]
    dist = np.stack([np.hypot(xx - cx, yy - cy) for cx, cy in centres])
    truth = np.where(dist.min(axis=0) <= 8, dist.argmin(axis=0) + 1, 0)
    hv = np.zeros((2, 64, 64), np.float32)
    for k, (cx, cy) in enumerate(centres, start=1):
        inside = truth == k
        hv[0][inside] = (xx[inside] - cx) / np.abs(xx[inside] - cx).max()
        hv[1][inside] = (yy[inside] - cy) / np.abs(yy[inside] - cy).max()
    prob = (truth > 0).astype(np.float32)
    # WHEN HoVer-Net's post-processing runs (at HoVer-Net's own 0.25 µm/px)
    labels = hovernet_labels(prob, hv, map_mpp=0.25)
    # THEN it finds two nuclei, each overlapping its truth with IoU > 0.8
    assert labels.max() == 2
    for k in (1, 2):
        best = np.bincount(labels[truth == k], minlength=3)[1:].argmax() + 1
        iou = np.sum((labels == best) & (truth == k)) / np.sum((labels == best) | (truth == k))
        assert iou > 0.8, (k, iou)


def test_stardist_rays_start_along_x_and_turn_towards_y() -> None:
    # GIVEN one pixel's rays outlining an ellipse 10 px along x and 4 px along y, shifted down (+y) by
    # making the rays at 45-135 degrees longer
    spec = ModelSpec(**im.stardist_spec())
    n_rays = 32
    phis = 2 * np.pi * np.arange(n_rays) / n_rays
    rays = 1.0 / np.sqrt((np.cos(phis) / 10.0) ** 2 + (np.sin(phis) / 4.0) ** 2)
    rays[(phis > np.pi / 4) & (phis < 3 * np.pi / 4)] += 3.0
    prob = np.zeros((1, 64, 64), np.float32)
    prob[0, 32, 32] = 0.9
    ray_map = np.zeros((n_rays, 64, 64), np.float32)
    ray_map[:, 32, 32] = rays
    # WHEN it is decoded
    (obj,) = decoder_for(spec, 0.5).decode({"prob": prob, "rays": ray_map})
    # THEN the object is wide along x, narrow along y, and reaches further down than up from the pixel
    x0, y0 = obj.contour.min(axis=0)
    x1, y1 = obj.contour.max(axis=0)
    assert x1 - x0 > 18 and y1 - y0 < 14
    assert y1 - 32.5 > 32.5 - y0 + 2
    assert obj.score == pytest.approx(0.9)


def test_box_nms_keeps_the_best_box_per_class() -> None:
    # GIVEN two heavily overlapping boxes of one class, a third overlapping them of another class, and a
    # fourth of the first class overlapping them a little
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [8, 8, 18, 18]], dtype=float)
    scores = np.array([0.6, 0.9, 0.5, 0.7])
    classes = np.array([0, 0, 1, 0])
    # WHEN NMS runs at IoU 0.5
    kept = box_nms(boxes, scores, 0.5, classes)
    # THEN the better of the pair stays, best first, and the other class and the slightly overlapping box stay
    assert kept.tolist() == [1, 3, 2]


def _box_result(draw: str) -> list[dict[str, Any]]:
    """objects_result of two detections (one per class) for a detector spec drawing `draw`."""
    from types import SimpleNamespace
    from typing import cast

    from scanbridge.domain.results import geojson_problems
    from scanbridge.inference.objects import ObjectRun, SlideObject, objects_result
    from scanbridge.inference.pipeline import PipelineStats

    spec = ModelSpec(**im.box_spec(draw=draw))
    objs = [SlideObject(x=x + 6, y=50.0, contour=np.array([[x, 44.0], [x + 12, 44.0], [x + 12, 56.0], [x, 56.0]]),
                        measurements={"Score": 0.9}, positive=None, class_name=name, shape="box")
            for x, name in ((10.0, "Negative"), (40.0, "Positive"))]
    model = SimpleNamespace(spec=spec, provider="CPUExecutionProvider")
    run = ObjectRun(objects=objs, stats=PipelineStats(), grid=cast(Any, None))
    result = objects_result("scan", cast(Any, model), run, bounds=(100, 100), mpp=None, tissue_mm2=None)
    assert geojson_problems(result.geojson or {}, 100, 100) == []
    assert result.results is not None and result.results["class_counts"] == {"Negative": 1, "Positive": 1}
    return list((result.geojson or {})["features"])


@pytest.mark.parametrize(("draw", "kinds"), [("boxes", ["Polygon", "Polygon"]), ("points", ["MultiPoint", "MultiPoint"]),
                                             ("both", ["MultiPoint", "MultiPoint", "Polygon", "Polygon"])])
def test_detections_are_drawn_as_the_spec_says(draw: str, kinds: list[str]) -> None:
    # GIVEN two detections of two classes / WHEN the result is built with `draw` / THEN boxes and/or points
    features = _box_result(draw)
    assert sorted(f["geometry"]["type"] for f in features) == kinds
    for f in features:
        props = f["properties"]
        assert props["classification"]["name"] in ("Negative", "Positive")
        if f["geometry"]["type"] == "Polygon":
            assert props["annotation_type"] == "detection" and props["measurements"]["Score"] == 0.9


def test_a_one_channel_nuclear_map_decodes_like_the_two_channel_one() -> None:
    # GIVEN the HoVer-Net-style model's outputs on a tile of nuclei, and the same with np cut to its nucleus
    # channel (N, 1, h, w) and no type map
    yy, xx = np.mgrid[0:256, 0:256]
    tile = np.full((256, 256, 3), 232, dtype=np.uint8)
    for cx, cy in ((40, 40), (120, 60), (200, 200), (60, 180)):
        tile[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= 36] = (80, 60, 140)
    spec = im.hovernet_spec()
    model = OnnxModel(ModelSpec(**spec), im.build_hovernet_model(), prefer_gpu=False)
    outputs = model.run(tile[None])
    plain = im.hovernet_spec(typed=False)
    # WHEN both are decoded
    typed = decoder_for(ModelSpec(**spec), 0.5).decode({k: v[0] for k, v in outputs.items()})
    single = decoder_for(ModelSpec(**plain), 0.5).decode({"np": outputs["np"][0, 1:], "hv": outputs["hv"][0]})
    # THEN both find the four nuclei at the same places; only the typed one has classes
    assert len(typed) == len(single) == 4
    assert sorted((round(o.cx, 3), round(o.cy, 3)) for o in typed) == sorted((round(o.cx, 3), round(o.cy, 3))
                                                                                for o in single)
    assert {o.class_index for o in typed} == {1} and {o.class_index for o in single} == {None}
