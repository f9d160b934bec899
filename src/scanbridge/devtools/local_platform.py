"""A local stand-in for the platform: serves scan files behind presigned-style URLs and receives results.

A real HTTP server on loopback (stdlib `http.server`, one thread per request). Tests use it as the
fake platform; `scanbridge dev platform` will expose it to newcomers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
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
class FakePlatform:
    """Serves `files` (name -> path) and records results POSTs; answers with `responses` in turn."""

    files: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    responses: list[int] = field(default_factory=list)
    posts: list[ReceivedPost] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)

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

    def start(self) -> FakePlatform:
        """Start serving in a background thread."""
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server API
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

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
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

    def __enter__(self) -> FakePlatform:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
