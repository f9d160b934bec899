"""The hostile battery against the real `scanbridge serve` (uvicorn, moto, KMS, DynamoDB-shaped items) with
every protection configured (issue #16): no 5xx, no changed task, no POST off its path."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.devtools.stack import serve_subprocess
from tests.conftest import SAMPLE_WEBHOOK

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"a-very-secret-webhook-key-32byte").decode()
ADMIN = "admin-µ-token"  # a non-ASCII admin token: compared as bytes


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, FakePlatform]]:
    with FakePlatform(files={}) as platform:
        env = {"SCANBRIDGE_PLATFORM_URL": platform.base_url, "SCANBRIDGE_ALLOWED_SCAN_HOSTS": platform.netloc,
               "SCANBRIDGE_DATA_DIR": str(tmp_path / "data"), "SCANBRIDGE_WEBHOOK_SECRET": SECRET,
               "SCANBRIDGE_API_KEYS": "key-a:companyA,key-b:companyB", "SCANBRIDGE_ADMIN_TOKEN": ADMIN,
               "SCANBRIDGE_DELIVERY_BACKOFF_S": "0.05"}
        with serve_subprocess(tmp_path, env) as url:
            yield url, platform


def _request(url: str, method: str, path: str, body: bytes = b"", headers: dict[str, bytes | str] | None = None,
             ) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _signed(body: bytes) -> dict[str, bytes | str]:
    at = datetime.now(UTC)
    return {"webhook-id": "msg_1", "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(SECRET).sign("msg_1", at, body.decode("utf-8", "replace")),
            "Content-Type": "application/json"}


def test_the_hostile_battery_gets_no_5xx_and_changes_nothing(served: tuple[str, FakePlatform]) -> None:
    url, platform = served
    admin = {"Authorization": f"Bearer {ADMIN}".encode()}
    # GIVEN company A's task (an unreachable scan URL: it fails, the platform is told with the task's token)
    first = json.dumps({**SAMPLE_WEBHOOK, "company_id": "companyA", "task_id": "t-a", "jwt_token": "a.a.a",
                        "scans": {"1": f"{platform.base_url}/missing"}}).encode()
    assert _request(url, "POST", "/webhook", first, _signed(first))[0] == 202
    # WHEN the battery is sent: depth, sizes, odd bytes, ids, another tenant, methods
    base = {**SAMPLE_WEBHOOK, "company_id": "companyA"}
    bodies = [b"[" * 100_000 + b"]" * 100_000,
              json.dumps({**base, "x": json.loads("[" * 500 + "]" * 500)}).encode(),
              json.dumps({**base, "jwt_token": "j" * 900_000}).encode(),
              json.dumps({**base, "model_name": "m" * 500_000}).encode(),
              *(json.dumps({**base, "task_id": t}).encode() for t in ("..", ".", "a/b", "xx/results", "a\u0000")),
              json.dumps({**base, "task_id": "t-a", "company_id": "companyB", "jwt_token": "b.b.b",
                          "scans": {"1": f"{platform.base_url}/evil"}}).encode()]
    answers = [_request(url, "POST", "/webhook", b, _signed(b)) for b in bodies]
    answers += [_request(url, m, p, b"", h) for m, p, h in [
        ("GET", "/tasks/t-a", {"Authorization": b"Bearer \xc2\xb5\xff\xfe"}),
        ("GET", "/tasks/t-a", {"X-API-Key": "ключ".encode()}),
        ("GET", "/tasks/t-a/events?api_key=%C2%B5%FF", {}),
        ("DELETE", "/admin/models/x", {"Authorization": b"Bearer key-a"}),
        ("POST", "/tasks/t-a/redeliver", {}),
        ("GET", "/tasks/%2e%2e", admin), ("GET", "/tasks/..%2Fresults", admin),
        ("PATCH", "/health", {}), ("GET", "/tasks?cursor=%FF", admin)]]
    # THEN no answer is a 5xx, and each error is in the envelope
    for status, body in answers:
        assert status < 500, (status, body[:200])
        if status >= 400:
            assert set(json.loads(body)["error"]) == {"code", "message", "details"}, body[:200]
    # AND the other tenant's reuse of t-a was a 409 that changed nothing
    assert answers[len(bodies) - 1][0] == 409
    status, raw = _request(url, "GET", "/tasks/t-a", headers=admin)
    task = json.loads(raw)
    assert status == 200 and task["company_id"] == "companyA"
    assert task["scans"]["1"]["urls"] == [f"{platform.base_url}/missing"]
    # AND the platform was told once, on the results path of t-a, with company A's token: nothing the
    # battery sent made a POST of its own
    posts = platform.wait_for_posts(1, timeout_s=60)
    assert [(p.path, p.authorization) for p in posts] == [("/api/v3/external/results/t-a", "Bearer a.a.a")], posts
