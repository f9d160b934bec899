"""`/mcp`: the MCP tools over streamable HTTP (stateless, JSON responses), authenticated like the REST routes.

`entrypoints.mcp_server` (and the `mcp` package) is imported on the first request, not with the app:
the API Lambda's import time does not pay for it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from scanbridge.bootstrap import Container
from scanbridge.domain.errors import ScanbridgeError
from scanbridge.entrypoints.http.errors import error_body, status_for
from scanbridge.entrypoints.http.security import principal


class McpEndpoint:
    """ASGI endpoint of `/mcp`: authenticates like the REST routes, then hands the exchange to the MCP server.

    `entrypoints.mcp_server` (and the `mcp` package) is imported on the first request, not with the app.
    """

    def __init__(self, container: Container) -> None:
        self._container = container
        self._server: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            caller = principal(Request(scope))
        except ScanbridgeError as exc:
            await JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=status_for(exc))(
                scope, receive, send)
            return
        try:
            from scanbridge.entrypoints import mcp_server
        except ImportError:  # pragma: no cover - a deployment without the mcp package
            await JSONResponse(error_body("NOT_IMPLEMENTED", "MCP is not installed here"), status_code=501)(
                scope, receive, send)
            return
        if self._server is None:
            self._server = mcp_server.http_server(self._container)
        scope.setdefault("state", {})["scanbridge_principal"] = caller
        await mcp_server.handle_http(self._server, self._container, scope, receive, send)


def mount_mcp(app: FastAPI, container: Container) -> None:
    """Serve the MCP tools at `/mcp` (streamable HTTP, stateless, JSON responses) of `app`."""
    app.router.routes.append(Route("/mcp", endpoint=McpEndpoint(container), methods=["GET", "POST", "DELETE"]))
