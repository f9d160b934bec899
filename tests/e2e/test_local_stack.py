"""The real `scanbridge serve` as a subprocess, a real loopback platform, the real fixtures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from shapely.geometry import shape

from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.devtools.stack import serve_subprocess
from scanbridge.domain.results import geojson_problems
from tests.conftest import SAMPLE_WEBHOOK, fixture_path

pytestmark = pytest.mark.e2e

SIZES = {"small": (16, 16), "boxes": (300, 250)}


@pytest.fixture(scope="module")
def platform() -> Iterator[FakePlatform]:
    with FakePlatform(files={"small": fixture_path("small.svs"), "boxes": fixture_path("boxes.tiff")}) as p:
        yield p


@contextmanager
def start_stack(platform: FakePlatform, tmp_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`scanbridge serve` on a free port, pointed at the platform; stopped with SIGINT (Ctrl-C) afterwards."""
    env = {"SCANBRIDGE_PLATFORM_URL": platform.base_url, "SCANBRIDGE_ALLOWED_SCAN_HOSTS": platform.netloc,
           "SCANBRIDGE_DATA_DIR": str(tmp_path / "data"), "SCANBRIDGE_MAX_WORKERS": "2",
           "SCANBRIDGE_DELIVERY_BACKOFF_S": "0.05", **(extra_env or {})}
    with serve_subprocess(tmp_path, env) as url:
        yield url
    output = (tmp_path / "serve.log").read_text()
    assert "scanbridge serving on" in output and "scanbridge stopped" in output


@pytest.fixture(scope="module")
def stack(platform: FakePlatform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One stack for this module's tests (their tasks are their own; a stack costs ~4 s of CPU to start)."""
    with start_stack(platform, tmp_path_factory.mktemp("stack")) as url:
        yield url


def _wait_terminal(url: str, task_id: str, timeout_s: float = 90) -> dict[str, Any]:
    """Poll the task until it ends, with one client (`httpx.get` builds one per call: ~30 ms of CPU each)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < deadline:
            task = http.get(f"{url}/tasks/{task_id}").json()
            if task["status"] in ("COMPLETED", "FAILED", "DELIVERY_FAILED", "CANCELLED"):
                return task
            time.sleep(0.3)
    raise AssertionError(f"task {task_id} did not finish: {task}")


def test_platform_sample_webhook_becomes_one_valid_results_post(stack: str, platform: FakePlatform) -> None:
    # GIVEN the platform's sample request, its URLs pointed at the loopback platform, with a task JWT
    body = {**SAMPLE_WEBHOOK, "jwt_token": "eyJhbGciOi.task-token.sig", "new_platform_field": {"x": 1},
            "scans": {"small": platform.url_for("small")},
            "scan_urls": {"small": [platform.url_for("small")], "boxes": [platform.url_for("boxes")]}}
    # WHEN it is POSTed to the local stack
    resp = httpx.post(f"{stack}/webhook", json=body, timeout=10)
    # THEN it is acknowledged before the analysis (still QUEUED/RECEIVED, not run inline); the ack's latency
    # is measured by bench/load_webhooks.py, not timed here
    assert resp.status_code == 202
    assert resp.json()["task_id"] == SAMPLE_WEBHOOK["task_id"] and resp.json()["status"] in ("QUEUED", "RECEIVED")
    # AND the task completes, and the platform got exactly one POST with the Bearer token
    task = _wait_terminal(stack, SAMPLE_WEBHOOK["task_id"])
    posts = platform.wait_for_posts(1, timeout_s=10)
    assert task["status"] == "COMPLETED", task
    assert len(posts) == 1
    post = posts[0]
    assert post.path == f"/api/v3/external/results/{SAMPLE_WEBHOOK['task_id']}"
    assert post.authorization == "Bearer eyJhbGciOi.task-token.sig"
    assert post.content_type == "application/json"
    # AND the body follows PLATFORM.md: caseResults + one ScanResult per scan, summaries, level-0 GeoJSON
    results = post.body
    assert isinstance(results["caseResults"], dict)
    by_id = {s["scanId"]: s for s in results["scanResults"]}
    assert set(by_id) == {"small", "boxes"}
    for scan_id, (w, h) in SIZES.items():
        scan = by_id[scan_id]
        summary = scan["results"]["report"]["summary"]
        assert summary and all(isinstance(k, str) and isinstance(v, str) for k, v in summary.items())
        assert geojson_problems(scan["geojson"], w, h) == []
        for feature in scan["geojson"]["features"]:
            assert isinstance(feature["properties"]["annotation_type"], str)
            minx, miny, maxx, maxy = shape(feature["geometry"]).bounds
            assert 0 <= minx <= maxx <= w and 0 <= miny <= maxy <= h
    assert any(f["properties"]["annotation_type"] == "tissue" for f in by_id["boxes"]["geojson"]["features"])
    # AND GET /tasks/{id}/results is exactly what was posted; the task shows per-scan status and delivery
    assert httpx.get(f"{stack}/tasks/{SAMPLE_WEBHOOK['task_id']}/results").json() == results
    assert {s["status"] for s in task["scans"].values()} == {"SUCCEEDED"}
    assert task["delivery"]["status_code"] == 200 and task["delivery"]["attempts"] == 1
    assert task["extra"] == {"new_platform_field": {"x": 1}} and task["has_token"] is True
    # AND the listing finds it by company
    listed = httpx.get(f"{stack}/tasks", params={"company_id": "2380941", "status": "COMPLETED"}).json()
    assert [t["task_id"] for t in listed["tasks"]] == [SAMPLE_WEBHOOK["task_id"]]


def test_bad_webhooks_get_a_uniform_422_and_store_nothing(stack: str) -> None:
    # GIVEN the stack's tasks so far (the module's other test may have run on it)
    before = httpx.get(f"{stack}/tasks").json()["tasks"]
    # WHEN bodies that break the contract are posted / THEN 422 with the uniform error body
    for raw in (b"not json", b"[]", b'{"task_id": "x"}'):
        resp = httpx.post(f"{stack}/webhook", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 422
        assert resp.json()["error"]["code"] == "VALIDATION_ERROR"
    # AND nothing was stored: the listing is unchanged and the task the last body named does not exist
    assert httpx.get(f"{stack}/tasks").json()["tasks"] == before
    for task_id in ("x", "nope"):
        missing = httpx.get(f"{stack}/tasks/{task_id}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "TASK_NOT_FOUND"
