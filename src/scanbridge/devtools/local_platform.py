"""A local stand-in for the platform: serves scan files behind presigned-style URLs and receives results.

A real HTTP server on loopback: the client's `LocalFileServer` (the project's one loopback server,
scanbridge/client/files.py) serves the scans; this adds the platform's results, upload and token
endpoints. Tests use it as the fake platform; `scanbridge dev platform` exposes it to newcomers.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from scanbridge.client.files import AMZ_DATE, LocalFileServer


@dataclass
class ReceivedPost:
    """One results POST as the platform got it."""

    path: str
    task_id: str
    authorization: str | None
    content_type: str | None
    body: Any
    at: float
    content_length: str | None = None  # the Content-Length header (None when sent chunked)
    transfer_encoding: str | None = None


def request_body(handler: BaseHTTPRequestHandler) -> bytes:
    """A request's body, by its Content-Length or chunked (what httpx sends for an iterator of unknown
    length; http.server does not decode it)."""
    if "chunked" not in (handler.headers.get("Transfer-Encoding") or "").lower():
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    data = bytearray()
    for _ in range(1 << 20):  # bounded: at most a million chunks
        size = int(handler.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while handler.rfile.readline(1024).strip():  # trailers, then the blank line
                pass
            break
        data += handler.rfile.read(size)
        handler.rfile.readline(8)  # the CRLF after each chunk
    return bytes(data)


@dataclass
class ReceivedUpload:
    """One PUT to an upload URL (the Model Hosting Service's DEBUG_FILE_UPLOAD_URL)."""

    path: str
    name: str
    content_type: str | None
    data: bytes
    at: float


Received = TypeVar("Received", ReceivedPost, ReceivedUpload)


class FakePlatform(LocalFileServer):
    """Serves `files` (name -> path) and records results POSTs; answers with `responses` in turn.

    Also takes PUTs to `upload_url_for(name)` (recorded in `uploads`) and exchanges an API key pair
    for a token at `POST /api/v3/token` (OAuth2 client credentials, `Authorization: Basic
    base64(id:secret)`, as the platform's own client does); `api_keys` maps key id -> secret and
    `issued_tokens` records the tokens handed out. `port=0` (the default) takes a free port.
    """

    RESULTS = "/api/v3/external/results/"

    def __init__(self, files: dict[str, Path] | None = None, host: str = "127.0.0.1", port: int = 0,
                 responses: list[int] | None = None, api_keys: dict[str, str] | None = None) -> None:
        super().__init__(host, port, files=files)
        self.responses: list[int] = responses if responses is not None else []
        self.api_keys: dict[str, str] = api_keys if api_keys is not None else {}
        self.posts: list[ReceivedPost] = []
        self.uploads: list[ReceivedUpload] = []
        self.issued_tokens: list[str] = []

    def upload_url_for(self, name: str, expires_s: int = 3600) -> str:
        """A presigned-style URL that takes one PUT of a file called `name`."""
        at = datetime.now(UTC).strftime(AMZ_DATE)
        return (f"{self.base_url}/uploads/{quote(name)}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={at}"
                f"&X-Amz-Expires={expires_s}&X-Amz-SignedHeaders=host&X-Amz-Signature={'0' * 64}")

    def wait_for_uploads(self, count: int = 1, timeout_s: float = 30.0) -> list[ReceivedUpload]:
        """Block (bounded) until `count` uploads arrived; returns them."""
        return self._wait_for(self.uploads, count, timeout_s)

    def wait_for_posts(self, count: int = 1, timeout_s: float = 60.0) -> list[ReceivedPost]:
        """Block (bounded) until `count` results POSTs arrived; returns them."""
        return self._wait_for(self.posts, count, timeout_s)

    def _wait_for(self, received: list[Received], count: int, timeout_s: float) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(received) >= count:
                    return list(received)
            time.sleep(0.05)
        with self._lock:
            return list(received)

    def _token_for(self, authorization: str | None) -> str | None:
        """A fresh access token when `authorization` is Basic base64(id:secret) of a known key."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            key_id, _, secret = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if not key_id or self.api_keys.get(key_id) != secret:
            return None
        token = f"local-access-{secrets.token_hex(8)}"
        with self._lock:
            self.issued_tokens.append(token)
        return token

    def handle_put(self, request: BaseHTTPRequestHandler) -> None:
        """PUT /uploads/<name>: recorded in `uploads`."""
        data = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        parts = urlsplit(request.path)
        if not parts.path.startswith("/uploads/"):
            request.send_error(404)
            return
        with self._lock:
            self.uploads.append(ReceivedUpload(
                path=request.path, name=parts.path.removeprefix("/uploads/"), data=data, at=time.time(),
                content_type=request.headers.get("Content-Type")))
        self.reply(request, 200)

    def handle_post(self, request: BaseHTTPRequestHandler) -> None:
        """POST /api/v3/token (a token for a known key pair) or /api/v3/external/results/<task> (recorded)."""
        raw = request_body(request)
        if request.path == "/api/v3/token":
            token = self._token_for(request.headers.get("Authorization"))
            answer = ({"error": "invalid_client"} if token is None else
                      {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
            self.reply(request, 401 if token is None else 200, json.dumps(answer).encode(), "application/json")
            return
        if not request.path.startswith(self.RESULTS):
            request.send_error(404)
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            self.posts.append(ReceivedPost(
                path=request.path, task_id=request.path[len(self.RESULTS):], body=body, at=time.time(),
                authorization=request.headers.get("Authorization"),
                content_type=request.headers.get("Content-Type"),
                content_length=request.headers.get("Content-Length"),
                transfer_encoding=request.headers.get("Transfer-Encoding")))
            status = self.responses.pop(0) if self.responses else 200
        self.reply(request, status, json.dumps({"ok": 200 <= status < 300}).encode(), "application/json")
