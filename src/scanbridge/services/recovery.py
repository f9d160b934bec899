"""After a restart of the local stack: nothing that was in flight is left hanging.

The launcher's queue and its workers died with the previous `scanbridge serve`; the tasks did not
(their store is persisted). Each task still QUEUED (or RECEIVED: acknowledged, its submission failed)
is submitted again; each one DOWNLOADING or RUNNING
gets a new worker (it resumes: finished scans are kept, as for a retried worker) unless it has used
its attempts, in which case it ends FAILED with WORKER_FAILED and the platform is told once (the
delivery claim is conditional). Tasks already terminal are left alone: nothing is posted again.
DELIVERING belongs to the reaper's delivery rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task, new_job_id, utcnow
from scanbridge.ports import JobLauncher, TaskStore
from scanbridge.services.common import update_task
from scanbridge.services.delivery import DeliveryService

log = logging.getLogger(__name__)

IN_FLIGHT = (TaskStatus.QUEUED, TaskStatus.DOWNLOADING, TaskStatus.RUNNING)
#: acknowledged, but its job submission failed: a restart submits it (as a redelivery would)
UNSUBMITTED = (TaskStatus.RECEIVED,)


@dataclass
class Recovered:
    """What `recover` did."""

    resubmitted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the start-up log."""
        return f"after restart: {len(self.resubmitted)} task(s) resumed, {len(self.failed)} failed (no attempts left)"


def tasks_in(tasks: TaskStore, statuses: tuple[TaskStatus, ...]) -> list[Task]:
    """Every task in one of `statuses` (all pages)."""
    found: list[Task] = []
    for status in statuses:
        cursor: str | None = None
        while True:
            page = tasks.list(status=status, limit=100, cursor=cursor)
            found.extend(page.tasks)
            cursor = page.next_cursor
            if cursor is None:
                break
    return found


def recover(tasks: TaskStore, launcher: JobLauncher, delivery: DeliveryService, *, max_attempts: int) -> Recovered:
    """Resume (or, past `max_attempts` job starts, fail as WORKER_FAILED) every task left in flight, oldest first.

    Example: after SIGKILL of the whole stack with task A QUEUED and B RUNNING (attempt 1 of 2), both
    get a worker again; B is on its second attempt.
    """
    out = Recovered()
    for task in sorted(tasks_in(tasks, IN_FLIGHT + UNSUBMITTED), key=lambda t: (t.created_at, t.task_id)):
        started = task.status not in (TaskStatus.QUEUED, TaskStatus.RECEIVED)
        if started and task.attempts >= max_attempts:
            log.warning("task was in flight when the stack stopped and has no attempts left; failing it",
                        extra={"task_id": task.task_id})
            # the tries run on the delivery service's threads: start-up does not wait for the platform
            delivery.on_job_finished_later(task.task_id, False,
                                           "the worker was stopped with the local stack and has no attempts left")
            out.failed.append(task.task_id)
            continue

        def again(t: Task, started: bool = started) -> Task | None:
            if t.status in UNSUBMITTED:
                return t.moved_to(TaskStatus.QUEUED, attempts=t.attempts + 1, job_id=new_job_id())
            if t.status not in IN_FLIGHT:
                return None
            return t.model_copy(update={"attempts": t.attempts + (1 if started else 0),
                                        "job_id": t.job_id or new_job_id(), "updated_at": utcnow()})

        current = update_task(tasks, task.task_id, again)
        if current.status not in IN_FLIGHT or current.job_id is None:
            continue
        launcher.submit(current.task_id, max(1, len(current.scans)), job_id=current.job_id)
        log.info("task resumed after a restart", extra={"task_id": current.task_id})
        out.resubmitted.append(current.task_id)
    return out


def stopped_cleanly(tasks: TaskStore, task_ids: list[str]) -> None:
    """A clean stop (Ctrl-C, SIGTERM) interrupted these tasks' workers: give back the attempt the next
    start's recovery will count (until then `attempts` reads one less), so stopping the stack never uses
    up a task's attempts."""
    for task_id in task_ids:
        try:
            update_task(tasks, task_id, lambda t: t.model_copy(update={"attempts": max(0, t.attempts - 1)})
                        if t.status in IN_FLIGHT and t.status != TaskStatus.QUEUED else None)
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.warning("could not record the clean stop", extra={"task_id": task_id})
