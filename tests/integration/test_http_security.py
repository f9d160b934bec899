"""The HTTP app in-process: signatures, tenant keys, admin token, cancel, redeliver, uniform errors."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from scanbridge.adapters.local.memory import MemoryJobLauncher
from scanbridge.bootstrap import Container
from scanbridge.domain.status import TaskStatus
from scanbridge.entrypoints.http.app import create_app
from scanbridge.services.common import update_task
from tests.conftest import SAMPLE_WEBHOOK, ScriptedPlatform

SECRET = "whsec_" + base64.b64encode(b"a-very-secret-webhook-key-32byte").decode()


def _signed(body: bytes, at: datetime | None = None, secret: str = SECRET) -> dict[str, str]:
    at = at or datetime.now(UTC)
    sig = Webhook(secret).sign("msg_1", at, body.decode())
    return {"webhook-id": "msg_1", "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": sig,
            "content-type": "application/json"}


@pytest.fixture
def secured(container: Container) -> TestClient:
    """The app with every protection on: a webhook secret, two tenants' keys, an admin token."""
    s = container.settings
    s.webhook_secret = SECRET
    s.api_keys = "key-a:companyA,key-b:companyB"
    s.admin_token = "admin-token-0123456789"
    return TestClient(create_app(container))


def _body(**changes: object) -> bytes:
    return json.dumps({**SAMPLE_WEBHOOK, **changes}).encode()


def test_signed_webhook_is_accepted_and_forged_ones_store_nothing(secured: TestClient, container: Container,
                                                                   launcher: MemoryJobLauncher) -> None:
    body = _body(company_id="companyA")
    # GIVEN a missing, a wrong, a stale (6 min) and a malformed signature
    bad = [
        {"content-type": "application/json"},
        _signed(body, secret="whsec_" + base64.b64encode(b"another-secret-another-secret-32").decode()),
        _signed(body, at=datetime.now(UTC) - timedelta(minutes=6)),
        {**_signed(body), "webhook-signature": "garbage"},
    ]
    for headers in bad:
        # WHEN posted / THEN 401 with the uniform body, and nothing stored or started
        resp = secured.post("/webhook", content=body, headers=headers)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "WEBHOOK_SIGNATURE_INVALID"
    assert container.tasks.get(SAMPLE_WEBHOOK["task_id"]) is None and launcher.submitted == []
    # AND a valid signature (body tampered after signing refused too)
    tampered = secured.post("/webhook", content=body.replace(b"companyA", b"companyB"), headers=_signed(body))
    assert tampered.status_code == 401
    ok = secured.post("/webhook", content=body, headers=_signed(body))
    assert ok.status_code == 202 and ok.json()["task_id"] == SAMPLE_WEBHOOK["task_id"]
    assert launcher.submitted == [SAMPLE_WEBHOOK["task_id"]]


def test_reads_are_scoped_to_the_tenant(secured: TestClient, container: Container) -> None:
    # GIVEN one task of company A and one of company B
    for tid, company in (("ta", "companyA"), ("tb", "companyB")):
        body = _body(task_id=tid, company_id=company)
        assert secured.post("/webhook", content=body, headers=_signed(body)).status_code == 202
    a = {"Authorization": "Bearer key-a"}
    # WHEN A reads / THEN it sees its own task only; B's task is a 404 (not a 403: no existence leak)
    assert secured.get("/tasks/ta", headers=a).json()["company_id"] == "companyA"
    other = secured.get("/tasks/tb", headers=a)
    assert other.status_code == 404 and other.json()["error"]["code"] == "TASK_NOT_FOUND"
    assert [t["task_id"] for t in secured.get("/tasks", headers=a).json()["tasks"]] == ["ta"]
    assert secured.get("/tasks", params={"company_id": "companyB"}, headers=a).json()["tasks"] == []
    assert secured.get("/tasks/tb", headers={"X-API-Key": "key-b"}).status_code == 200
    # AND no key or a wrong key is a 401; the admin token sees everything
    assert secured.get("/tasks/ta").status_code == 401
    assert secured.get("/tasks/ta", headers={"Authorization": "Bearer nope"}).status_code == 401
    admin = {"Authorization": "Bearer admin-token-0123456789"}
    assert sorted(t["task_id"] for t in secured.get("/tasks", headers=admin).json()["tasks"]) == ["ta", "tb"]


