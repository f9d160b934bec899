"""PlatformClient over HTTP (httpx): POST /api/v3/external/results/{task_id} with a Bearer token."""

from __future__ import annotations

import threading
import time
from urllib.parse import quote

import httpx

from scanbridge.domain.errors import DeliveryError
from scanbridge.domain.results import JsonBody
from scanbridge.ports import PlatformResponse

PCHAR = "!$&'()*+,;=:@"  # RFC 3986 path characters kept as they are (base64 ids keep their "=")


def path_segment(value: str) -> str:
    """`value` as one percent-encoded URL path segment: `/`, `?`, `#`, `%`, controls and non-ASCII are
    encoded, and a dot segment (`.`, `..`) is written `%2E`, so no value can change the path around it.
    """
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe=PCHAR)


def results_url(base_url: str, task_id: str) -> str:
    """The platform's results endpoint for a task (the task_id one encoded segment)."""
    return f"{base_url.rstrip('/')}/api/v3/external/results/{path_segment(task_id)}"


class HttpPlatformClient:
    """Posts results with httpx; connection errors and timeouts become retryable DeliveryErrors.

    Each thread keeps one httpx.Client: building one (its SSL context) takes ~20 ms of CPU under the
    GIL, and locally the results step runs in the API process, where a client per POST stalled every
    webhook acknowledgement in flight for that long.
    """

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self._base_url = base_url
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._local = threading.local()

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=self._timeout, follow_redirects=False)
            self._local.client = client
        return client

    def post_results(self, task_id: str, body: JsonBody, bearer: str, *, delivery_id: str = "",
                     timeout_s: float | None = None) -> PlatformResponse:
        """POST the body; returns the platform's status and (truncated) answer.

        The body's chunks are sent as they are, with their Content-Length (httpx streams an iterator;
        with the length known it sends no chunked encoding, which some platforms' front ends refuse).
        With a `delivery_id` the POST carries it as `Idempotency-Key` (Stripe) and `webhook-id` (Standard
        Webhooks, with `webhook-timestamp`), the same on every retry, so the platform can drop duplicates.
        """
        if not self._base_url:
            raise DeliveryError("SCANBRIDGE_PLATFORM_URL is not set", retryable=False)
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json",
                   "Content-Length": str(body.size)}
        if delivery_id:
            headers.update({"Idempotency-Key": delivery_id, "webhook-id": delivery_id,
                            "webhook-timestamp": str(int(time.time()))})
        timeout = self._timeout if timeout_s is None else httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        try:
            resp = self._client().post(results_url(self._base_url, task_id), content=iter(body.chunks),
                                       headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"platform timed out: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise DeliveryError(f"platform unreachable: {type(exc).__name__}") from exc
        return PlatformResponse(status_code=resp.status_code, body=resp.text[:2000])
