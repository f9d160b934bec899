"""Bring your own model: the three common export patterns registered over HTTP and run on a slide with known
classes (IoU against the truth), through the pipeline and through POST /webhook; the upload check."""

from __future__ import annotations

import io
import json
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from scanbridge.bootstrap import Container, build_processing
from scanbridge.devtools.byom_models import (
    PATTERNS,
    build_pattern,
    class_regions,
    render_classes,
    write_class_slide,
)
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.models import ModelSpec
from scanbridge.domain.results import geojson_problems, qupath_problems
from scanbridge.domain.status import TaskStatus
from scanbridge.entrypoints.cli import main
from scanbridge.entrypoints.http.app import create_app
from scanbridge.imaging.readers import open_scan
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.runner import ModelLoader
from scanbridge.inference.session import OnnxModel
from tests.conftest import ScriptedPlatform

ADMIN = {"Authorization": "Bearer admin-token-0123456789"}
W, H = 4096, 3072
MIN_IOU = 0.85


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, BaseGeometry]]:
    """A 4096 x 3072 slide (1 µm/px) with a tumour ring around a stroma disc and a stroma rectangle."""
    path = tmp_path_factory.mktemp("byom") / "classes.svs"
    return path, write_class_slide(path, W, H, mpp=1.0)


@pytest.fixture
def client(container: Container) -> TestClient:
    container.settings.admin_token = "admin-token-0123456789"
    return TestClient(create_app(container))


def _put(client: TestClient, name: str, spec: dict[str, Any], data: bytes) -> Any:
    return client.put(f"/admin/models/{name}", data={"config": json.dumps(spec)},
                      files={"file": (f"{name}.onnx", data, "application/octet-stream")}, headers=ADMIN)


def _class_ious(fc: dict[str, Any], truth: dict[str, BaseGeometry]) -> dict[str, float]:
    ious = {}
    for name, region in truth.items():
        pred = unary_union([shape(f["geometry"]) for f in fc["features"]
                            if f["geometry"]["type"] in ("Polygon", "MultiPolygon")
                            and f["properties"]["classification"]["name"] == name])
        ious[name] = pred.intersection(region).area / pred.union(region).area
    return ious


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_each_export_pattern_registered_over_http_draws_each_class_true_to_the_slide(
        pattern: str, client: TestClient, container: Container, slide: tuple[Path, dict[str, BaseGeometry]]) -> None:
    # GIVEN a model of one export pattern and its spec, registered through PUT /admin/models/{name}
    data, spec = build_pattern(pattern)
    created = _put(client, spec["name"], spec, data)
    assert created.status_code == 201, created.text
    # WHEN the registered model runs over the slide with known class regions
    path, truth = slide
    model = ModelLoader(source=container.catalog).load(spec["name"])  # type: ignore[arg-type]
    with closing(open_scan([path])) as reader:
        analysis = analyze_scan("s", reader, model, batch_size=8)
    fc = analysis.result.geojson or {}
    # THEN each class's polygons match its truth, background is not drawn, and QuPath / the platform accept them
    ious = _class_ious(fc, truth)
    assert min(ious.values()) >= MIN_IOU, ious
    regions = [f for f in fc["features"] if f["geometry"]["type"] in ("Polygon", "MultiPolygon")]
    background = set(spec["background_labels"])
    assert {f["properties"]["classification"]["name"] for f in regions} == set(truth) and not background & set(truth)
    assert all(f["properties"]["objectType"] == "annotation" and f["properties"]["measurements"]["Area µm^2"] > 0
               for f in regions)
    assert geojson_problems(fc, W, H) == [] and qupath_problems(fc) == []
    # AND the tumour ring keeps its hole
    tumour = [f for f in regions if f["properties"]["classification"]["name"] == "Tumour"]
    assert any(len(f["geometry"]["coordinates"]) > 1 for f in tumour if f["geometry"]["type"] == "Polygon")
    # AND one heat map per class, and the summary gives each class's area and share of the tissue
    heat = [f for f in fc["features"] if f["geometry"]["type"] == "GeometryCollection"]
    assert sorted(f["properties"]["heatmap_class"]["name"] for f in heat) == sorted(truth)
    assert all(f["properties"]["contour_colors"] for f in heat)
    results = analysis.result.results or {}
    tissue_mm2 = results["tissue_area_mm2"]
    for name, region in truth.items():
        got = results["classes"][name]
        assert got["area_mm2"] == pytest.approx(region.area / 1e6, rel=0.12)
        assert got["share_of_tissue"] == pytest.approx(got["area_mm2"] / tissue_mm2, rel=1e-3)
        assert f"{name} share of tissue" in results["report"]["summary"]
    assert results["model"]["provider"] == model.provider
    # AND listing by the new kinds finds it
    listed = client.get("/models", params={"kind": spec["kind"]}).json()["models"]
    assert spec["name"] in [m["name"] for m in listed]


