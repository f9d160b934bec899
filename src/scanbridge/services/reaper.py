"""Heartbeats and the reaper: no task stays DOWNLOADING/RUNNING after its worker is gone.

The worker beats every SCANBRIDGE_HEARTBEAT_INTERVAL_S; the reaper ends any active task whose last sign
of life is older than SCANBRIDGE_STALE_AFTER_S, whether or not its process exists (a hung or SIGSTOPped
worker is killed and retried by the launcher; a gone one is failed as WORKER_FAILED and the platform is
told), and any task past SCANBRIDGE_TASK_TIMEOUT_S. On AWS the Batch state-change event and the job
definition's Timeout do this job; the reaper is the belt to their braces. Each pass also starts the
deliveries that are due (`DeliveryService.deliver_due`): scheduled retries, and DELIVERING tasks whose
results step died mid-try (its lease ran out).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Self

from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task
from scanbridge.ports import JobLauncher, TaskStore
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


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


class Reaper:
    """Ends what is stuck: active tasks silent past `stale_after_s`, and tasks past their deadline.

    A silent task whose worker process still exists (hung, or SIGSTOPped) is killed through `launcher`
    and retried by it while attempts are left; one whose process is gone is failed as WORKER_FAILED
    through the delivery service (the platform is told once). A task active for longer than
    `task_timeout_s` since its first scan started is killed without retry, or failed the same way.
    A launcher with no process on this host (Batch, the in-memory one) knows no live job, so there a silent
    task is failed.
    """

    def __init__(self, tasks: TaskStore, delivery: DeliveryService, *, stale_after_s: float,
                 launcher: JobLauncher, task_timeout_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._tasks = tasks
        self._delivery = delivery
        self._stale = stale_after_s
        self._launcher = launcher
        self._timeout = task_timeout_s if task_timeout_s and task_timeout_s > 0 else None
        self._clock = clock

    def stale(self, task: Task) -> bool:
        """Whether `task` is active but nothing has shown life for longer than `stale_after_s`."""
        if task.status not in ACTIVE:
            return False
        signs = [task.heartbeat_at]
        if task.job_id:
            signs.append(self._launcher.last_seen(task.job_id))
        known = [s for s in signs if s is not None]
        return bool(known) and self._clock() - max(known) > self._stale

    def past_deadline(self, task: Task) -> bool:
        """Whether `task` is active for longer than SCANBRIDGE_TASK_TIMEOUT_S since its first scan started."""
        if self._timeout is None or task.status not in ACTIVE:
            return False
        starts = [t for t in (_epoch(s.started_at) for s in task.scans.values()) if t is not None]
        return bool(starts) and self._clock() - min(starts) > self._timeout

    def _end(self, task: Task, reason: str, *, retry: bool) -> None:
        live = self._launcher
        if task.job_id and live.is_alive(task.job_id) and live.kill(task.job_id, reason, retry=retry):
            return  # the launcher reports the job's end (or retries it)
        self._delivery.on_job_finished(task.task_id, False, reason)

    def reap(self) -> list[str]:
        """End every abandoned task; returns their ids."""
        reaped: list[str] = []
        for status in ACTIVE:
            cursor: str | None = None
            while True:
                page = self._tasks.list(status=status, limit=100, cursor=cursor)
                for task in page.tasks:
                    if self.past_deadline(task):
                        log.warning("task ran past its deadline; ending it", extra={"task_id": task.task_id})
                        self._end(task, f"the task ran past its deadline (SCANBRIDGE_TASK_TIMEOUT_S="
                                        f"{self._timeout:g} s)", retry=False)
                        reaped.append(task.task_id)
                    elif self.stale(task):
                        log.warning("worker stopped beating; ending it", extra={"task_id": task.task_id})
                        self._end(task, f"the worker sent no heartbeat for {self._stale:g} s", retry=True)
                        reaped.append(task.task_id)
                cursor = page.next_cursor
                if cursor is None:
                    break
        try:  # DELIVERING tasks: scheduled retries that are due, and tries whose results step died (lease over)
            self._delivery.deliver_due()
        except Exception:
            log.exception("delivery pass failed")
        return reaped

    def run_every(self, interval_s: float, stop: threading.Event) -> None:
        """Reap until `stop` is set (a daemon thread in local mode)."""
        while not stop.wait(interval_s):
            try:
                self.reap()
            except Exception:
                log.exception("reaper pass failed")
