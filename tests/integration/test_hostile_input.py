"""A battery of hostile requests against the app with every protection configured (issue #16): no 5xx,
no changed task, no POST off its path, no credential of odd bytes that crashes, no fail-open admin."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from scanbridge.adapters.local.memory import MemoryJobLauncher
from scanbridge.adapters.platform_http import HttpPlatformClient, results_url
from scanbridge.bootstrap import Container
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.results import JsonBody
from scanbridge.domain.webhook import is_valid_id
from scanbridge.entrypoints.http.app import create_app
from scanbridge.entrypoints.webhook_common import json_too_deep
from tests.conftest import SAMPLE_WEBHOOK

SECRET = "whsec_" + base64.b64encode(b"a-very-secret-webhook-key-32byte").decode()
ADMIN = "admin-token-0123456789"
TID = SAMPLE_WEBHOOK["task_id"]


def _signed(body: bytes) -> dict[str, str]:
    at = datetime.now(UTC)
    sig = Webhook(SECRET).sign("msg_1", at, body.decode("utf-8", "replace"))
    return {"webhook-id": "msg_1", "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": sig,
            "content-type": "application/json"}


@pytest.fixture
def secured(container: Container) -> TestClient:
    """Every protection on: a webhook secret, two tenants' keys, an admin token."""
    s = container.settings
    s.webhook_secret, s.api_keys, s.admin_token = SECRET, "key-a:companyA,key-b:companyB", ADMIN
    return TestClient(create_app(container))


def _post_webhook(client: TestClient, body: bytes) -> httpx.Response:
    return client.post("/webhook", content=body, headers=_signed(body))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_hostile_bodies_are_refused_in_the_envelope_and_store_nothing(secured: TestClient, container: Container,
                                                                      launcher: MemoryJobLauncher) -> None:
    base = {**SAMPLE_WEBHOOK, "company_id": "companyA"}
    big = "x" * 900_000
    url = "https://techcyteci-preprod.s3.us-west-2.amazonaws.com/"
    # GIVEN signed bodies that nest too deep (plain and inside an unknown field), carry a huge field, or a bad id
    hostile: list[bytes] = [
        _nested(100_000).encode(),
        json.dumps(base)[:-1].encode() + b', "extra": ' + _nested(900).encode() + b"}",
        json.dumps(base)[:-1].encode() + b', "extra": ' + b'{"a":' * 400 + b"1" + b"}" * 400 + b"}",
        json.dumps({**base, "jwt_token": big}).encode(),
        json.dumps({**base, "model_name": "m" * 500_000}).encode(),
        json.dumps({**base, "scans": {"1": url + big}}).encode(),
        json.dumps({**base, "case_id": big}).encode(),
        json.dumps({**base, "extra": [big[:150_000]] * 3}).encode(),  # under the body cap, over one item
        json.dumps({**base, "scans": {}}).encode(),
        json.dumps({**base, "scan_urls": [0]}).encode(),
        json.dumps({**base, "scans": {"../x": url}}).encode(),
        b'{"task_id": "\\ud800", "scans": {"1": "u"}}',
    ] + [json.dumps({**base, "task_id": bad}).encode()
         for bad in ("..", ".", "a/b", "xx/results", "a\x00b", "a\nb", "a b", "%2e%2e", "a?b", "a#b", "µ", "")]
    for body in hostile:
        # WHEN posted (correctly signed)
        resp = _post_webhook(secured, body)
        # THEN 413/422 in the error envelope, nothing stored and no job
        assert resp.status_code in (413, 422), (body[:80], resp.status_code, resp.text[:200])
        assert set(resp.json()["error"]) == {"code", "message", "details"}
    assert container.tasks.list().tasks == [] and launcher.submitted == []


def test_deep_json_on_other_routes_is_a_422(secured: TestClient) -> None:
    # GIVEN the admin and deeply nested JSON on the JSON routes / WHEN sent / THEN 422, never a 500
    auth = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    for method, path in (("PATCH", "/admin/models/tissue"), ("POST", "/v1/evaluate"), ("POST", "/mcp")):
        resp = secured.request(method, path, content=_nested(100_000).encode(), headers=auth)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "VALIDATION_ERROR", (path, resp.text)


def test_credentials_of_any_bytes_are_a_401(secured: TestClient) -> None:
    # GIVEN API keys, admin tokens and ?api_key values with non-ASCII and odd bytes
    odd = ["µ-key", "ключ", "\u00ff" * 3, "key-a\u00e9", "x" * 10_000]
    for value in odd:
        raw = value.encode("utf-8")
        # WHEN used on reads, admin routes and the live routes' query key
        for headers in ({"authorization": b"Bearer " + raw}, {"x-api-key": raw}):
            assert secured.get("/tasks", headers=headers).status_code == 401  # type: ignore[arg-type]
            assert secured.delete("/admin/models/x", headers=headers).status_code in (401, 403)  # type: ignore[arg-type]
        # THEN 401 in the envelope, never a 500
        live = secured.get(f"/tasks/{TID}/logs", params={"api_key": value})
        assert live.status_code == 401 and live.json()["error"]["code"] == "UNAUTHORIZED"
    # AND a latin-1 byte that is not UTF-8 is refused the same way
    assert secured.get("/tasks", headers={"authorization": b"Bearer \xb5\xff"}).status_code == 401  # type: ignore[dict-item]