def test_a_region_model_runs_through_post_webhook(client: TestClient, container: Container,
                                                   platform: ScriptedPlatform,
                                                   slide: tuple[Path, dict[str, BaseGeometry]]) -> None:
    # GIVEN the NHWC BGR logits segmenter registered, and a loopback platform serving the class slide
    data, spec = build_pattern("segmenter")
    assert _put(client, spec["name"], spec, data).status_code == 201
    path, truth = slide
    with FakePlatform(files={"classes": path}) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        # WHEN the platform posts a webhook naming the model and the worker runs the task
        resp = client.post("/webhook", json={"task_id": "byom-1", "company_id": "c", "jwt_token": "a.b.c",
                                             "model_name": spec["name"], "scan_urls": {"1": [fake.url_for("classes")]}})
        assert resp.status_code == 202, resp.text
        build_processing(container).run("byom-1")
        done = container.delivery.on_job_finished("byom-1", True)
    # THEN the posted results draw each class true to the slide
    assert done.status == TaskStatus.COMPLETED
    scan = platform.calls[0][1]["scanResults"][0]
    ious = _class_ious(scan["geojson"], truth)
    assert min(ious.values()) >= MIN_IOU, ious
    assert scan["results"]["model"]["name"] == spec["name"]


def test_a_channels_last_segmentation_output_is_read_on_its_class_axis(
        client: TestClient, container: Container, slide: tuple[Path, dict[str, BaseGeometry]]) -> None:
    # GIVEN the logits segmenter exported channels-last, (N, 64, 64, 3) as Keras gives it, with softmax declared
    data, spec = build_pattern("segmenter", channels_last_output=True, name="tumour-seg-nhwc")
    assert _put(client, spec["name"], spec, data).status_code == 201
    # WHEN it runs over the class slide
    model = ModelLoader(source=container.catalog).load(spec["name"])  # type: ignore[arg-type]
    with closing(open_scan([slide[0]])) as reader:
        fc = analyze_scan("s", reader, model, batch_size=8).result.geojson or {}
    # THEN the softmax and the argmax were taken over its last axis: each class is true to the slide
    assert min(_class_ious(fc, slide[1]).values()) >= MIN_IOU


def test_a_misspelt_key_is_refused_with_the_key_named(client: TestClient) -> None:
    # GIVEN a spec with "layuot" for "input_layout", and a nested misspelling
    data, spec = build_pattern("segmenter")
    bad = {**spec, "layuot": "NHWC", "normalisation": {"scale": 1, "meen": [0, 0, 0]}}
    # WHEN uploaded / THEN 422 MODEL_INVALID naming each unknown key, and nothing stored
    resp = _put(client, spec["name"], bad, data)
    error = resp.json()["error"]
    assert resp.status_code == 422 and error["code"] == "MODEL_INVALID"
    assert error["details"]["unknown_keys"] == ["layuot", "normalisation.meen"]
    assert "'layuot'" in error["message"] and "input_layout" in error["message"]
    assert client.get(f"/models/{spec['name']}").status_code == 404
    # AND a PATCH with an unknown key is refused the same way
    assert _put(client, spec["name"], spec, data).status_code == 201
    patched = client.patch(f"/admin/models/{spec['name']}", json={"output_activaton": "sigmoid"}, headers=ADMIN)
    assert patched.status_code == 422 and patched.json()["error"]["details"]["unknown_keys"] == ["output_activaton"]


