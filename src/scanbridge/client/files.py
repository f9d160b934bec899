"""The project's one loopback HTTP server, and the file serving built on it.

`LoopbackServer` is stdlib `http.server` (a thread per request) on a loopback port in a daemon thread;
subclasses answer requests by overriding `handle_get` / `handle_put` / `handle_post`. `LocalFileServer`
serves local files behind presigned-style URLs. It lives in the client package because serving local
files is a client feature (`scanbridge submit FILE`, `scanbridge mcp` with local paths), not dev-only
code; the stand-in platform (`devtools/local_platform.FakePlatform`) and the tests' scripted servers
build on the same classes. No runtime path (the API, the worker) imports this module.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from contextlib import suppress
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_FILES_PORT = 8902
AMZ_DATE = "%Y%m%dT%H%M%SZ"
EXPIRED = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"


class LoopbackServer:
    """An HTTP server on loopback, serving in a daemon thread until `stop()` (or the `with` block ends).

    `port=0` takes a free port (read `port` after `start()`). A method without a handler answers 501,
    as `http.server` does; a client that hangs up mid-answer is not an error."""

    #: the HTTP version the handler speaks (1.1 keeps connections open and allows chunked bodies)
    protocol_version: ClassVar[str] = "HTTP/1.0"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        """http://host:port of the running server."""
        return f"http://{self.host}:{self.port}"

    @property
    def netloc(self) -> str:
        """host:port, as SCANBRIDGE_ALLOWED_SCAN_HOSTS takes it."""
        return f"{self.host}:{self.port}"

    def handle_get(self, request: BaseHTTPRequestHandler) -> None:
        """Answer a GET."""
        request.send_error(501)

    def handle_put(self, request: BaseHTTPRequestHandler) -> None:
        """Answer a PUT."""
        request.send_error(501)

    def handle_post(self, request: BaseHTTPRequestHandler) -> None:
        """Answer a POST."""
        request.send_error(501)

    @staticmethod
    def reply(request: BaseHTTPRequestHandler, status: int, body: bytes = b"",
              content_type: str | None = None) -> None:
        """Send a whole answer: status, Content-Length (and Content-Type), body."""
        request.send_response(status)
        if content_type:
            request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def start(self) -> Self:
        """Bind the port and serve in a daemon thread."""
        owner = self

        def answer(handle: Any) -> Any:
            def do(request: BaseHTTPRequestHandler) -> None:
                with suppress(BrokenPipeError, ConnectionResetError):  # the client hung up: nobody to answer
                    handle(request)
            return do

        class Handler(BaseHTTPRequestHandler):
            protocol_version = owner.protocol_version
            do_GET = answer(owner.handle_get)
            do_PUT = answer(owner.handle_put)
            do_POST = answer(owner.handle_post)

            def log_message(self, *_args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        if self._server is None:  # already started by the caller (to handle a busy port) is fine
            self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class LocalFileServer(LoopbackServer):
    """Serves local files at `/scans/<name>` behind presigned-style URLs, streamed.

    `files` maps a name to a path (`add` registers one under an unguessable name). The URLs carry
    X-Amz-Date / X-Amz-Expires as S3's do, so the bridge's expiry check applies, and an expired one is
    refused here with S3's 403 body. `downloads` records the name of each file served."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_FILES_PORT, *, expires_s: int = 3600,
                 files: dict[str, Path] | None = None) -> None:
        super().__init__(host, port)
        self.expires_s = expires_s
        self.files: dict[str, Path] = files if files is not None else {}
        self.downloads: list[str] = []

    def url_for(self, name: str, expires_s: int | None = None, signed_at: datetime | None = None) -> str:
        """A presigned-style URL of a served file (no extension needed: the bridge sniffs content)."""
        at = (signed_at or datetime.now(UTC)).strftime(AMZ_DATE)
        return (f"{self.base_url}/scans/{quote(name)}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                f"&X-Amz-Credential=LOCAL%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date={at}"
                f"&X-Amz-Expires={self.expires_s if expires_s is None else expires_s}"
                f"&X-Amz-SignedHeaders=host&X-Amz-Signature={'0' * 64}")

    def add(self, path: Path) -> str:
        """Serve `path` under an unguessable name; returns its URL."""
        path = Path(path).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        name = f"{secrets.token_urlsafe(16)}/{path.name}"
        with self._lock:
            self.files[name] = path
        return self.url_for(name)

    def handle_get(self, request: BaseHTTPRequestHandler) -> None:
        """GET /scans/<name>: the file (404 unknown, 403 expired)."""
        parts = urlsplit(request.path)
        name = unquote(parts.path.removeprefix("/scans/"))
        with self._lock:
            path = self.files.get(name) if parts.path.startswith("/scans/") else None
        if path is None or not Path(path).is_file():
            request.send_error(404)
            return
        if _expired(parse_qs(parts.query)):
            self.reply(request, 403, EXPIRED, "application/xml")
            return
        with self._lock:
            self.downloads.append(name)
        request.send_response(200)
        request.send_header("Content-Type", "binary/octet-stream")
        request.send_header("Content-Length", str(Path(path).stat().st_size))
        request.end_headers()
        with open(path, "rb") as fh:
            shutil.copyfileobj(fh, request.wfile, 1024 * 1024)


def _expired(query: dict[str, list[str]]) -> bool:
    """Whether a presigned-style query is past X-Amz-Date + X-Amz-Expires (unreadable: expired; absent: not)."""
    if "X-Amz-Date" not in query and "X-Amz-Expires" not in query:
        return False
    try:
        signed = datetime.strptime(query["X-Amz-Date"][0], AMZ_DATE).replace(tzinfo=UTC)
        return (datetime.now(UTC) - signed).total_seconds() > int(query["X-Amz-Expires"][0])
    except (KeyError, ValueError):
        return True
