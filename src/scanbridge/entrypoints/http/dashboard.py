"""The dashboard (`/`, plain HTML + vanilla JS from `static/`) and the artifact / export downloads.

The dashboard is a static page that polls the public REST routes (`/health`, `/tasks`, `/tasks/{id}`,
`/tasks/{id}/results`, `/tasks/{id}/artifacts`) once a second; it holds no state on the server and
sends the API key a person types in (kept in the browser's localStorage) like any other client.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from scanbridge.bootstrap import Container
from scanbridge.domain.errors import NotFoundError
from scanbridge.entrypoints.http.security import Principal, principal

Tenant = Annotated[Principal, Depends(principal)]
ExportFormat = Literal["geojson", "csv", "dicom-ann", "dicom-seg", "dicom-source"]
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                "index.html": "text/html; charset=utf-8"}


def _static(name: str) -> bytes:
    return resources.files("scanbridge.entrypoints.http").joinpath("static", name).read_bytes()


def _base_url(container: Container, request: Request) -> str:
    public = (container.settings.public_url or "").rstrip("/")
    return public or str(request.base_url).rstrip("/")


def downloads_router(container: Container) -> APIRouter:
    """`GET /tasks/{id}/artifacts`, one artifact, and `GET /tasks/{id}/scans/{scan}/export?format=`."""
    router = APIRouter(tags=["tasks"])
    artifacts = container.downloads
    exports = container.exports

    @router.get("/tasks/{task_id}/artifacts")
    def list_artifacts(task_id: str, caller: Tenant, request: Request) -> dict[str, Any]:
        """The task's per-scan artifacts (overlay PNG, label mask, objects CSV, cell crops, DICOM) with links."""
        found = artifacts.list(task_id, caller.scope, base_url=_base_url(container, request))
        return {"task_id": task_id, "artifacts": [a.to_json() for a in found]}

    @router.get("/tasks/{task_id}/artifacts/{scan_id}/{file}", response_class=Response,
                responses={200: {"content": {"application/octet-stream": {}}}})
    def get_artifact(task_id: str, scan_id: str, file: str, caller: Tenant) -> Response:
        """One artifact's bytes, served by the API from the artifact store."""
        body, media = artifacts.get(task_id, scan_id, file, caller.scope)
        return Response(body, media_type=media, headers={
            "Content-Disposition": f'inline; filename="{_ascii(file)}"', "Cache-Control": "private, max-age=60"})

    @router.get("/tasks/{task_id}/scans/{scan_id}/export", response_class=Response,
                responses={200: {"content": {"application/geo+json": {}, "text/csv": {}, "application/dicom": {}}}})
    def export_scan(task_id: str, scan_id: str, caller: Tenant,
                    format: Annotated[ExportFormat, Query()] = "geojson") -> Response:
        """One scan's results as GeoJSON, CSV (per object), DICOM ANN or DICOM SEG."""
        out = exports.export(task_id, scan_id, format, caller.scope)
        return Response(out.body, media_type=out.media_type,
                        headers={"Content-Disposition": f'attachment; filename="{_ascii(out.filename)}"'})

    return router


def dashboard_router() -> APIRouter:
    """`GET /` (the page) and `GET /dashboard/{file}` (its script and style); left out of the OpenAPI."""
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        """The dashboard page."""
        return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-cache"})

    @router.get("/dashboard/{name}")
    def static_file(name: str) -> Response:
        """The dashboard's script and style sheet."""
        if name not in STATIC_FILES:
            raise NotFoundError(f"no dashboard file {name!r}")
        return Response(_static(name), media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    return router


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
