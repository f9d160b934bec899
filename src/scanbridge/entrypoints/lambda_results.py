"""The results Lambda: a Batch "Job State Change" event -> post the task's results; the retry schedule's
event (`{"scanbridge": "deliver_due"}`, events/results_retry_due.json) -> the deliveries that are due."""

from __future__ import annotations

import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import utils
from aws_lambda_powertools.metrics import MetricUnit

from scanbridge.bootstrap import Container, bootstrap

logger = Logger(service="scanbridge-results")
metrics = Metrics(namespace="ScanBridge", service="scanbridge-results")
logging.getLogger("scanbridge")
utils.copy_config_to_registered_loggers(source_logger=logger, include={"scanbridge"})
_container: Container | None = None


def parse_event(event: dict[str, Any]) -> tuple[str, bool, str | None]:
    """task_id, whether the job succeeded, and the reason from a Batch state-change event."""
    detail = event.get("detail") or {}
    task_id = (detail.get("parameters") or {}).get("task_id")
    if not task_id:
        raise ValueError("the Batch event carries no task_id parameter")
    status = detail.get("status")
    return str(task_id), status == "SUCCEEDED", detail.get("statusReason")


@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Deliver the results of the job's task; returns the task's new status."""
    global _container
    if _container is None:
        _container = bootstrap()
    if event.get("scanbridge") == "deliver_due":  # the retry schedule (EventBridge Scheduler, every minute)
        due = _container.delivery.deliver_due(wait=True)
        metrics.add_metric(name="DeliveryRetries", unit=MetricUnit.Count, value=len(due))
        return {"retried": due}
    if "index" in ((event.get("detail") or {}).get("arrayProperties") or {}):
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return {"ignored": "array child; the parent job's event delivers the task"}
    task_id, succeeded, reason = parse_event(event)
    logger.append_keys(task_id=task_id)
    task = _container.delivery.on_job_finished(task_id, succeeded, reason)
    metrics.add_metric(name=f"Task{str(task.status).title().replace('_', '')}", unit=MetricUnit.Count, value=1)
    return {"task_id": task.task_id, "status": str(task.status)}
