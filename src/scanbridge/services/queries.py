"""Queries: what REST and MCP clients read (tasks, results, scan metadata), scoped to a tenant."""

from __future__ import annotations

import json
from typing import Any

from scanbridge.domain.errors import NotFoundError, ResultsNotReadyError, TaskNotFoundError
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task
from scanbridge.ports import ArtifactStore, TaskPage, TaskStore
from scanbridge.services.delivery import posted_key
from scanbridge.services.processing import scan_metadata_key


class QueryService:
    """Read-only views of tasks; a task of another tenant is reported as not found."""

    def __init__(self, tasks: TaskStore, artifacts: ArtifactStore) -> None:
        self._tasks = tasks
        self._artifacts = artifacts

    def task(self, task_id: str, company_id: str | None = None) -> Task:
        """The task, if visible to `company_id` (None sees all)."""
        task = self._tasks.get(task_id)
        if task is None or (company_id is not None and task.company_id != company_id):
            raise TaskNotFoundError(f"task {task_id!r} not found")
        return task

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
