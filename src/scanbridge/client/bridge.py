"""`BridgeClient`: the REST API of a running bridge over httpx; errors as `ClientError` with the bridge's code."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """A bridge answered with its uniform error body (or could not be reached)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class BridgeClient:
    """The REST API of a running bridge (httpx); errors come back as ClientError with the bridge's code.

    Signing webhooks (`webhook_secret`) uses the `standardwebhooks` package, imported only then (it comes
    with `scanbridge[api]` and `[local]`); everything else needs only the base install."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, webhook_secret: str | None = None,
                 timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s,
                                  transport=transport)
        self._webhook_secret = webhook_secret
        self.base_url = base_url.rstrip("/")

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError("UNREACHABLE", f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise ClientError(err["code"], err["message"], resp.status_code)
            except (ValueError, KeyError, TypeError):
                raise ClientError("HTTP_ERROR", f"HTTP {resp.status_code}: {resp.text[:200]}",
                                  resp.status_code) from None
        result: dict[str, Any] = resp.json()
        return result

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /webhook (signed with the Standard Webhooks secret when one is given)."""
        raw = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if self._webhook_secret:
            from standardwebhooks.webhooks import Webhook

            msg_id, at = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
            headers |= {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                        "webhook-signature": Webhook(self._webhook_secret).sign(msg_id, at, raw.decode())}
        return self._call("POST", "/webhook", content=raw, headers=headers)

    def task(self, task_id: str) -> dict[str, Any]:
        """GET /tasks/{task_id}."""
        return self._call("GET", f"/tasks/{quote(task_id, safe='')}")

    def tasks(self, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        """GET /tasks."""
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        return self._call("GET", "/tasks", params=params)

    def cancel(self, task_id: str) -> dict[str, Any]:
        """POST /tasks/{task_id}/cancel."""
        return self._call("POST", f"/tasks/{quote(task_id, safe='')}/cancel")

    def scan_metadata(self, task_id: str, scan_id: str) -> dict[str, Any]:
        """GET /tasks/{task_id}/scans/{scan_id}/metadata."""
        return self._call("GET", f"/tasks/{quote(task_id, safe='')}/scans/{quote(scan_id, safe='')}/metadata")

    def results(self, task_id: str) -> dict[str, Any]:
        """GET /tasks/{task_id}/results."""
        return self._call("GET", f"/tasks/{quote(task_id, safe='')}/results")

    def models(self) -> dict[str, Any]:
        """GET /models."""
        return self._call("GET", "/models")

    def capabilities(self) -> dict[str, Any]:
        """GET /config/available."""
        return self._call("GET", "/config/available")

    def allowed_scan_hosts(self) -> list[str]:
        """The hosts the bridge downloads scans from (GET /config/available `limits.allowed_scan_hosts`)."""
        try:
            return list(self.capabilities()["limits"]["allowed_scan_hosts"])
        except (KeyError, TypeError) as exc:
            raise ClientError("HTTP_ERROR", f"{self.base_url}/config/available has no {exc}") from None

    def events(self, task_id: str, timeout_s: float = 900.0) -> Iterator[dict[str, Any]]:
        """Follow GET /tasks/{task_id}/events (SSE) and yield each event until the stream ends."""
        path = f"/tasks/{quote(task_id, safe='')}/events"
        timeout = httpx.Timeout(30.0, read=max(60.0, timeout_s))
        with self._http.stream("GET", path, params={"timeout": timeout_s}, timeout=timeout) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ClientError("HTTP_ERROR", f"HTTP {resp.status_code}: {resp.text[:200]}", resp.status_code)
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])