def test_redeliver_is_admin_only_and_posts_again(secured: TestClient, container: Container,
                                                 platform: ScriptedPlatform) -> None:
    # GIVEN a task whose delivery failed (the platform answered 503 on every attempt)
    body = _body(company_id="companyA", jwt_token="a.b.c")
    secured.post("/webhook", content=body, headers=_signed(body))
    tid = SAMPLE_WEBHOOK["task_id"]
    update_task(container.tasks, tid, lambda t: t.moved_to(TaskStatus.RUNNING))
    platform.statuses = [503] * container.settings.delivery_attempts
    failed = container.delivery.on_job_finished(tid, True)
    assert failed.status == TaskStatus.DELIVERY_FAILED
    assert container.dead_letters.messages[-1]["task_id"] == tid  # type: ignore[attr-defined]
    assert "a.b.c" not in json.dumps(container.dead_letters.messages)  # type: ignore[attr-defined]
    # WHEN redelivered without a token, with a wrong one, then with the admin token
    assert secured.post(f"/tasks/{tid}/redeliver").status_code == 401
    assert secured.post(f"/tasks/{tid}/redeliver", headers={"Authorization": "Bearer key-a"}).status_code == 403
    resp = secured.post(f"/tasks/{tid}/redeliver", headers={"Authorization": "Bearer admin-token-0123456789"})
    # THEN the results are posted again, and a second redelivery is a conflict
    assert resp.status_code == 200 and resp.json()["delivery"]["status_code"] == 200
    assert platform.calls[-1][2] == "a.b.c"
    again = secured.post(f"/tasks/{tid}/redeliver", headers={"Authorization": "Bearer admin-token-0123456789"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "CONFLICT"


def test_cancel_stops_the_job_and_tells_the_platform(container: Container, launcher: MemoryJobLauncher,
                                                     platform: ScriptedPlatform) -> None:
    # GIVEN a running task (open local mode: no keys configured)
    client = TestClient(create_app(container))
    client.post("/webhook", json={**SAMPLE_WEBHOOK, "jwt_token": "x.y.z"})
    tid = SAMPLE_WEBHOOK["task_id"]
    update_task(container.tasks, tid, lambda t: t.moved_to(TaskStatus.RUNNING))
    # WHEN cancelled (twice)
    first = client.post(f"/tasks/{tid}/cancel")
    second = client.post(f"/tasks/{tid}/cancel")
    # THEN CANCELLED, the job was stopped, the platform got one result saying so
    assert first.status_code == 200 and first.json()["status"] == "CANCELLED"
    assert second.json()["status"] == "CANCELLED"
    assert launcher.cancelled == ["job-1"]
    assert len(platform.calls) == 1
    summary = platform.calls[0][1]["scanResults"][0]["results"]["report"]["summary"]
    assert summary["Error code"] == "TASK_CANCELLED"
    # AND a cancelled task's job ending later posts nothing more
    container.delivery.on_job_finished(tid, False, "killed")
    assert len(platform.calls) == 1 and container.tasks.get(tid).status == TaskStatus.CANCELLED  # type: ignore[union-attr]


def test_redelivered_webhook_refreshes_urls_and_token(container: Container) -> None:
    # GIVEN a queued task / WHEN the platform redelivers it with freshly signed URLs and a later token
    import jwt

    client = TestClient(create_app(container))
    old = jwt.encode({"exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
    new = jwt.encode({"exp": int(time.time()) + 3600}, "k" * 32, algorithm="HS256")
    client.post("/webhook", json={**SAMPLE_WEBHOOK, "jwt_token": old})
    fresh_url = "https://techcyteci-preprod.s3.us-west-2.amazonaws.com/redacted?X-Amz-Signature=new"
    client.post("/webhook", json={**SAMPLE_WEBHOOK, "scans": {"8823846": fresh_url}, "jwt_token": new})
    # THEN the stored URLs and token are the new ones
    task = container.tasks.get(SAMPLE_WEBHOOK["task_id"])
    assert task is not None and task.scans["8823846"].urls == [fresh_url]
    assert container.secrets.decrypt(task.token_ciphertext or "", {"task_id": task.task_id}) == new


def test_body_cap_and_unknown_routes_use_the_uniform_error(container: Container) -> None:
    # GIVEN a body over the cap and a route that does not exist / THEN 422 and 404 with {"error": {...}}
    container.settings.max_body_bytes = 200
    client = TestClient(create_app(container))
    big = client.post("/webhook", content=b"{" + b" " * 300 + b"}", headers={"content-type": "application/json"})
    assert big.status_code == 422 and big.json()["error"]["code"] == "VALIDATION_ERROR"
    missing = client.get("/nope")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"code", "message", "details"}
