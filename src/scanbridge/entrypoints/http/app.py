"""Routes: the webhook, health, tasks, results. Each parses, calls one service and shapes the answer."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scanbridge import __version__
from scanbridge.bootstrap import Container
from scanbridge.config import Settings
from scanbridge.domain.errors import (
    HostNotAllowedError,
    PayloadTooLargeError,
    RouteNotAvailableError,
    ScanbridgeError,
    ValidationError,
)
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.entrypoints.http import errors
from scanbridge.entrypoints.http.dashboard import dashboard_router, downloads_router
from scanbridge.entrypoints.http.docs import mount_docs
from scanbridge.entrypoints.http.infer import MAX_EVALUATE_BYTES
from scanbridge.entrypoints.http.infer import router as infer_router
from scanbridge.entrypoints.http.live import mount_mcp
from scanbridge.entrypoints.http.live import router as live_router
from scanbridge.entrypoints.http.models import router as models_router
from scanbridge.entrypoints.http.security import (
    Principal,
    admin,
    host_allowed,
    is_open,
    principal,
    verify_webhook,
    warn_open,
)
from scanbridge.entrypoints.webhook_common import (
    MAX_JSON_DEPTH,
    check_body_size,
    check_json_depth,
    error_body,
    parse_webhook,
    status_for,
)
from scanbridge.services.capabilities import unavailable_here

log = logging.getLogger(__name__)

Tenant = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused (422) as soon as it is known to exceed `limit`: never read whole into memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_body_size(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValidationError(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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


def _inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline_refs(v, defs) for v in schema]
    return schema


def _keys_by_name(schema: Any) -> Any:
    """pydantic writes a dict's key pattern as `patternProperties` (other keys then go unchecked): state it
    as `propertyNames` + `additionalProperties`, which is what the server enforces."""
    if isinstance(schema, list):
        return [_keys_by_name(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _keys_by_name(v) for k, v in schema.items()}
    patterns = out.get("patternProperties")
    if isinstance(patterns, dict) and len(patterns) == 1:
        (pattern, values), = patterns.items()
        del out["patternProperties"]
        out["propertyNames"] = {**out.get("propertyNames", {}), "pattern": pattern}
        out["additionalProperties"] = values
    return out


def _numbers_as_strings(schema: Any, key: str = "") -> Any:
    """The webhook reads numbers as strings (`coerce_numbers_to_str`): string values admit numbers too."""
    if isinstance(schema, list):
        return [_numbers_as_strings(v) for v in schema]
    if not isinstance(schema, dict) or key == "propertyNames":
        return schema
    out = {k: _numbers_as_strings(v, k) for k, v in schema.items()}
    if out.get("type") == "string":
        out["type"] = ["string", "number"]
    return out


def webhook_schema(max_scans: int = 50) -> dict[str, Any]:
    """The webhook body's JSON schema, self-contained, for the OpenAPI document: it admits what the
    server accepts (ids by ID_PATTERN, at least one scan, at most `max_scans` per map)."""
    raw = WebhookPayload.model_json_schema()
    inlined: dict[str, Any] = _numbers_as_strings(_keys_by_name(_inline_refs(raw, raw.get("$defs", {}))))
    for name in ("scans", "scan_urls"):
        inlined["properties"][name]["maxProperties"] = max_scans
    for name in ("scans", "scan_urls", "stains"):  # null reads as empty
        inlined["properties"][name]["type"] = ["object", "null"]
    return inlined


#: the uniform error body, `{"error": {"code", "message", "details"}}`
ERROR_SCHEMA: dict[str, Any] = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "string", "description": "stable error code (docs/error-codes.md)"},
        "message": {"type": "string"}, "details": {"type": "object"}}}}}
_ERROR_TEXT = {400: "A malformed (multipart) body", 401: "No or wrong credentials (API key, admin token, webhook signature)",
               403: "Valid credentials, not for this (or admin routes closed)",
               404: "No such task, scan, model or file (or another tenant's)",
               409: "The task's state or another task conflicts (TASK_ID_CONFLICT, TASK_PAYLOAD_MISMATCH, ...)",
               413: "The body or the task is too large", 421: "Host not a loopback name (open local mode)",
               422: "The request breaks the contract (VALIDATION_ERROR and more specific codes)"}
#: operations that answer 409 besides the admin model writes
_CONFLICTS = {("POST", "/webhook"), ("POST", "/tasks/{task_id}/cancel"), ("POST", "/tasks/{task_id}/redeliver")}


def _auth_kinds(dependant: Any) -> set[str]:
    """Which of the credential dependencies (`principal`, `admin`, the live one) a route uses."""
    from scanbridge.entrypoints.http.live import live_principal

    kinds: set[str] = set()
    for dep in dependant.dependencies:
        if dep.call is admin:
            kinds.add("admin")
        elif dep.call in (principal, live_principal):
            kinds.add("tenant")
        kinds |= _auth_kinds(dep)
    return kinds


def error_statuses(method: str, path: str, dependant: Any) -> set[int]:
    """The error statuses an operation can answer, from what it depends on (one rule for every route)."""
    statuses = {421, 422}
    kinds = _auth_kinds(dependant)
    if kinds:
        statuses.add(401)
    if "admin" in kinds:
        statuses |= {403, 409}
    if "{" in path:
        statuses.add(404)
    if method in ("POST", "PUT", "PATCH"):
        statuses |= {400, 413}  # 400: a malformed multipart body (Starlette's form parser)
    if (method, path) in _CONFLICTS:
        statuses.add(409)
    if path == "/webhook":
        statuses.add(401)
    return statuses


def document_errors(app: FastAPI, spec: dict[str, Any]) -> dict[str, Any]:
    """Declare every operation's error answers, each with the error envelope (FastAPI declares none but 422,
    and that one with its own body, which the handlers in errors.py replace)."""
    from fastapi import routing

    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    # the routes as get_openapi sees them (included routers' routes with their prefixes)
    for route in routing.iter_route_contexts(app.routes):
        if not isinstance(route.original_route, routing.APIRoute):
            continue
        path = route.path_format or ""
        for method in route.methods or ():
            op = spec["paths"].get(path, {}).get(method.lower())
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            for status in sorted(error_statuses(method, path, route.dependant)):
                responses[str(status)] = {"description": _ERROR_TEXT[status],
                                          "content": {"application/json": {"schema": ref}}}
    for name in ("HTTPValidationError", "ValidationError"):
        spec["components"]["schemas"].pop(name, None)
    return spec


#: route id (services/capabilities.py) -> (path, methods) of the routes a deployment may be unable to run
OPTIONAL_ROUTES: dict[str, tuple[str, list[str]]] = {
    "infer": ("/v1/infer/{model}", ["POST"]),
    "evaluate": ("/v1/evaluate", ["POST"]),
    "mcp": ("/mcp", ["GET", "POST", "DELETE"]),
    "model_upload": ("/admin/models/{name}", ["PUT"]),
}


def _mount_unavailable(app: FastAPI, unavailable: Mapping[str, str]) -> None:
    """Answer each unavailable route with 501 ROUTE_NOT_AVAILABLE; mounted first, so it shadows the real one."""
    for route_id, runs_on in unavailable.items():
        path, methods = OPTIONAL_ROUTES[route_id]

        def not_here(route_id: str = route_id, runs_on: str = runs_on, path: str = path) -> None:
            raise RouteNotAvailableError(f"{path} is not available in this deployment: {runs_on}",
                                         details={"route": route_id, "runs_on": runs_on})

        app.add_api_route(path, not_here, methods=methods, include_in_schema=False)


def create_app(container: Container, *, unavailable: Mapping[str, str] | None = None) -> FastAPI:
    """The FastAPI app over one container.

    `unavailable`: ids of OPTIONAL_ROUTES this deployment answers with a coded 501 saying where they run
    (the API Lambda passes `capabilities.LAMBDA_UNAVAILABLE`); by default those whose packages this
    process cannot import.
    """
    settings = container.settings
    app = FastAPI(title="scanbridge", version=__version__, docs_url=None, redoc_url=None,
                  description="Webhook bridge between digital-pathology platforms and ONNX models.")
    mount_docs(app)  # /docs and /redoc with their assets served here (offline)
    app.state.container = container
    app.state.unavailable_routes = dict(unavailable_here() if unavailable is None else unavailable)
    errors.install(app)
    app.add_middleware(RequestGuard, settings=settings)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = document_errors(app, get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    warn_open(settings)
    _mount_unavailable(app, app.state.unavailable_routes)

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Liveness, version and the models this bridge offers."""
        return {"status": "ok", "version": __version__, "models": container.catalog.names(),
                "launcher": settings.launcher}

    @app.post("/webhook", status_code=202, tags=["platform"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": webhook_schema(settings.max_scans_per_task)}}}})
    async def webhook(request: Request) -> JSONResponse:
        """Accept a platform task: 202 with {task_id, status}; redeliveries return the same task."""
        raw = await _read_capped(request, settings.max_body_bytes)
        verify_webhook(settings, raw, dict(request.headers))
        payload = parse_webhook(raw)
        # boto3 calls block: run them in the thread pool so one slow write never stalls other requests
        accepted = await run_in_threadpool(container.intake.accept, payload)
        return JSONResponse({"task_id": accepted.task.task_id, "status": str(accepted.task.status),
                             "created": accepted.created}, status_code=202)

    @app.get("/tasks", tags=["tasks"])
    def list_tasks(caller: Tenant, status: TaskStatus | None = None, company_id: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50, cursor: str | None = None) -> dict[str, Any]:
        """Tasks, newest first, filtered by status and company; `next_cursor` pages on."""
        if caller.scope is not None:
            if company_id not in (None, caller.scope):
                return {"tasks": [], "next_cursor": None}
            company_id = caller.scope
        page = container.queries.tasks(status=status, company_id=company_id, limit=limit, cursor=cursor)
        return {"tasks": [t.public_view() for t in page.tasks], "next_cursor": page.next_cursor}

    @app.get("/tasks/{task_id}", tags=["tasks"])
    def get_task(task_id: str, caller: Tenant) -> dict[str, Any]:
        """A task: status, per-scan status and progress, timestamps, error, delivery; `queue` while QUEUED."""
        return container.queries.task_view(task_id, caller.scope)

    @app.get("/tasks/{task_id}/results", tags=["tasks"])
    def get_results(task_id: str, caller: Tenant) -> dict[str, Any]:
        """Exactly the body that was posted to the platform."""
        return container.queries.results(task_id, caller.scope)

    @app.get("/tasks/{task_id}/scans/{scan_id}/metadata", tags=["tasks"])
    def scan_metadata(task_id: str, scan_id: str, caller: Tenant) -> dict[str, Any]:
        """What the reader found in the scan: dimensions, levels, mpp, vendor, format."""
        return container.queries.scan_metadata(task_id, scan_id, caller.scope)

    @app.post("/tasks/{task_id}/cancel", tags=["tasks"])
    def cancel_task(task_id: str, caller: Tenant) -> dict[str, Any]:
        """Stop the task's work within seconds; the task becomes CANCELLED and the platform is told."""
        return container.control.cancel(task_id, caller.scope).public_view()

    @app.post("/tasks/{task_id}/redeliver", tags=["admin"])
    def redeliver_task(task_id: str, _admin: Admin) -> dict[str, Any]:
        """Admin: post the results of a DELIVERY_FAILED task again."""
        return container.control.redeliver(task_id).public_view()

    app.include_router(downloads_router(container))  # artifacts + exports (issue #7)
    app.include_router(dashboard_router())  # `/`: the dashboard
    app.include_router(models_router)  # the model registry (issue #5)
    app.include_router(infer_router)  # POST /v1/infer/{model}, POST /v1/evaluate (issue #5)
    app.include_router(live_router)  # live events (SSE, WebSocket), logs, /config/available (issue #7)
    mount_mcp(app, container)  # MCP tools at /mcp (streamable HTTP; `mcp` imported on first use)
    return app
