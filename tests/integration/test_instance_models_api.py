"""Instance models registered over HTTP (PUT /admin/models) and run (POST /v1/infer): HoVer-Net-style typed
nuclei and detector boxes come back where the known nuclei are; undecodable outputs are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scipy.spatial import cKDTree

from scanbridge.bootstrap import Container
from scanbridge.devtools import instance_models as im
from scanbridge.devtools import synth
from scanbridge.entrypoints.http.app import create_app
from scanbridge.imaging.readers import open_scan

ADMIN = {"Authorization": "Bearer admin-token-0123456789"}


@pytest.fixture
def client(container: Container) -> TestClient:
    container.settings.admin_token = "admin-token-0123456789"
    return TestClient(create_app(container))


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A 512 px PNG cut from a synthetic Ki67-style slide, its nuclei centres and which are DAB-positive."""
    path: Path = tmp_path_factory.mktemp("api") / "s.svs"
    truth = synth.make_slide(path, 1024, 1024, mpp=0.5, tissue_fraction=0.6, seed=11, positive_fraction=0.5)
    x0, y0 = 256, 256
    reader = open_scan([path])
    try:
        rgb = reader.read_region((x0, y0), 0, (512, 512))
    finally:
        reader.close()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    inside = [n for n in truth.nuclei if x0 + 8 <= n.cx < x0 + 504 and y0 + 8 <= n.cy < y0 + 504]
    return (buf.getvalue(), np.array([[n.cx - x0, n.cy - y0] for n in inside]),
            np.array([n.positive for n in inside]))


def _register(client: TestClient, spec: dict[str, object], data: bytes) -> dict[str, object]:
    resp = client.put(f"/admin/models/{spec['name']}", data={"config": json.dumps(spec)},
                      files={"file": ("m.onnx", data, "application/octet-stream")}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@pytest.mark.parametrize("which", ["hovernet", "boxes"])
def test_registered_instance_models_find_typed_objects(client: TestClient, which: str,
                                                       region: tuple[bytes, np.ndarray, np.ndarray]) -> None:
    # GIVEN a HoVer-Net-style export (half-resolution maps) or a detector, registered with its spec
    png, centres, positive = region
    if which == "hovernet":
        spec, data = im.hovernet_spec(downsample=2), im.build_hovernet_model(downsample=2)
    else:
        spec, data = im.box_spec(), im.build_box_model()
    _register(client, spec, data)
    # WHEN an image is run through it at the model's scale
    resp = client.post(f"/v1/infer/{spec['name']}", files={"file": ("r.png", png, "image/png")}, data={"mpp": "0.5"})
    assert resp.status_code == 200, resp.text
    # THEN every nucleus has one object on it, of its type
    rows = [m for m in resp.json()["metrics"] if "Centroid X px" in m["measurements"]]
    found = np.array([[m["measurements"]["Centroid X px"], m["measurements"]["Centroid Y px"]] for m in rows])
    dist, idx = cKDTree(found).query(centres)
    assert (dist <= 1.5).all() and len(set(idx.tolist())) == len(centres)
    assert [rows[i]["class"] == "Positive" for i in idx] == positive.tolist()


def test_an_upload_whose_outputs_cannot_be_decoded_is_refused(client: TestClient) -> None:
    # GIVEN a StarDist spec whose rays output the model does not have, on a HoVer-Net-style file
    spec = im.stardist_spec(name="wrong-rays")
    spec["output_name"] = "np"
    # WHEN it is uploaded
    resp = client.put("/admin/models/wrong-rays", data={"config": json.dumps(spec)},
                      files={"file": ("m.onnx", im.build_hovernet_model(), "application/octet-stream")}, headers=ADMIN)
    # THEN it is refused with 422 MODEL_INVALID naming the missing output, and nothing is stored
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "MODEL_INVALID"
    assert any("'rays'" in p for p in error["details"]["problems"]), error
    assert client.get("/models/wrong-rays").status_code == 404
