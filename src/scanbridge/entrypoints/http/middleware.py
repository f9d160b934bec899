"""The ASGI middleware in front of every route (`RequestGuard`): Host names in open local mode, JSON body bounds."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scanbridge.config import Settings
from scanbridge.domain.errors import (
    HostNotAllowedError,
    PayloadTooLargeError,
    ScanbridgeError,
    ValidationError,
)
from scanbridge.entrypoints.http.infer import MAX_EVALUATE_BYTES
from scanbridge.entrypoints.http.security import host_allowed, is_open
from scanbridge.entrypoints.webhook_common import MAX_JSON_DEPTH, check_json_depth, error_body, status_for


class RequestGuard:
    """ASGI middleware in front of every route: the `Host` check of open local mode, and JSON bodies
    bounded in size and nesting depth (refused in the error envelope before any route or store sees them).

    Starlette's in-process TestClient (peer "testclient", never a socket) is exempt from the Host check.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            self._check_host(scope)
            if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH") and _is_json(scope):
                body = await self._read_json(scope, receive)
                receive = _replay(body, receive)
        except ScanbridgeError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4400})
                return
            response = JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=status_for(exc))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_host(self, scope: Scope) -> None:
        if self.settings.launcher != "local" or not is_open(self.settings):
            return
        if (scope.get("client") or ("",))[0] == "testclient":
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
        if not host_allowed(host, self.settings.allowed_hosts):
            raise HostNotAllowedError("open local mode answers loopback Host names only (localhost, 127.0.0.1, "
                                      "[::1]); set credentials to serve other names")

    async def _read_json(self, scope: Scope, receive: Receive) -> bytes:
        path = scope.get("path", "")
        limit = MAX_EVALUATE_BYTES if path == "/v1/evaluate" else self.settings.max_body_bytes

        def too_large(size: int) -> ScanbridgeError:
            if path == "/webhook":  # documented as 422 VALIDATION_ERROR
                return ValidationError(f"the body is {size} bytes or more; the limit is {limit}")
            return PayloadTooLargeError(f"the body is {size} bytes or more; the limit is {limit}")

        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(int(declared))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        check_json_depth(body, MAX_JSON_DEPTH)
        return body


def _is_json(scope: Scope) -> bool:
    ctype = next((v for k, v in scope.get("headers", []) if k == b"content-type"), b"").split(b";")[0].strip()
    return ctype.lower() == b"application/json" or ctype.lower().endswith(b"+json") or not ctype


def _replay(body: bytes, upstream: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the client's own messages (disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()

    return receive