def test_the_upload_check_lists_every_problem(client: TestClient) -> None:
    # GIVEN the segmenter with no mpp, NCHW declared for its NHWC input, and two labels for three channels
    data, spec = build_pattern("segmenter")
    wrong = {k: v for k, v in spec.items() if k != "mpp"}
    wrong.update(input_layout="NCHW", labels=spec["labels"][:2], background_labels=["Background"])
    # WHEN uploaded / THEN MODEL_INVALID lists each problem
    problems = _put(client, "seg-wrong", wrong, data).json()["error"]["details"]["problems"]
    text = " | ".join(problems)
    assert "mpp is required" in text and "input_layout 'NHWC'" in text, problems
    # AND with the layout right, the channel count against the labels and a wrong output downsample
    wrong.update(input_layout="NHWC", mpp=2.0, output_downsample=4)
    problems = _put(client, "seg-wrong", wrong, data).json()["error"]["details"]["problems"]
    text = " | ".join(problems)
    assert "3 channels but 2 labels" in text and "(N, K, 32, 32) expected" in text, problems
    # AND a tile classifier declared as semantic segmentation cannot be decoded
    data, spec = build_pattern("tile-classifier")
    resp = _put(client, "tc-wrong", {**spec, "kind": "semantic-segmentation"}, data)
    assert resp.status_code == 422 and "semantic-segmentation needs" in resp.text
    assert client.get("/models/seg-wrong").status_code == 404