def test_another_tenants_task_id_is_a_409_and_changes_nothing(secured: TestClient, container: Container,
                                                             launcher: MemoryJobLauncher) -> None:
    # GIVEN company A's task with its URL and token
    first = {**SAMPLE_WEBHOOK, "company_id": "companyA", "jwt_token": "a.tokenA.sig"}
    assert _post_webhook(secured, json.dumps(first).encode()).status_code == 202
    before = container.tasks.get(TID)
    assert before is not None
    # WHEN company B reuses the task_id with other URLs and another JWT
    other = {**first, "company_id": "companyB", "jwt_token": "b.tokenB.sig",
             "scans": {"8823846": "https://techcyteci-preprod.s3.us-west-2.amazonaws.com/evil"}}
    resp = _post_webhook(secured, json.dumps(other).encode())
    # THEN 409 TASK_ID_CONFLICT, without echoing A's status, and A's task is untouched
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "TASK_ID_CONFLICT"
    assert "status" not in resp.json()
    assert container.tasks.get(TID) == before and launcher.submitted == [TID]
    # AND a redelivery by A with other scans is a 409 TASK_PAYLOAD_MISMATCH, nothing merged
    changed = {**first, "scans": {"999": "https://techcyteci-preprod.s3.us-west-2.amazonaws.com/other"}}
    resp = _post_webhook(secured, json.dumps(changed).encode())
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "TASK_PAYLOAD_MISMATCH"
    assert resp.json()["error"]["details"]["fields"] == ["scans"]
    assert container.tasks.get(TID) == before
    # AND A's own redelivery with a fresh URL is still accepted
    fresh = {**first, "scans": {"8823846": "https://techcyteci-preprod.s3.us-west-2.amazonaws.com/fresh"}}
    again = _post_webhook(secured, json.dumps(fresh).encode())
    assert again.status_code == 202 and again.json()["created"] is False


@pytest.mark.parametrize("configured", [{"api_keys": "key-a:companyA"}, {"webhook_secret": SECRET}])
def test_admin_routes_never_fail_open(container: Container, configured: dict[str, str]) -> None:
    # GIVEN some credential setting but no admin token
    for name, value in configured.items():
        setattr(container.settings, name, value)
    client = TestClient(create_app(container))
    tenant = {"Authorization": "Bearer key-a"}
    # WHEN the admin routes are called anonymously or with a tenant key
    calls = [("PATCH", "/admin/models/tissue", {"json": {"description": "x"}}), ("DELETE", "/admin/models/x", {}),
             ("POST", f"/tasks/{TID}/redeliver", {}),
             ("PUT", "/admin/models/x", {"data": {"config": "{}"}, "files": {"file": ("m.onnx", b"x")}})]
    for method, path, kwargs in calls:
        for headers in ({}, tenant):
            resp = client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
            # THEN 403 FORBIDDEN: closed, with the reason
            assert resp.status_code == 403 and resp.json()["error"]["code"] == "FORBIDDEN", (path, resp.text)
            assert "SCANBRIDGE_ADMIN_TOKEN" in resp.json()["error"]["message"]


def test_open_local_mode_answers_loopback_hosts_only(container: Container, launcher: MemoryJobLauncher) -> None:
    # GIVEN open local mode (no credential set), reached over a socket-like peer (not the in-process TestClient)
    app = create_app(container)

    async def send(host: str, method: str, path: str, **kw: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            return await client.request(method, path, headers={"host": host}, **kw)

    import anyio

    for host in ("evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example", ""):
        # WHEN a browser that rebinds a foreign name to 127.0.0.1 calls any route
        for method, path, kw in (("GET", "/health", {}), ("GET", "/tasks", {}), ("GET", "/", {}),
                                 ("POST", "/webhook", {"json": SAMPLE_WEBHOOK})):
            resp = anyio.run(lambda: send(host, method, path, **kw))  # noqa: B023
            # THEN 421 HOST_NOT_ALLOWED, and nothing was stored
            assert resp.status_code == 421 and resp.json()["error"]["code"] == "HOST_NOT_ALLOWED", (host, path)
    assert container.tasks.get(TID) is None and launcher.submitted == []
    # AND loopback names pass, and names listed in SCANBRIDGE_ALLOWED_HOSTS
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost", "app.localhost:8000"):
        assert anyio.run(lambda: send(host, "GET", "/health")).status_code == 200  # noqa: B023
    container.settings.allowed_hosts = "bridge.lan, 192.168.1.5"
    for host in ("bridge.lan:8000", "192.168.1.5:8000"):
        assert anyio.run(lambda: send(host, "GET", "/health")).status_code == 200  # noqa: B023
    assert anyio.run(lambda: send("evil.example", "GET", "/health")).status_code == 421


def test_405_says_which_methods_are_allowed(secured: TestClient) -> None:
    # GIVEN a route called with a method it does not take / THEN 405 with Allow and the envelope
    resp = secured.delete("/health")
    assert resp.status_code == 405 and "GET" in resp.headers["allow"]
    assert resp.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40) | st.sampled_from([".", "..", "a/..", "../..", "%2e%2e", "results/..",
                                                           "./", "a/b", "?x=1", "#f", "\\..", "%2F"]))
