"""The FastAPI application (uvicorn locally, Mangum on Lambda)."""

from scanbridge.entrypoints.http.app import create_app

__all__ = ["create_app"]
