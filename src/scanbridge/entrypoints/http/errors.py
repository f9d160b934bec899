"""The HTTP entry point's one table from error type to status, and the uniform error body."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scanbridge.domain import errors as e
from scanbridge.entrypoints.webhook_common import STATUS, error_body, status_for

__all__ = ["STATUS", "error_body", "install", "status_for"]

def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at `path` (Starlette's 405 names only the first matching route's)."""
    from fastapi import routing
    from starlette.routing import compile_path

    methods: set[str] = set()
    for route in routing.iter_route_contexts(app.routes):
        template = route.path_format
        if template and route.methods and compile_path(template)[0].match(path):
            methods |= set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the uniform body."""

    @app.exception_handler(e.ScanbridgeError)
    async def _scanbridge(_: Request, exc: e.ScanbridgeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, e.AuthError) else None
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=status_for(exc),
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = {"errors": [{"loc": list(err.get("loc", [])), "msg": err.get("msg", "")} for err in exc.errors()]}
        return JSONResponse(error_body("VALIDATION_ERROR", "the request is not valid", details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}.get(exc.status_code, "HTTP_ERROR")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Allow: every method of the path, not only the first route's
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path)) or headers.get("Allow", "")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RecursionError)
    async def _too_deep(_: Request, exc: RecursionError) -> JSONResponse:
        return JSONResponse(error_body("VALIDATION_ERROR", "the request nests too deeply"), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body("INTERNAL_ERROR", "an unexpected error occurred"), status_code=500)