def _batch_one_in_disguise() -> bytes:
    """A tile classifier whose batch axis is dynamic in the graph but which only works on one tile (Reshape)."""
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["prob"])]
    graph = helper.make_graph(nodes, "b1", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(np.asarray([1, 3], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def test_the_dry_run_feeds_a_dynamic_batch_model_more_than_one_tile(client: TestClient) -> None:
    # GIVEN a model whose declared batch is dynamic but whose graph only takes one tile
    spec = {"kind": "tile-classification", "mpp": 1.0, "input_size": 32, "input_dtype": "float32",
            "labels": [{"name": "A"}, {"name": "B"}, {"name": "C"}]}
    # WHEN uploaded / THEN refused: it would fail every scan's batches
    resp = _put(client, "one-at-a-time", spec, _batch_one_in_disguise())
    assert resp.status_code == 422 and "fails on a batch of 2" in resp.text, resp.text


def test_a_static_batch_export_runs_any_batch(slide: tuple[Path, dict[str, BaseGeometry]]) -> None:
    # GIVEN the float16 export fixed at batch 1, and 5 real tiles of the slide
    data, spec = build_pattern("static-fp16")
    model = OnnxModel(ModelSpec.model_validate(spec), data, prefer_gpu=False)
    assert model.static_batch == 1
    with closing(open_scan([slide[0]])) as reader:
        tiles = np.stack([reader.read_region((x, 1000), 0, (128, 128)) for x in (300, 700, 1100, 2500, 3000)])
    # WHEN run as one batch of 5 / THEN 5 outputs, each the one its tile gives alone
    together = model.primary_output(model.run(tiles))
    alone = np.concatenate([model.primary_output(model.run(t[None])) for t in tiles])
    assert together.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(together, alone)


def test_schema_route_serves_the_model_spec_schema(client: TestClient) -> None:
    # WHEN the schema is asked for / THEN every ModelSpec key is in it, unknown keys are refused by it
    schema = client.get("/models/schema").json()
    assert set(ModelSpec.model_fields) <= set(schema["properties"]) and schema["additionalProperties"] is False
    assert "tile-classification" in json.dumps(schema["properties"]["kind"])
    # AND OpenAPI carries it as a component, and /models/{name} still works
    assert "ModelSpec" in client.get("/openapi.json").json()["components"]["schemas"]
    assert client.get("/models/tissue").json()["name"] == "tissue"


def test_run_scan_runs_an_unregistered_model(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             slide: tuple[Path, dict[str, BaseGeometry]]) -> None:
    # GIVEN the tile classifier's ONNX file and spec on disk (no registry)
    data, spec = build_pattern("tile-classifier")
    (tmp_path / "m.onnx").write_bytes(data)
    (tmp_path / "m.json").write_text(json.dumps(spec))
    # WHEN run-scan runs it offline / THEN the same outputs as --model, classes true to the slide
    code = main(["run-scan", str(slide[0]), "--onnx", str(tmp_path / "m.onnx"), "--spec", str(tmp_path / "m.json"),
                 "--out", str(tmp_path / "out"), "--no-artifacts"])
    assert code == 0
    fc = json.loads((tmp_path / "out" / "classes.geojson").read_text())
    assert min(_class_ious(fc, slide[1]).values()) >= MIN_IOU
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]["Model"] == "tumour-tiles v1"
    # AND a misspelt key is refused before any scan runs (exit 2, the key named)
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "layuot": "NCHW"}))
    code = main(["run-scan", str(slide[0]), "--onnx", str(tmp_path / "m.onnx"), "--spec", str(tmp_path / "bad.json"),
                 "--out", str(tmp_path / "bad")])
    assert code == 2 and "'layuot'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def _identity(layout: str, dtype: int, shape: list[int | str]) -> bytes:
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["prob"])], "id",
                              [helper.make_tensor_value_info("image", dtype, shape)],
                              [helper.make_tensor_value_info("prob", dtype, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.parametrize(("layout", "dtype", "np_dtype"), [("NHWC", TensorProto.FLOAT, np.float32),
                                                    ("NCHW", TensorProto.FLOAT16, np.float16)])
def test_the_input_is_fed_in_the_models_layout_order_dtype_and_normalisation(layout: str, dtype: int,
                                                                            np_dtype: type) -> None:
    # GIVEN an identity model with a BGR, torchvision-normalised input in `layout`
    norm = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    shape: list[int | str] = ["N", 16, 16, 3] if layout == "NHWC" else ["N", 3, 16, 16]
    spec = ModelSpec(name="id", input_size=16, input_layout=layout, input_dtype="float16" if np_dtype is np.float16
                     else "float32", channel_order="BGR", normalisation=norm, mpp=1.0)
    model = OnnxModel(spec, _identity(layout, dtype, shape), prefer_gpu=False)
    rgb = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    # WHEN a uint8 RGB batch is run
    out = model.run(rgb)["prob"]
    # THEN the model saw (pixel * scale - mean) / std of B, G, R in that order, in its layout and dtype
    expected = (rgb[..., ::-1].astype(np.float64) / 255 - np.asarray(norm["mean"])) / np.asarray(norm["std"])
    if layout == "NCHW":
        expected = expected.transpose(0, 3, 1, 2)
    assert out.dtype == np_dtype
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=2e-2 if np_dtype is np.float16 else 1e-5)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_output_activation_is_applied_over_the_class_axis(activation: str) -> None:
    # GIVEN an identity model (its output is its normalised input) declaring an output activation
    spec = ModelSpec(name="act", input_size=16, input_dtype="float32", mpp=1.0, output_activation=activation,
                     normalisation={"scale": 1 / 64, "mean": [2, 2, 2], "std": [1, 1, 1]})
    model = OnnxModel(spec, _identity("NCHW", TensorProto.FLOAT, ["N", 3, 16, 16]), prefer_gpu=False)
    rgb = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    # WHEN run / THEN softmax sums to 1 over channels and keeps the argmax; sigmoid maps each value
    out = model.run(rgb)["prob"]
    logits = rgb.transpose(0, 3, 1, 2) / 64 - 2
    if activation == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
        assert (out.argmax(axis=1) == logits.argmax(axis=1)).all()
    else:
        np.testing.assert_allclose(out, 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_a_registered_region_model_answers_v1_infer(client: TestClient) -> None:
    # GIVEN the segmenter registered, and a 1024 x 768 PNG of the class drawing (its shapes scaled down)
    data, spec = build_pattern("segmenter")
    assert _put(client, spec["name"], spec, data).status_code == 201
    buf = io.BytesIO()
    Image.fromarray(render_classes(1024, 768, seed=3)).save(buf, "PNG")
    # WHEN posted to /v1/infer with its pixel size
    resp = client.post(f"/v1/infer/{spec['name']}", files={"file": ("c.png", buf.getvalue(), "image/png")},
                       data={"mpp": "1.0"})
    # THEN the same regions come back, true to the drawing
    assert resp.status_code == 200, resp.text
    ious = _class_ious(resp.json()["geojson"], class_regions(1024, 768))
    assert min(ious.values()) >= 0.8, ious
    assert "Tumour share of tissue" in resp.json()["summary"]
