"""Queries: what REST and MCP clients read (tasks, results, scan metadata), scoped to a tenant."""

from __future__ import annotations

import json
from typing import Any

from scanbridge.domain.errors import NotFoundError, ResultsNotReadyError, TaskNotFoundError
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.storage_keys import posted_key, scan_metadata_key
from scanbridge.domain.task import Task
from scanbridge.domain.webhook import is_valid_id
from scanbridge.ports import ArtifactStore, JobLauncher, TaskPage, TaskStore

#: QUEUED tasks counted at most when the launcher has no queue of its own (AWS): past it, "at least"
MAX_COUNTED_QUEUED = 1000


class QueryService:
    """Read-only views of tasks; a task of another tenant is reported as not found.

    The launcher tells a QUEUED task's position and ETA when it knows its own queue (locally);
    otherwise (Batch) the position is derived from the QUEUED tasks created before this one and the
    ETA is unknown.
    """

    def __init__(self, tasks: TaskStore, artifacts: ArtifactStore, launcher: JobLauncher) -> None:
        self._tasks = tasks
        self._artifacts = artifacts
        self._launcher = launcher

    def task(self, task_id: str, company_id: str | None = None) -> Task:
        """The task, if visible to `company_id` (None sees all); an id intake never accepts is not looked up."""
        task = self._tasks.get(task_id) if is_valid_id(task_id) else None  # e.g. "" or 5,000 chars: DynamoDB refuses
        if task is None or (company_id is not None and task.company_id != company_id):
            raise TaskNotFoundError(f"task {task_id!r} not found")
        return task

    def task_view(self, task_id: str, company_id: str | None = None) -> dict[str, Any]:
        """What GET /tasks/{id} shows: the task's public view plus `queue` (position, ETA) while it is QUEUED."""
        task = self.task(task_id, company_id)
        return {**task.public_view(), "queue": self.queue_info(task)}

    def queue_info(self, task: Task) -> dict[str, Any] | None:
        """Where a QUEUED task waits: `{position, ahead, eta_s, basis}` (None once it has started).

        Example: `{"position": 3, "ahead": 2, "eta_s": 41.5, "basis": "launcher"}` locally;
        `{"position": 3, "ahead": 2, "eta_s": None, "basis": "queued_tasks_created_before"}` on AWS.
        """
        if task.status != TaskStatus.QUEUED:
            return None
        position = self._launcher.queue_position(task.job_id) if task.job_id else None
        if position == 0:  # not in the launcher's queue any more: its worker is starting
            return {"position": 0, "ahead": 0, "eta_s": 0.0, "basis": "launcher"}
        if position is not None and task.job_id:
            return {"position": position, "ahead": position - 1, "eta_s": self._launcher.queue_eta_s(task.job_id),
                    "basis": "launcher"}
        ahead, complete = self._queued_before(task)
        return {"position": ahead + 1, "ahead": ahead, "eta_s": None,
                "basis": "queued_tasks_created_before" if complete else "queued_tasks_created_before_at_least"}

    def _queued_before(self, task: Task) -> tuple[int, bool]:
        """How many QUEUED tasks were created before `task` (and whether all were counted)."""
        mine = (task.created_at, task.task_id)
        ahead = seen = 0
        cursor: str | None = None
        while seen < MAX_COUNTED_QUEUED:
            page = self._tasks.list(status=TaskStatus.QUEUED, limit=200, cursor=cursor)
            seen += len(page.tasks)
            ahead += sum(1 for t in page.tasks if (t.created_at, t.task_id) < mine)
            cursor = page.next_cursor
            if cursor is None:
                return ahead, True
        return ahead, False

    def tasks(self, *, status: TaskStatus | None, company_id: str | None, limit: int,
              cursor: str | None) -> TaskPage:
        """A page of tasks, newest first."""
        return self._tasks.list(status=status, company_id=company_id, limit=limit, cursor=cursor)

    def results(self, task_id: str, company_id: str | None = None) -> dict[str, Any]:
        """Exactly the body posted to the platform."""
        self.task(task_id, company_id)
        raw = self._artifacts.get(posted_key(task_id))
        if raw is None:
            raise ResultsNotReadyError(f"task {task_id!r} has not posted results yet")
        body: dict[str, Any] = json.loads(raw)
        return body

    def scan_metadata(self, task_id: str, scan_id: str, company_id: str | None = None) -> dict[str, Any]:
        """What the reader found in a scan (dimensions, levels, mpp, vendor...)."""
        task = self.task(task_id, company_id)
        if scan_id not in task.scans:
            raise NotFoundError(f"task {task_id!r} has no scan {scan_id!r}")
        raw = self._artifacts.get(scan_metadata_key(task_id, scan_id))
        if raw is None:
            raise ResultsNotReadyError(f"scan {scan_id!r} has not been opened yet")
        meta: dict[str, Any] = json.loads(raw)
        meta["stain"] = task.scans[scan_id].stain
        return meta
