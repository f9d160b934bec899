"""The webhook Lambda: `POST /webhook` alone, on Powertools' lean HTTP resolver instead of FastAPI.

The acknowledgement path is the one whose cold start the platform waits on, so it gets a function of
its own that imports no web framework (the REST API stays FastAPI in lambda_api). Both call the same
IntakeService, signature check, parser and error table (entrypoints/webhook_common.py).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import utils
from aws_lambda_powertools.metrics import MetricUnit

from scanbridge.bootstrap import Container, bootstrap
from scanbridge.domain.errors import AuthError, ScanbridgeError
from scanbridge.entrypoints.webhook_common import (
    check_body_size,
    error_body,
    parse_webhook,
    status_for,
    verify_webhook,
)

logger = Logger(service="scanbridge-webhook")
metrics = Metrics(namespace="ScanBridge", service="scanbridge-webhook")
logging.getLogger("scanbridge")
utils.copy_config_to_registered_loggers(source_logger=logger, include={"scanbridge"})
app = APIGatewayHttpResolver()
_container: Container | None = None


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body), headers=headers)


def container() -> Container:
    """The container, built once per Lambda container."""
    global _container
    if _container is None:
        _container = bootstrap()
    return _container


@app.post("/webhook")
def webhook() -> Response:
    """Accept a platform task: 202 with {task_id, status, created}."""
    c = container()
    event = app.current_event
    raw = event.body or ""
    body = base64.b64decode(raw) if event.is_base64_encoded else raw.encode()
    check_body_size(len(body), c.settings.max_body_bytes)
    verify_webhook(c.settings, body, dict(event.headers or {}))
    accepted = c.intake.accept(parse_webhook(body))
    metrics.add_metric(name="WebhookAccepted" if accepted.created else "WebhookDuplicate",
                       unit=MetricUnit.Count, value=1)
    return _json(202, {"task_id": accepted.task.task_id, "status": str(accepted.task.status),
                       "created": accepted.created})


@app.exception_handler(ScanbridgeError)
def _coded(exc: ScanbridgeError) -> Response:
    metrics.add_metric(name="WebhookRefused", unit=MetricUnit.Count, value=1)
    logger.info("webhook refused", extra={"error_code": exc.code})  # the code only: a message may quote the body
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
    return _json(status_for(exc), error_body(exc.code, exc.message, exc.details), headers)


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error in the webhook handler")
    metrics.add_metric(name="WebhookErrors", unit=MetricUnit.Count, value=1)
    return _json(500, error_body("INTERNAL_ERROR", "an unexpected error occurred"))


@app.not_found
def _not_found(_exc: Exception) -> Response:
    metrics.add_metric(name="WebhookRefused", unit=MetricUnit.Count, value=1)
    return _json(404, error_body("NOT_FOUND", "this function serves POST /webhook only"))


@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway HTTP API event for POST /webhook -> 202 / 4xx with the uniform error body."""
    response: dict[str, Any] = app.resolve(event, context)
    return response
