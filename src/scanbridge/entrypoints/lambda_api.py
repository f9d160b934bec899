"""The API Lambda: the FastAPI app through Mangum, built once per container."""

from __future__ import annotations

import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import utils
from aws_lambda_powertools.metrics import MetricUnit
from mangum import Mangum

from scanbridge.bootstrap import bootstrap
from scanbridge.entrypoints.http.app import create_app
from scanbridge.services.capabilities import LAMBDA_UNAVAILABLE

logger = Logger(service="scanbridge-api")
metrics = Metrics(namespace="ScanBridge", service="scanbridge-api")
logging.getLogger("scanbridge")
utils.copy_config_to_registered_loggers(source_logger=logger, include={"scanbridge"})
_handler: Mangum | None = None


@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway (HTTP API or REST) event -> FastAPI."""
    global _handler
    if _handler is None:
        # routes that need scanbridge[worker] or [local] answer 501 ROUTE_NOT_AVAILABLE here, saying where they run
        _handler = Mangum(create_app(bootstrap(), unavailable=LAMBDA_UNAVAILABLE), lifespan="off")
    response: dict[str, Any] = _handler(event, context)
    status = int(response.get("statusCode", 500))
    metrics.add_metric(name=f"Http{status // 100}xx", unit=MetricUnit.Count, value=1)
    return response
