"""The routes' dependencies, each an `Annotated` type: the container, the caller, the services.

A route names what it needs in its signature (`caller: Tenant, queries: Queries`); everything comes
from the one container `create_app` was given (`app.state.container`), built by `bootstrap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

from scanbridge.bootstrap import Container
from scanbridge.config import Settings
from scanbridge.entrypoints.http.security import Principal, admin, principal
from scanbridge.services.artifacts import ArtifactService
from scanbridge.services.control import ControlService
from scanbridge.services.exports import ExportService
from scanbridge.services.intake import IntakeService
from scanbridge.services.models import ModelService
from scanbridge.services.queries import QueryService


def container(conn: HTTPConnection) -> Container:
    """The app's container (HTTP requests and WebSockets alike)."""
    return cast(Container, conn.app.state.container)


@dataclass
class _Caller:
    """What `security.principal` reads of a request: the app and the headers (key from ?api_key= added)."""

    app: Any
    headers: Headers


def live_principal(conn: HTTPConnection) -> Principal:
    """The caller of a live route: headers as everywhere, or `?api_key=` (EventSource and WebSocket)."""
    headers = conn.headers
    key = conn.query_params.get("api_key")
    if key and "authorization" not in headers and "x-api-key" not in headers:
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        headers = Headers(raw=[*raw, (b"authorization", f"Bearer {key}".encode("utf-8", "replace"))])
    return principal(cast(Request, _Caller(conn.app, headers)))


ContainerDep = Annotated[Container, Depends(container)]
#: a tenant (scoped to its company), the admin, or anyone in open local mode: `security.principal`
Tenant = Annotated[Principal, Depends(principal)]
#: the admin: `security.admin`
Admin = Annotated[Principal, Depends(admin)]
#: as Tenant, also taking the key as `?api_key=` (EventSource and WebSocket cannot set headers)
LiveTenant = Annotated[Principal, Depends(live_principal)]


def _settings(c: ContainerDep) -> Settings:
    return c.settings


def _intake(c: ContainerDep) -> IntakeService:
    return c.intake


def _queries(c: ContainerDep) -> QueryService:
    return c.queries


def _control(c: ContainerDep) -> ControlService:
    return c.control


def _models(c: ContainerDep) -> ModelService:
    return c.catalog


def _downloads(c: ContainerDep) -> ArtifactService:
    return c.downloads


def _exports(c: ContainerDep) -> ExportService:
    return c.exports


SettingsDep = Annotated[Settings, Depends(_settings)]
Intake = Annotated[IntakeService, Depends(_intake)]
Queries = Annotated[QueryService, Depends(_queries)]
Control = Annotated[ControlService, Depends(_control)]
Models = Annotated[ModelService, Depends(_models)]
Downloads = Annotated[ArtifactService, Depends(_downloads)]
Exports = Annotated[ExportService, Depends(_exports)]
