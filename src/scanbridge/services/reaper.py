"""Heartbeats and the reaper: no task stays DOWNLOADING/RUNNING after its worker is gone.

The worker beats every SCANBRIDGE_HEARTBEAT_INTERVAL_S; the reaper ends, as WORKER_FAILED (and tells
the platform), any active task whose last beat is older than SCANBRIDGE_STALE_AFTER_S and whose job the
launcher does not know as alive. On AWS the Batch state-change event does this job; the reaper is the
belt to its braces.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Self

from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task
from scanbridge.ports import TaskStore
from scanbridge.services.common import update_task
from scanbridge.services.delivery import DeliveryService

log = logging.getLogger(__name__)

ACTIVE = (TaskStatus.DOWNLOADING, TaskStatus.RUNNING)


def beat(tasks: TaskStore, task_id: str, clock: Callable[[], float] = time.time) -> None:
    """Record that the worker of `task_id` is alive."""
    now = clock()
    update_task(tasks, task_id, lambda t: None if t.status.is_terminal else t.model_copy(update={"heartbeat_at": now}))


class Heartbeat:
    """A daemon thread that beats for one task until stopped."""

    def __init__(self, tasks: TaskStore, task_id: str, interval_s: float) -> None:
        self._tasks, self._task_id, self._interval = tasks, task_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                beat(self._tasks, self._task_id)
            except Exception:  # noqa: BLE001 - a missed beat is not worth killing the worker
                log.warning("heartbeat failed", extra={"task_id": self._task_id})
            self._stop.wait(self._interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Reaper:
    """Finds active tasks whose worker stopped beating and fails them through the delivery service."""

    def __init__(self, tasks: TaskStore, delivery: DeliveryService, *, stale_after_s: float,
                 is_alive: Callable[[str], bool] = lambda _job: False,
                 clock: Callable[[], float] = time.time) -> None:
        self._tasks = tasks
        self._delivery = delivery
        self._stale = stale_after_s
        self._is_alive = is_alive
        self._clock = clock

    def stale(self, task: Task) -> bool:
        """Whether `task` looks abandoned."""
        if task.status not in ACTIVE:
            return False
        last = task.heartbeat_at
        if last is None:
            return False
        return self._clock() - last > self._stale and not (task.job_id and self._is_alive(task.job_id))

    def reap(self) -> list[str]:
        """End every abandoned task; returns their ids."""
        reaped: list[str] = []
        for status in ACTIVE:
            cursor: str | None = None
            while True:
                page = self._tasks.list(status=status, limit=100, cursor=cursor)
                for task in page.tasks:
                    if self.stale(task):
                        log.warning("worker stopped beating; failing the task", extra={"task_id": task.task_id})
                        self._delivery.on_job_finished(task.task_id, False, "the worker stopped sending heartbeats")
                        reaped.append(task.task_id)
                cursor = page.next_cursor
                if cursor is None:
                    break
        return reaped

    def run_every(self, interval_s: float, stop: threading.Event) -> None:
        """Reap until `stop` is set (a daemon thread in local mode)."""
        while not stop.wait(interval_s):
            try:
                self.reap()
            except Exception:
                log.exception("reaper pass failed")
