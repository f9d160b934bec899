"""The API Lambda: the FastAPI app through Mangum, built once per container."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from mangum import Mangum

from scanbridge.bootstrap import bootstrap
from scanbridge.entrypoints.http.app import create_app

logger = Logger(service="scanbridge-api")
_handler: Mangum | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway (HTTP API or REST) event -> FastAPI."""
    global _handler
    if _handler is None:
        _handler = Mangum(create_app(bootstrap()), lifespan="off")
    response: dict[str, Any] = _handler(event, context)
    return response
