"""The dashboard: `GET /` (plain HTML + vanilla JS from `static/`) and its script and style sheet.

The dashboard is a static page that polls the public REST routes (`/health`, `/tasks`, `/tasks/{id}`,
`/tasks/{id}/results`, `/tasks/{id}/artifacts`) once a second; it holds no state on the server and
sends the API key a person types in (kept in the browser's localStorage) like any other client.
Left out of the OpenAPI.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from scanbridge.domain.errors import NotFoundError

STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                "index.html": "text/html; charset=utf-8"}

router = APIRouter(include_in_schema=False)


def _static(name: str) -> bytes:
    return resources.files("scanbridge.entrypoints.http").joinpath("static", name).read_bytes()


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
