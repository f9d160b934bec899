"""Control: cancel a task (stop its job, tell the platform) and redeliver failed deliveries."""

from __future__ import annotations

import logging

from scanbridge.domain.errors import ConflictError
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.task import Task, utcnow
from scanbridge.ports import JobLauncher, TaskStore
from scanbridge.services.common import update_task
from scanbridge.services.delivery import DeliveryService
from scanbridge.services.queries import QueryService

log = logging.getLogger(__name__)

CANCELLED_CODE = "TASK_CANCELLED"


class ControlService:
    """Operator actions on a task.

    >>> control.cancel("task-1", company_id="c1")  # Task CANCELLED, job stopped, platform told
    """

    def __init__(self, tasks: TaskStore, launcher: JobLauncher, delivery: DeliveryService,
                 queries: QueryService) -> None:
        self._tasks = tasks
        self._launcher = launcher
        self._delivery = delivery
        self._queries = queries

    def cancel(self, task_id: str, company_id: str | None = None, reason: str = "cancelled by a user") -> Task:
        """Move the task to CANCELLED, stop its job, and post the platform a result saying so."""
        self._queries.task(task_id, company_id)
        moved: list[bool] = []

        def change(task: Task) -> Task | None:
            moved.clear()
            if task.status == TaskStatus.CANCELLED:
                return None
            if task.status.is_terminal:
                raise ConflictError(f"task {task_id!r} already ended as {task.status}",
                                    details={"status": str(task.status)})
            scans = {sid: (s if s.status in (ScanStatus.SUCCEEDED, ScanStatus.FAILED) else s.model_copy(
                update={"status": ScanStatus.FAILED, "error_code": CANCELLED_CODE, "error_message": reason,
                        "finished_at": utcnow()})) for sid, s in task.scans.items()}
            moved.append(True)
            return task.moved_to(TaskStatus.CANCELLED, scans=scans, error_code=CANCELLED_CODE, error_message=reason)

        task = update_task(self._tasks, task_id, change)
        if not moved:
            return task
        if task.job_id:
            try:
                self._launcher.cancel(task.job_id, reason)
            except Exception:
                log.exception("could not stop the job", extra={"task_id": task_id})
        log.info("task cancelled", extra={"task_id": task_id})
        return self._delivery.deliver(task)

    def redeliver(self, task_id: str) -> Task:
        """Post the results of a DELIVERY_FAILED task again."""
        return self._delivery.redeliver(task_id)
