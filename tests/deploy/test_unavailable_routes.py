"""Routes the API Lambda cannot run answer a coded 501 saying where they run, and /config/available agrees."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scanbridge.bootstrap import Container
from scanbridge.entrypoints.http.app import OPTIONAL_ROUTES, create_app
from scanbridge.services.capabilities import ENDPOINTS, LAMBDA_UNAVAILABLE, ROUTE_NEEDS

#: one request per optional route, as a client would send it
REQUESTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "infer": ("POST", "/v1/infer/tissue", {"files": {"file": ("a.png", b"\x89PNG", "image/png")}}),
    "evaluate": ("POST", "/v1/evaluate", {"json": {"pred": {"type": "FeatureCollection", "features": []},
                                                    "gt": {"type": "FeatureCollection", "features": []}}}),
    "mcp": ("POST", "/mcp", {"json": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}),
    "model_upload": ("PUT", "/admin/models/mine", {"data": {"config": "{}"},
                                                   "files": {"file": ("m.onnx", b"x", "application/octet-stream")}}),
}


def _client(container: Container, **kwargs: Any) -> TestClient:
    return TestClient(create_app(container, **kwargs), base_url="http://127.0.0.1")


def test_every_optional_route_is_described_and_requested() -> None:
    # GIVEN the routes a deployment may be unable to run / THEN each has a message, a link and a request here
    assert set(OPTIONAL_ROUTES) == set(LAMBDA_UNAVAILABLE) == set(ROUTE_NEEDS) == set(REQUESTS)
    assert set(LAMBDA_UNAVAILABLE) <= set(ENDPOINTS)


@pytest.mark.parametrize("route_id", sorted(LAMBDA_UNAVAILABLE))
def test_the_lambda_composition_answers_501_with_where_the_route_runs(container: Container, route_id: str) -> None:
    # GIVEN the app as the API Lambda builds it
    client = _client(container, unavailable=LAMBDA_UNAVAILABLE)
    method, path, kwargs = REQUESTS[route_id]
    # WHEN the route is called
    resp = client.request(method, path, **kwargs)
    # THEN 501 with the stable code and where it does run
    assert resp.status_code == 501, resp.text
    error = resp.json()["error"]
    assert error["code"] == "ROUTE_NOT_AVAILABLE" and error["details"]["route"] == route_id
    assert "scanbridge serve" in error["details"]["runs_on"]
    # AND /config/available says the same
    caps = client.get("/config/available").json()
    assert caps["endpoints"][route_id]["available"] is False
    assert caps["endpoints"][route_id]["runs_on"] == error["details"]["runs_on"]
    assert caps["unavailable_routes"][route_id] == error["details"]["runs_on"]
    assert caps["endpoints"]["task"]["available"] is True


def test_where_everything_is_installed_the_routes_run(container: Container) -> None:
    # GIVEN the app as `scanbridge serve` builds it (every extra installed)
    client = _client(container)
    # WHEN evaluation is asked for / THEN it runs, and /config/available lists nothing unavailable
    resp = client.request(*REQUESTS["evaluate"][:2], **REQUESTS["evaluate"][2])
    assert resp.status_code == 200 and resp.json()["ap50"] == 1.0
    caps = client.get("/config/available").json()
    assert caps["unavailable_routes"] == {} and all(e["available"] for e in caps["endpoints"].values())


def test_a_process_without_onnxruntime_refuses_inference_with_501(container: Container,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a process where onnxruntime cannot be imported (fault injected into the import lookup)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    client = _client(container)
    # WHEN an image is sent for inference / THEN 501 ROUTE_NOT_AVAILABLE, and evaluation still runs
    method, path, kwargs = REQUESTS["infer"]
    resp = client.request(method, path, **kwargs)
    assert resp.status_code == 501 and resp.json()["error"]["code"] == "ROUTE_NOT_AVAILABLE"
    assert set(client.get("/config/available").json()["unavailable_routes"]) == {"infer", "model_upload"}
    resp = client.request(*REQUESTS["evaluate"][:2], **REQUESTS["evaluate"][2])
    assert resp.status_code == 200
