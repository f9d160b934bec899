"""A local stand-in for the platform: serves scan files behind presigned-style URLs and receives results.

A real HTTP server on loopback (stdlib `http.server`, one thread per request). Tests use it as the
fake platform; `scanbridge dev platform` will expose it to newcomers.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, quote, urlsplit


@dataclass
class ReceivedPost:
    """One results POST as the platform got it."""

    path: str
    task_id: str
    authorization: str | None
    content_type: str | None
    body: Any
    at: float


@dataclass
class ReceivedUpload:
    """One PUT to an upload URL (the Model Hosting Service's DEBUG_FILE_UPLOAD_URL)."""

    path: str
    name: str
    content_type: str | None
    data: bytes
    at: float


@dataclass
class FakePlatform:
    """Serves `files` (name -> path) and records results POSTs; answers with `responses` in turn.

    Also takes PUTs to `upload_url_for(name)` (recorded in `uploads`) and exchanges an API key pair
    for a token at `POST /api/v3/token` (OAuth2 client credentials, `Authorization: Basic
    base64(id:secret)`, as the platform's own client does); `api_keys` maps key id -> secret and
    `issued_tokens` records the tokens handed out.
    """

    files: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    responses: list[int] = field(default_factory=list)
    posts: list[ReceivedPost] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    uploads: list[ReceivedUpload] = field(default_factory=list)
    api_keys: dict[str, str] = field(default_factory=dict)
    issued_tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """http://host:port of the running server."""
        return f"http://{self.host}:{self.port}"

    @property
    def netloc(self) -> str:
        """host:port, as SCANBRIDGE_ALLOWED_SCAN_HOSTS takes it."""
        return f"{self.host}:{self.port}"

    def url_for(self, name: str, expires_s: int = 3600, signed_at: datetime | None = None) -> str:
        """A presigned-style URL for a served file (no extension: the bridge must sniff content)."""
        at = (signed_at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        return (f"{self.base_url}/scans/{quote(name)}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                f"&X-Amz-Credential=LOCAL%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date={at}"
                f"&X-Amz-Expires={expires_s}&X-Amz-SignedHeaders=host&X-Amz-Signature={'0' * 64}")

    def upload_url_for(self, name: str, expires_s: int = 3600) -> str:
        """A presigned-style URL that takes one PUT of a file called `name`."""
        at = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return (f"{self.base_url}/uploads/{quote(name)}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={at}"
                f"&X-Amz-Expires={expires_s}&X-Amz-SignedHeaders=host&X-Amz-Signature={'0' * 64}")

    def wait_for_uploads(self, count: int = 1, timeout_s: float = 30.0) -> list[ReceivedUpload]:
        """Block (bounded) until `count` uploads arrived; returns them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.uploads) >= count:
                    return list(self.uploads)
            time.sleep(0.05)
        with self._lock:
            return list(self.uploads)

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

    def start(self) -> FakePlatform:
        """Start serving in a background thread."""
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                name = parts.path.removeprefix("/scans/")
                path = platform.files.get(name)
                query = parse_qs(parts.query)
                if path is None or not parts.path.startswith("/scans/"):
                    self.send_error(404)
                    return
                if "X-Amz-Date" in query and "X-Amz-Expires" in query:
                    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                    if (datetime.now(UTC) - signed).total_seconds() > int(query["X-Amz-Expires"][0]):
                        body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
                        self.send_response(403)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                data = Path(path).read_bytes()
                with platform._lock:
                    platform.downloads.append(name)
                self.send_response(200)
                self.send_header("Content-Type", "binary/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                parts = urlsplit(self.path)
                if not parts.path.startswith("/uploads/"):
                    self.send_error(404)
                    return
                with platform._lock:
                    platform.uploads.append(ReceivedUpload(
                        path=self.path, name=parts.path.removeprefix("/uploads/"), data=data, at=time.time(),
                        content_type=self.headers.get("Content-Type")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path == "/api/v3/token":
                    token = platform._token_for(self.headers.get("Authorization"))
                    if token is None:
                        self._answer(401, {"error": "invalid_client"})
                    else:
                        self._answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
                    return
                prefix = "/api/v3/external/results/"
                if not self.path.startswith(prefix):
                    self.send_error(404)
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                with platform._lock:
                    platform.posts.append(ReceivedPost(
                        path=self.path, task_id=self.path[len(prefix):], body=body, at=time.time(),
                        authorization=self.headers.get("Authorization"),
                        content_type=self.headers.get("Content-Type")))
                    status = platform.responses.pop(0) if platform.responses else 200
                out = json.dumps({"ok": 200 <= status < 300}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-platform", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def wait_for_posts(self, count: int = 1, timeout_s: float = 60.0) -> list[ReceivedPost]:
        """Block (bounded) until `count` results POSTs arrived; returns them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.posts) >= count:
                    return list(self.posts)
            time.sleep(0.05)
        with self._lock:
            return list(self.posts)

    def __enter__(self) -> Self:
        if self._server is None:  # already started by the caller (to handle a busy port) is fine
            self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
