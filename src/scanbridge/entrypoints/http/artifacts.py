"""A task's artifacts (list, one file) and a scan's results as a file (`export?format=`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from scanbridge.entrypoints.http.deps import Downloads, Exports, SettingsDep, Tenant

ExportFormat = Literal["geojson", "csv", "dicom-ann", "dicom-seg", "dicom-source"]

router = APIRouter(tags=["tasks"])


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)


@router.get("/tasks/{task_id}/artifacts")
def list_artifacts(task_id: str, caller: Tenant, request: Request, downloads: Downloads,
                   settings: SettingsDep) -> dict[str, Any]:
    """The task's per-scan artifacts (overlay PNG, label mask, objects CSV, cell crops, DICOM) with links."""
    base_url = (settings.public_url or "").rstrip("/") or str(request.base_url).rstrip("/")
    found = downloads.list(task_id, caller.scope, base_url=base_url)
    return {"task_id": task_id, "artifacts": [a.to_json() for a in found]}


@router.get("/tasks/{task_id}/artifacts/{scan_id}/{file}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_artifact(task_id: str, scan_id: str, file: str, caller: Tenant, downloads: Downloads) -> Response:
    """One artifact's bytes, served by the API from the artifact store."""
    body, media = downloads.get(task_id, scan_id, file, caller.scope)
    return Response(body, media_type=media, headers={
        "Content-Disposition": f'inline; filename="{_ascii(file)}"', "Cache-Control": "private, max-age=60"})


@router.get("/tasks/{task_id}/scans/{scan_id}/export", response_class=Response,
            responses={200: {"content": {"application/geo+json": {}, "text/csv": {}, "application/dicom": {}}}})
def export_scan(task_id: str, scan_id: str, caller: Tenant, exports: Exports,
                format: Annotated[ExportFormat, Query()] = "geojson") -> Response:
    """One scan's results as GeoJSON, CSV (per object), DICOM ANN or DICOM SEG, sent in chunks with its length."""
    out = exports.export(task_id, scan_id, format, caller.scope)
    return StreamingResponse(out.chunks(), media_type=out.media_type, headers={
        "Content-Disposition": f'attachment; filename="{_ascii(out.filename)}"', "Content-Length": str(out.size)})
