"""`GET /tasks/{id}/logs`: the worker's own log lines for a task (local worker log files)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from scanbridge.entrypoints.http.deps import LiveTenant, Queries, SettingsDep
from scanbridge.services.worker_logs import read_task_logs

router = APIRouter(tags=["live"])


@router.get("/tasks/{task_id}/logs")
def task_logs(task_id: str, caller: LiveTenant, queries: Queries, settings: SettingsDep,
              limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
              level: Annotated[str | None, Query(pattern="^(?i:debug|info|warning|error|critical)$")] = None
              ) -> dict[str, Any]:
    """The worker's own log lines for the task (local worker log files; on AWS: CloudWatch, not read here)."""
    task = queries.task(task_id, caller.scope)
    return read_task_logs(task, settings.data_dir / "logs", launcher=settings.launcher, limit=limit, level=level)
