"""Synchronous small-image inference and evaluation over HTTP, on synthetic images with known objects."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scipy.spatial import cKDTree

from scanbridge.bootstrap import Container
from scanbridge.devtools import synth
from scanbridge.devtools.sample_image import disc_truth, nuclei_image
from scanbridge.entrypoints.http import infer
from scanbridge.entrypoints.http.app import create_app

MARGIN = 32


@pytest.fixture
def client(container: Container) -> TestClient:
    return TestClient(create_app(container))


def _png(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def nuclei_upload() -> tuple[bytes, np.ndarray]:
    rgb, centres = nuclei_image()
    return _png(rgb), centres


def test_nuclei_model_finds_every_nucleus_of_an_uploaded_png(client: TestClient,
                                                             nuclei_upload: tuple[bytes, np.ndarray]) -> None:
    # GIVEN a PNG (0.5 µm/px) with 196 dark nuclei discs at known positions
    png, centres = nuclei_upload
    # WHEN posted to the nuclei model
    resp = client.post("/v1/infer/nuclei", files={"file": ("cells.png", png, "image/png")}, data={"mpp": "0.5"})
    # THEN the count is within 2 % and every centroid is within 1 px of the truth
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) >= {"geojson", "summary", "metrics"}
    n = len(centres)
    assert abs(len(body["metrics"]) - n) <= 0.02 * n and body["summary"]["Nuclei"] == str(len(body["metrics"]))
    found = np.array([[m["measurements"]["Centroid X px"], m["measurements"]["Centroid Y px"]]
                      for m in body["metrics"]])
    dist, _ = cKDTree(found).query(centres)
    assert np.max(dist) <= 1.0 and np.median(dist) < 0.5, np.percentile(dist, [50, 100])
    # AND metrics carry each object's measurements in µm (the mpp was used), one per polygon feature
    m = body["metrics"][0]
    assert m["class"] == "Nucleus" and m["annotation_type"] == "nucleus"
    areas = [row["measurements"]["Area µm^2"] for row in body["metrics"]]
    assert np.median(areas) == pytest.approx(math.pi * 3.0 ** 2, rel=0.15)
    assert len(body["geojson"]["features"]) == len(body["metrics"])
    assert body["image"] == {"width": 640, "height": 640, "format": "png", "mpp": 0.5}


def test_evaluate_infer_output_against_the_synthetic_truth(client: TestClient,
                                                           nuclei_upload: tuple[bytes, np.ndarray]) -> None:
    # GIVEN the nuclei model's GeoJSON for the synthetic PNG and the true discs as GeoJSON
    png, centres = nuclei_upload
    pred = client.post("/v1/infer/nuclei", files={"file": ("cells.png", png, "image/png")},
                       data={"mpp": "0.5"}).json()["geojson"]
    truth = disc_truth(centres)
    # WHEN both are posted to /v1/evaluate (JSON), and the rasterised truth vs itself as .npy masks
    resp = client.post("/v1/evaluate", json={"pred": pred, "gt": truth})
    from scanbridge.services.evaluation import geojson_objects, rasterise

    mask = rasterise(geojson_objects(truth), (0, 0), (640, 640))
    buf = io.BytesIO()
    np.save(buf, mask)
    masks = client.post("/v1/evaluate", files={"pred": ("p.npy", buf.getvalue()), "gt": ("g.npy", buf.getvalue())})
    # THEN AP50 >= 0.9 with a high matched IoU; identical masks score 1
    assert resp.status_code == 200, resp.text
    ev = resp.json()
    assert set(ev) == {"ap50", "jaccard", "tp", "fp", "fn", "n_pred", "n_gt", "mean_matched_iou"}
    assert ev["ap50"] >= 0.9 and ev["n_gt"] == len(centres) and ev["mean_matched_iou"] > 0.8, ev
    assert ev["jaccard"] > 0.8
    assert masks.status_code == 200 and masks.json()["ap50"] == 1.0 and masks.json()["tp"] == len(centres)


def test_tissue_model_outlines_a_pink_rectangle(client: TestClient) -> None:
    # GIVEN a white JPEG with one pink tissue rectangle (x 300..800, y 200..600), no pixel size
    rgb = np.full((768, 1024, 3), 245, np.uint8)
    rgb[200:600, 300:800] = synth.STROMA_RGB
    # WHEN posted to the tissue model (the model runs at the image's own scale)
    resp = client.post("/v1/infer/tissue", files={"file": ("t.jpg", _png(rgb, "JPEG"), "image/jpeg")})
    # THEN one tissue polygon covers the rectangle (within one 8-px output block at each edge)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    tissue = [f for f in body["geojson"]["features"] if f["properties"].get("annotation_type") == "tissue"]
    assert len(tissue) == 1
    ring = np.array(tissue[0]["geometry"]["coordinates"][0])
    assert np.allclose([ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()],
                       [300, 200, 800, 600], atol=8)
    assert body["metrics"][0]["measurements"]["Area px^2"] == pytest.approx(500 * 400, rel=0.05)
    assert body["summary"]["Tissue regions"] == "1" and "n/a" in body["summary"]["Tissue area"]
    assert body["image"]["format"] == "jpeg" and body["image"]["mpp"] is None


def test_size_caps_bad_uploads_and_unknown_models_get_uniform_errors(client: TestClient,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an image wider than 4096 px (tiny as a PNG), a non-image, an unknown model and a lowered byte cap
    wide = _png(np.full((8, 4097, 3), 255, np.uint8))
    small = _png(np.full((16, 16, 3), 255, np.uint8))
    # WHEN / THEN over the pixel cap: 422 with the sizes
    r = client.post("/v1/infer/nuclei", files={"file": ("w.png", wide, "image/png")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "VALIDATION_ERROR"
    assert r.json()["error"]["details"]["width"] == 4097
    # AND a file that is not an image, a bad mpp and a missing file: 422
    r = client.post("/v1/infer/nuclei", files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 422 and "PNG, JPEG or TIFF" in r.json()["error"]["message"]
    r = client.post("/v1/infer/nuclei", files={"file": ("s.png", small, "image/png")}, data={"mpp": "-1"})
    assert r.status_code == 422
    r = client.post("/v1/infer/nuclei", data={"mpp": "0.5"}, files={"other": ("s.png", small, "image/png")})
    assert r.status_code == 422 and "`file`" in r.json()["error"]["message"]
    # AND an unknown model: 404 MODEL_NOT_FOUND
    r = client.post("/v1/infer/no-such-model", files={"file": ("s.png", small, "image/png")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "MODEL_NOT_FOUND"
    # AND over the byte cap: 413 PAYLOAD_TOO_LARGE in the uniform body
    monkeypatch.setattr(infer, "MAX_UPLOAD_BYTES", 1000)
    big = _png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    r = client.post("/v1/infer/nuclei", files={"file": ("b.png", big, "image/png")})
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # AND a blank image is fine: no tissue, no nuclei
    monkeypatch.setattr(infer, "MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
    r = client.post("/v1/infer/nuclei", files={"file": ("s.png", small, "image/png")})
    assert r.status_code == 200 and r.json()["metrics"] == []


def test_tenant_keys_guard_both_routes_and_evaluate_checks_its_body(client: TestClient,
                                                                     container: Container) -> None:
    # GIVEN API keys switched on
    container.settings.api_keys = "key-a:companyA"
    empty = {"type": "FeatureCollection", "features": []}
    # WHEN called without a key / with one
    no_key = client.post("/v1/evaluate", json={"pred": empty, "gt": empty})
    no_key_infer = client.post("/v1/infer/nuclei", files={"file": ("s.png", b"x", "image/png")})
    ok = client.post("/v1/evaluate", json={"pred": empty, "gt": empty}, headers={"X-Api-Key": "key-a"})
    # THEN 401 without; with the key, the empty sets agree
    assert no_key.status_code == 401 and no_key_infer.status_code == 401
    assert ok.status_code == 200 and ok.json()["ap50"] == 1.0
    # AND bodies that are not {pred, gt} GeoJSON, or masks of different shapes, are 422
    headers = {"X-Api-Key": "key-a"}
    assert client.post("/v1/evaluate", json={"pred": empty}, headers=headers).status_code == 422
    assert client.post("/v1/evaluate", json={"pred": [], "gt": empty}, headers=headers).status_code == 422
    a, b = io.BytesIO(), io.BytesIO()
    np.save(a, np.zeros((4, 4), np.int32))
    np.save(b, np.zeros((5, 4), np.int32))
    r = client.post("/v1/evaluate", files={"pred": ("p.npy", a.getvalue()), "gt": ("g.npy", b.getvalue())},
                    headers=headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "VALIDATION_ERROR"


def test_uploads_decode_to_rgb_and_the_memory_reader_pads_with_white() -> None:
    # GIVEN an RGBA PNG (transparent half), an RGB TIFF, a float32 TIFF (Pillow cannot decode it) and a BigTIFF
    import tifffile

    from scanbridge.imaging.readers.memory import MemoryReader, decode_image

    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[:, :6] = (200, 100, 50, 255)
    tiffs = []
    for data, bigtiff in ((np.full((10, 12, 3), 77, np.uint8), False), (np.linspace(0, 1, 120, dtype=np.float32)
                                                                        .reshape(10, 12), False),
                          (np.full((10, 12, 3), 9, np.uint8), True)):
        buf = io.BytesIO()
        tifffile.imwrite(buf, data, bigtiff=bigtiff)
        tiffs.append(buf.getvalue())
    # WHEN decoded
    png_rgb, png_fmt = decode_image(_png(rgba), max_side=64)
    decoded = [decode_image(t, max_side=64) for t in tiffs]
    # THEN each is RGB uint8 (h, w, 3): transparency composited onto white, the TIFFs through tifffile if needed
    assert png_fmt == "png" and png_rgb.shape == (10, 12, 3)
    assert tuple(png_rgb[0, 0]) == (200, 100, 50) and tuple(png_rgb[0, 11]) == (255, 255, 255)
    assert [fmt for _, fmt in decoded] == ["tiff"] * 3 and all(rgb.shape == (10, 12, 3) for rgb, _ in decoded)
    assert decoded[0][0][0, 0, 0] == 77 and decoded[1][0][-1, -1, 0] == 255 and decoded[2][0][0, 0, 0] == 9
    # AND the reader serves regions past the edge as white, one level, with the optional mpp
    reader = MemoryReader(png_rgb, mpp=0.25, fmt="png")
    region = reader.read_region((-2, -2), 0, (4, 4))
    assert (region[:2] == 255).all() and tuple(region[2, 2]) == (200, 100, 50)
    assert reader.metadata.to_json()["level_count"] == 1 and reader.metadata.mpp == (0.25, 0.25)
    thumb, ds = reader.thumbnail(6)
    assert thumb.shape == (5, 6, 3) and ds == pytest.approx(2.0)


def test_readme_example_files_come_from_make_image(client: TestClient, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the README's /v1/infer example, its files written by `scanbridge dev make-image`
    from scanbridge.entrypoints.cli import main
    from scanbridge.services.evaluation import evaluate, load_source

    image, truth = tmp_path / "cells.png", tmp_path / "truth.geojson"
    assert main(["dev", "make-image", str(image), "--truth", str(truth)]) == 0
    assert "196 nuclei" in capsys.readouterr().out
    # WHEN the image goes through /v1/infer and the answer is evaluated against the truth file
    pred = client.post("/v1/infer/nuclei", files={"file": ("cells.png", image.read_bytes(), "image/png")},
                       data={"mpp": "0.5"})
    assert pred.status_code == 200, pred.text
    (tmp_path / "pred.json").write_text(pred.text)
    result = evaluate(load_source(tmp_path / "pred.json"), load_source(truth))
    # THEN the nuclei model finds the nuclei the truth holds
    assert result.n_gt == 196 and result.ap50 > 0.9, result.to_json()
