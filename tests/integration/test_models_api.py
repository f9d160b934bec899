"""The model registry over HTTP: tenants list and read, only the admin changes, uploads are checked."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from scanbridge.bootstrap import Container
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.entrypoints.http.app import create_app
from scanbridge.inference.zoo import build_tissue_model

ADMIN = {"Authorization": "Bearer admin-token-0123456789"}


@pytest.fixture
def client(container: Container) -> TestClient:
    container.settings.admin_token = "admin-token-0123456789"
    return TestClient(create_app(container))


def _spec(**changes: object) -> dict[str, object]:
    return {"version": "2", "kind": "classification", "labels": [{"name": "Stroma", "color": "#00ff00"}],
            "input_name": "image", "input_size": 256, "input_dtype": "uint8", "mpp": 8.0,
            "output_name": "tissue_prob", "output_downsample": 8, "stains": ["PAS"], "default_for": ["PAS"],
            **changes}


def test_admin_registers_a_model_and_tenants_see_and_use_it(client: TestClient, container: Container) -> None:
    # GIVEN a valid ONNX file and its config
    files = {"file": ("m.onnx", build_tissue_model(block=8), "application/octet-stream")}
    config = {"config": json.dumps(_spec())}
    # WHEN uploaded without a token, with a wrong one, then as the admin
    assert client.put("/admin/models/stroma", data=config, files=files).status_code == 401
    assert client.put("/admin/models/stroma", data=config, files=files,
                      headers={"Authorization": "Bearer wrong"}).status_code == 403
    created = client.put("/admin/models/stroma", data=config, files=files, headers=ADMIN)
    # THEN it is stored with its file facts and listed, filterable by label and kind
    assert created.status_code == 201, created.text
    assert created.json()["source"]["type"] == "registry" and created.json()["source"]["size_bytes"] > 0
    names = [m["name"] for m in client.get("/models").json()["models"]]
    assert {"tissue", "nuclei", "ihc-positivity", "stroma"} <= set(names)
    assert [m["name"] for m in client.get("/models", params={"label": "stroma"}).json()["models"]] == ["stroma"]
    assert "stroma" not in [m["name"] for m in client.get("/models", params={"kind": "detection"}).json()["models"]]
    # AND a webhook for a PAS scan with no model picks it; PATCH changes config, DELETE removes it
    accepted = container.intake.accept(WebhookPayload.model_validate(
        {"task_id": "pas", "scans": {"s": "https://b.s3.amazonaws.com/x"}, "stains": {"s": {"value": "PAS"}}}))
    assert accepted.task.model == "stroma"
    patched = client.patch("/admin/models/stroma", json={"thresholds": {"tissue": 0.7}}, headers=ADMIN)
    assert patched.status_code == 200 and patched.json()["thresholds"] == {"tissue": 0.7}
    assert client.delete("/admin/models/stroma", headers=ADMIN).status_code == 204
    gone = client.get("/models/stroma")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_uploads_that_do_not_match_their_config_are_refused(client: TestClient) -> None:
    # GIVEN a config naming an input the graph does not have, and bytes that are not ONNX
    onnx = {"file": ("m.onnx", build_tissue_model(block=8), "application/octet-stream")}
    junk = {"file": ("m.onnx", b"not a model", "application/octet-stream")}
    for data, files in ((json.dumps(_spec(input_name="pixels")), onnx), (json.dumps(_spec()), junk)):
        # WHEN uploaded / THEN 422 MODEL_INVALID with the problems listed, and nothing stored
        resp = client.put("/admin/models/broken", data={"config": data}, files=files, headers=ADMIN)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "MODEL_INVALID", resp.text
    assert client.get("/models/broken").status_code == 404
    # AND built-ins cannot be replaced or deleted
    assert client.put("/admin/models/tissue", data={"config": json.dumps(_spec())}, files=onnx,
                      headers=ADMIN).json()["error"]["code"] == "MODEL_READ_ONLY"
    assert client.delete("/admin/models/nuclei", headers=ADMIN).status_code == 409


def test_the_config_may_also_come_as_a_file_part(client: TestClient) -> None:
    # GIVEN the config as a JSON file part (curl -F config=@spec.json), not as a form field
    onnx = ("m.onnx", build_tissue_model(block=8), "application/octet-stream")
    as_file = ("spec.json", json.dumps(_spec(version="3")).encode(), "application/json")
    # WHEN uploaded
    created = client.put("/admin/models/stroma", files={"config": as_file, "file": onnx}, headers=ADMIN)
    # THEN it is registered from that file's JSON
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "stroma" and created.json()["version"] == "3"
    # AND a file part that is not UTF-8 JSON, or not an object, is a coded 422 and stores nothing
    for bad in (b"\xff\xfe{", b"[1, 2]", b"{not json"):
        resp = client.put("/admin/models/other", files={"config": ("c.json", bad, "application/json"), "file": onnx},
                          headers=ADMIN)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "VALIDATION_ERROR", resp.text
    assert client.get("/models/other").status_code == 404


def test_ki67_scans_default_to_the_positivity_model(container: Container) -> None:
    # GIVEN a Ki67 scan and no model named / WHEN accepted / THEN ihc-positivity is chosen
    accepted = container.intake.accept(WebhookPayload.model_validate(
        {"task_id": "ki", "scans": {"s": "https://b.s3.amazonaws.com/x"}, "stains": {"s": {"value": "Ki67"}},
         "model_name": ""}))
    assert accepted.task.model == "ihc-positivity"