def test_no_task_id_changes_the_results_path(task_id: str) -> None:
    # GIVEN any task id / WHEN the results URL is built and parsed as httpx sends it
    url = httpx.URL(results_url("http://platform.example/base/", task_id))
    # THEN its path is the results endpoint plus exactly one segment, and nothing leaks into query/fragment
    assert url.raw_path.startswith(b"/base/api/v3/external/results/")
    assert url.raw_path.count(b"/") == 6 and not url.query and not url.fragment
    # AND the intake pattern refuses the dot segments and slashes
    if task_id in (".", "..") or "/" in task_id:
        assert not is_valid_id(task_id)


def test_a_dot_dot_id_is_posted_to_its_own_results_path() -> None:
    # GIVEN the stand-in platform, which records the path of each POST it takes
    with FakePlatform() as platform:
        client = HttpPlatformClient(platform.base_url)
        # WHEN results for ".." and "." are posted (ids the intake refuses; the client encodes them anyway)
        for tid in ("..", "."):
            assert client.post_results(tid, JsonBody.of({"scanResults": []}), "bearer").status_code == 200
    # THEN each went to /api/v3/external/results/<encoded id>, never to /api/v3/external(/results)
    assert [p.path for p in platform.posts] == ["/api/v3/external/results/%2E%2E", "/api/v3/external/results/%2E"]


def test_depth_scan_matches_the_parser() -> None:
    # GIVEN JSON texts of known depth, strings full of brackets and escapes / THEN the scan counts like a parser
    cases = {'{"a": "[[[[[[[[", "b": "\\"[[[["}': 1, "[[[1]], [[2]]]": 3, '["\\\\", [["]]]"]]]': 3,
             _nested(20): 20, '{"a": {"b": {"c": []}}}': 4, "[[[": 3, "1": 0}
    for text, depth in cases.items():
        assert json_too_deep(text.encode(), depth) is False, text
        if depth and text != "[[[":  # unbalanced text is left to the parser
            assert json_too_deep(text.encode(), depth - 1) is True, text


@pytest.fixture
def many_hostile() -> Iterator[list[tuple[str, str, dict[str, Any]]]]:
    """Requests of every kind the held-out battery names: ids, hosts, bytes, methods."""
    return [
        ("GET", "/tasks/..", {}), ("GET", "/tasks/%2e%2e/results", {}), ("GET", "/tasks/a%2Fb", {}),
        ("GET", "/tasks/" + "x" * 5000, {}), ("GET", "/tasks/%00", {}), ("GET", "/tasks?limit=99999999999999", {}),
        ("GET", "/tasks?cursor=%ff%fe", {}), ("GET", "/tasks?status=NOPE", {}),
        ("POST", "/tasks/%2e%2e/cancel", {}), ("GET", "/tasks/x/scans/..%2f../metadata", {}),
        ("GET", "/tasks/x/scans/y/export?format=%00", {}), ("GET", "/tasks/x/artifacts/y/..%2f..%2fetc", {}),
        ("GET", "/tasks/x/events?timeout=-1", {}), ("GET", "/tasks/x/logs?level=%00", {}),
        ("PUT", "/webhook", {}), ("POST", "/webhook", {"content": b"[" * 50_000}),
        ("POST", "/webhook", {"content": b'{"task_id": 1e999999}'}),
        ("POST", "/v1/evaluate", {"content": b'{"pred": 1, "gt": []}', "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/infer/..", {"files": {"file": ("a.png", b"\x89PNG junk")}}),
    ]


def test_no_5xx_from_the_battery(secured: TestClient, many_hostile: list[tuple[str, str, dict[str, Any]]]) -> None:
    # GIVEN the hostile requests, anonymous, with a tenant key and with the admin token
    for auth in ({}, {"Authorization": "Bearer key-a"}, {"Authorization": f"Bearer {ADMIN}"}):
        for method, path, kw in many_hostile:
            headers = {**auth, **kw.get("headers", {})}
            rest = {k: v for k, v in kw.items() if k != "headers"}
            # WHEN sent / THEN never a 5xx, and every error in the envelope
            resp = secured.request(method, path, headers=headers, **rest)
            assert resp.status_code < 500, (method, path, resp.status_code, resp.text[:300])
            if resp.status_code >= 400:
                assert set(resp.json()["error"]) == {"code", "message", "details"}, (path, resp.text[:200])
