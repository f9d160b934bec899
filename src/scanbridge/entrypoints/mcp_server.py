"""MCP (Model Context Protocol) server: the bridge's tasks as tools for AI assistants.

Two ways in, the same tools (FastMCP from the `mcp` package):

- streamable HTTP at `/mcp` of the FastAPI app (`mount_mcp`): stateless JSON responses, so it needs no
  lifespan and no sticky sessions (Lambda-friendly). The caller is the REST caller: `Authorization:
  Bearer <key>` / `X-API-Key`, tenant-scoped. Submitting needs the admin token (or open local mode), and
  takes URLs only: this process never serves its own files to anyone.
- stdio (`scanbridge mcp`): talks to a running bridge over HTTP (`--url`), or, without `--url`, to an
  in-process local stack (moto + the worker launcher, as `scanbridge serve` builds it). Local paths are
  allowed here (the assistant runs on the user's machine): they are served from a loopback file server
  on `--files-port` (8902), which the bridge must list in SCANBRIDGE_ALLOWED_SCAN_HOSTS.

`entrypoints/http/mcp.py` imports this module on the first `/mcp` request only: the API Lambda's
import time does not pay for the `mcp` package.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError

from scanbridge.client import (
    BridgeClient,
    ClientError,
    LocalFileServer,
    build_webhook,
    is_url,
    scan_ids,
    summarize_results,
)
from scanbridge.ports import McpBackend

if TYPE_CHECKING:
    from scanbridge.bootstrap import Container
    from scanbridge.entrypoints.http.security import Principal

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "scanbridge runs ONNX models on whole-slide scans. submit_scan starts a task (scan URLs, or local paths "
    "when the server allows them); get_task shows status and progress (percent, step, tiles, ETA); "
    "get_results_summary reads what was posted to the platform once the task is COMPLETED.")


class ContainerBackend:
    """The tools over the services of a container, as `principal` (tenant-scoped like the REST routes)."""

    def __init__(self, container: Container, principal: Principal, *, may_submit: bool) -> None:
        self._c = container
        self._p = principal
        self._may_submit = may_submit

    def _guard(self, fn: Callable[[], Any]) -> Any:
        from scanbridge.domain.errors import ScanbridgeError

        try:
            return fn()
        except ScanbridgeError as exc:
            raise ClientError(exc.code, exc.message) from exc

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Accept through the intake service (the admin, or open local mode)."""
        from scanbridge.domain.webhook import WebhookPayload

        if not self._may_submit:
            raise ClientError("FORBIDDEN", "submitting through MCP needs the admin token")
        if self._p.scope is not None:
            body = {**body, "company_id": self._p.scope}
        accepted = self._guard(lambda: self._c.intake.accept(WebhookPayload.model_validate(body)))
        return {"task_id": accepted.task.task_id, "status": str(accepted.task.status), "created": accepted.created}

    def task(self, task_id: str) -> dict[str, Any]:
        """See McpBackend.task."""
        return cast(dict[str, Any], self._guard(lambda: self._c.queries.task(task_id, self._p.scope).public_view()))

    def tasks(self, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        """See McpBackend.tasks."""
        from scanbridge.domain.status import TaskStatus

        page = self._guard(lambda: self._c.queries.tasks(status=TaskStatus(status) if status else None,
                                                         company_id=self._p.scope, limit=limit, cursor=None))
        return {"tasks": [t.public_view() for t in page.tasks], "next_cursor": page.next_cursor}

    def cancel(self, task_id: str) -> dict[str, Any]:
        """See McpBackend.cancel."""
        return cast(dict[str, Any], self._guard(lambda: self._c.control.cancel(task_id, self._p.scope).public_view()))

    def scan_metadata(self, task_id: str, scan_id: str) -> dict[str, Any]:
        """See McpBackend.scan_metadata."""
        return cast(dict[str, Any], self._guard(lambda: self._c.queries.scan_metadata(task_id, scan_id, self._p.scope)))

    def results(self, task_id: str) -> dict[str, Any]:
        """See McpBackend.results."""
        return cast(dict[str, Any], self._guard(lambda: self._c.queries.results(task_id, self._p.scope)))

    def models(self) -> dict[str, Any]:
        """See McpBackend.models."""
        catalog = self._c.catalog
        return {"models": [catalog.spec(n).model_dump(mode="json") for n in catalog.names()]}


def build_mcp(backend_for: Callable[[Context[Any, Any, Any]], McpBackend], *,
              files: Callable[[], LocalFileServer] | None = None) -> FastMCP:
    """The FastMCP server and its tools; `files` serves local paths (None: URLs only)."""
    mcp = FastMCP("scanbridge", instructions=INSTRUCTIONS, stateless_http=True, json_response=True,
                  streamable_http_path="/mcp")

    async def call(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a blocking backend call off the event loop; bridge errors become tool errors."""
        import anyio

        try:
            return await anyio.to_thread.run_sync(fn)
        except ClientError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from exc

    @mcp.tool()
    async def submit_scan(scans: list[str], ctx: Context[Any, Any, Any], model: str = "", task_id: str = "",
                    company_id: str = "local") -> dict[str, Any]:
        """Start a task on one or more scans (http(s) URLs, or local file paths where this server allows them).

        Returns {task_id, status, created}. Follow it with get_task.
        """
        if not scans:
            raise ToolError("VALIDATION_ERROR: name at least one scan")
        local = [s for s in scans if not is_url(s)]
        if local and files is None:
            raise ToolError("VALIDATION_ERROR: this server takes scan URLs only; local paths work through "
                            "`scanbridge mcp` (stdio) or `scanbridge submit`")
        missing = [s for s in local if not Path(s).is_file()]
        if missing:
            raise ToolError(f"VALIDATION_ERROR: no such file: {', '.join(missing)}")
        server = files() if local and files is not None else None
        backend = backend_for(ctx)
        if server is not None and isinstance(backend, BridgeClient):  # a remote bridge must allow our port
            allowed = (await call(backend.capabilities))["limits"]["allowed_scan_hosts"]
            if server.netloc not in allowed:
                raise ToolError(f"SCAN_URL_FORBIDDEN: the bridge does not allow scans from {server.netloc}; "
                                f"start it with SCANBRIDGE_ALLOWED_SCAN_HOSTS={','.join([*allowed, server.netloc])}")
        urls = [server.add(Path(s)) if server is not None and not is_url(s) else s for s in scans]
        body = build_webhook(dict(zip(scan_ids(scans), urls, strict=True)), model=model, task_id=task_id,
                             company_id=company_id)
        return await call(lambda: backend.submit(body))

    @mcp.tool()
    async def get_task(task_id: str, ctx: Context[Any, Any, Any]) -> dict[str, Any]:
        """A task: status, progress (percent, step, tiles, ETA), per-scan status and errors, delivery."""
        return await call(lambda: backend_for(ctx).task(task_id))

    @mcp.tool()
    async def list_tasks(ctx: Context[Any, Any, Any], status: str | None = None, limit: int = 20) -> dict[str, Any]:
        """Tasks, newest first, optionally by status (RECEIVED, QUEUED, DOWNLOADING, RUNNING, DELIVERING,
        COMPLETED, FAILED, CANCELLED, DELIVERY_FAILED)."""
        def brief() -> dict[str, Any]:
            page = backend_for(ctx).tasks(status=status, limit=max(1, min(limit, 200)))
            return {"tasks": [{"task_id": t["task_id"], "status": t["status"], "model": t.get("model"),
                               "progress": t.get("progress"), "created_at": t["created_at"],
                               "scans": len(t.get("scans") or {})} for t in page["tasks"]],
                    "next_cursor": page.get("next_cursor")}
        return await call(brief)

    @mcp.tool()
    async def cancel_task(task_id: str, ctx: Context[Any, Any, Any]) -> dict[str, Any]:
        """Cancel a task: its work stops within seconds; the platform is told."""
        return await call(lambda: {"task_id": task_id, "status": backend_for(ctx).cancel(task_id)["status"]})

    @mcp.tool()
    async def scan_metadata(task_id: str, scan_id: str, ctx: Context[Any, Any, Any]) -> dict[str, Any]:
        """What the reader found in a scan: format, dimensions, levels, µm/px, vendor, stain."""
        return await call(lambda: backend_for(ctx).scan_metadata(task_id, scan_id))

    @mcp.tool()
    async def list_models(ctx: Context[Any, Any, Any]) -> dict[str, Any]:
        """The models this bridge runs, with their specs (kind, labels, µm/px, stains)."""
        return await call(lambda: backend_for(ctx).models())

    @mcp.tool()
    async def get_results_summary(task_id: str, ctx: Context[Any, Any, Any]) -> dict[str, Any]:
        """The readable summary of what was posted to the platform: caseResults and each scan's summary."""
        return await call(lambda: {"task_id": task_id, **summarize_results(backend_for(ctx).results(task_id))})

    return mcp


def http_server(container: Container) -> FastMCP:
    """The tools for `/mcp`: each call runs as the caller that `live.McpEndpoint` authenticated."""
    def backend_for(ctx: Context[Any, Any, Any]) -> McpBackend:
        from scanbridge.entrypoints.http.security import Principal

        request = ctx.request_context.request  # the Starlette request McpEndpoint put the caller on
        principal = request.state.scanbridge_principal if request is not None else Principal(company_id=None)
        return ContainerBackend(container, principal, may_submit=principal.admin)

    return build_mcp(backend_for, files=None)


async def handle_http(server: FastMCP, container: Container, scope: Any, receive: Any, send: Any) -> None:
    """One stateless streamable-HTTP exchange (JSON responses): a fresh manager, no lifespan or task group to keep."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    manager = StreamableHTTPSessionManager(app=server._mcp_server, json_response=True, stateless=True,
                                           security_settings=_security(container))
    async with manager.run():
        await manager.handle_request(scope, receive, send)


def _security(container: Container) -> Any:
    """DNS-rebinding protection in local mode (loopback Host/Origin only); on AWS the API keys guard it."""
    if container.settings.launcher != "local":
        return None
    from mcp.server.transport_security import TransportSecuritySettings

    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1", "localhost", "127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])


class _FilesOnce:
    """One loopback file server per stdio process, started on first use."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: LocalFileServer | None = None

    def __call__(self) -> LocalFileServer:
        if self.server is None:
            self.server = LocalFileServer(port=self.port).start()
        return self.server


def run_stdio(*, url: str | None, api_key: str | None = None, webhook_secret: str | None = None,
              files_port: int = 8902) -> int:
    """`scanbridge mcp`: the tools over stdio, against `url` (HTTP) or an in-process local stack."""
    files = _FilesOnce(files_port)
    stop: Callable[[], None] = lambda: None
    if url:
        client = BridgeClient(url, api_key=api_key, webhook_secret=webhook_secret)
        backend: McpBackend = client
        stop = client.close
    else:
        backend, stop = _local_stack(files_port)
    mcp = build_mcp(lambda _ctx: backend, files=files)
    try:
        mcp.run("stdio")
    finally:
        if files.server is not None:
            files.server.stop()
        stop()
    return 0


def _local_stack(files_port: int) -> tuple[McpBackend, Callable[[], None]]:
    """An in-process local stack (`local_stack.start`, state in memory) that also allows our file server's port."""
    import os

    from scanbridge.config import S3_HOSTS
    from scanbridge.entrypoints.http.security import Principal
    from scanbridge.entrypoints.local_stack import start

    hosts = os.environ.get("SCANBRIDGE_ALLOWED_SCAN_HOSTS")
    netloc = f"127.0.0.1:{files_port}"
    if hosts is None or netloc not in hosts.split(","):  # our own loopback file server, and only that port
        os.environ["SCANBRIDGE_ALLOWED_SCAN_HOSTS"] = f"{hosts or S3_HOSTS},{netloc}"
    stack = start(durable=False)
    return ContainerBackend(stack.container, Principal(company_id=None, admin=True), may_submit=True), stack.stop


def tools_json(mcp: FastMCP) -> str:  # pragma: no cover - a debugging aid
    """The tools' names and descriptions as JSON."""
    import anyio

    tools = anyio.run(mcp.list_tools)
    return json.dumps([{"name": t.name, "description": t.description} for t in tools], indent=2)
