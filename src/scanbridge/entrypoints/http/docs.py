"""`/docs` (Swagger UI) and `/redoc` that work offline: their scripts are served by this app.

The assets come from the `fastapi-offline` package (Swagger UI and ReDoc bundles, installed with the
`[local]` extra); where it is not installed (the API Lambda layer, whose users' browsers reach the CDN),
the pages load FastAPI's default CDN assets.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"


def offline_assets() -> Path | None:
    """The folder holding swagger-ui-bundle.js, swagger-ui.css and redoc.standalone.js, or None."""
    spec = find_spec("fastapi_offline")
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "static"
    wanted = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
    return folder if all((folder / name).is_file() for name in wanted) else None


def mount_docs(app: FastAPI) -> None:
    """Add /docs, /docs/oauth2-redirect and /redoc (create the app with docs_url=None, redoc_url=None)."""
    assets = offline_assets()
    if assets is not None:
        app.mount(ASSETS_PATH, StaticFiles(directory=assets), name="docs-assets")
    title = f"{app.title} - API"

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        if assets is None:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=title,
                                       oauth2_redirect_url="/docs/oauth2-redirect")
        return get_swagger_ui_html(openapi_url="/openapi.json", title=title,
                                   oauth2_redirect_url="/docs/oauth2-redirect",
                                   swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_PATH}/favicon.png")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        if assets is None:
            return get_redoc_html(openapi_url="/openapi.json", title=title)
        return get_redoc_html(openapi_url="/openapi.json", title=title, with_google_fonts=False,
                              redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_PATH}/favicon.png")
