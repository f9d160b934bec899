"""The FastAPI app over one container: the middleware, the error handlers, the OpenAPI document, the routers.

One router module per resource, each route parsing, calling one service (from `deps.py`) and shaping
the answer: `webhook`, `tasks`, `artifacts`, `events`, `logs`, `models`, `infer`, `capabilities`,
`health`, `dashboard`, `docs` and `mcp`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI

from scanbridge import __version__
from scanbridge.bootstrap import Container
from scanbridge.domain.errors import RouteNotAvailableError
from scanbridge.entrypoints.http import (
    artifacts,
    capabilities,
    dashboard,
    errors,
    events,
    health,
    infer,
    logs,
    mcp,
    models,
    tasks,
)
from scanbridge.entrypoints.http.docs import mount_docs
from scanbridge.entrypoints.http.middleware import RequestGuard
from scanbridge.entrypoints.http.openapi import document_errors
from scanbridge.entrypoints.http.security import warn_open
from scanbridge.entrypoints.http.webhook import webhook_router
from scanbridge.services.capabilities import unavailable_here

log = logging.getLogger(__name__)


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
    app.state.live_poll_s = events.POLL_S
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
    app.include_router(health.router)  # GET /health
    app.include_router(webhook_router(settings.max_scans_per_task))  # POST /webhook
    app.include_router(tasks.router)  # /tasks, /tasks/{id}, results, scan metadata, cancel, redeliver
    app.include_router(artifacts.router)  # artifacts + exports (issue #7)
    app.include_router(dashboard.router)  # `/`: the dashboard
    app.include_router(models.router)  # the model registry (issue #5)
    app.include_router(infer.router)  # POST /v1/infer/{model}, POST /v1/evaluate (issue #5)
    app.include_router(events.router)  # live events: SSE, WebSocket (issue #7)
    app.include_router(logs.router)  # the worker's log lines
    app.include_router(capabilities.router)  # GET /config/available
    mcp.mount_mcp(app, container)  # MCP tools at /mcp (streamable HTTP; `mcp` imported on first use)
    return app
