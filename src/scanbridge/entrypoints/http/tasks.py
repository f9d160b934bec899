"""Tasks: list, show, results, a scan's metadata, cancel; redeliver for the admin."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from scanbridge.domain.status import TaskStatus
from scanbridge.entrypoints.http.deps import Admin, Control, Queries, Tenant

router = APIRouter()


@router.get("/tasks", tags=["tasks"])
def list_tasks(caller: Tenant, queries: Queries, status: TaskStatus | None = None, company_id: str | None = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50, cursor: str | None = None) -> dict[str, Any]:
    """Tasks, newest first, filtered by status and company; `next_cursor` pages on."""
    if caller.scope is not None:
        if company_id not in (None, caller.scope):
            return {"tasks": [], "next_cursor": None}
        company_id = caller.scope
    page = queries.tasks(status=status, company_id=company_id, limit=limit, cursor=cursor)
    return {"tasks": [t.public_view() for t in page.tasks], "next_cursor": page.next_cursor}


@router.get("/tasks/{task_id}", tags=["tasks"])
def get_task(task_id: str, caller: Tenant, queries: Queries) -> dict[str, Any]:
    """A task: status, per-scan status and progress, timestamps, error, delivery; `queue` while QUEUED."""
    return queries.task_view(task_id, caller.scope)


@router.get("/tasks/{task_id}/results", tags=["tasks"])
def get_results(task_id: str, caller: Tenant, queries: Queries) -> dict[str, Any]:
    """Exactly the body that was posted to the platform."""
    return queries.results(task_id, caller.scope)


@router.get("/tasks/{task_id}/scans/{scan_id}/metadata", tags=["tasks"])
def scan_metadata(task_id: str, scan_id: str, caller: Tenant, queries: Queries) -> dict[str, Any]:
    """What the reader found in the scan: dimensions, levels, mpp, vendor, format."""
    return queries.scan_metadata(task_id, scan_id, caller.scope)


@router.post("/tasks/{task_id}/cancel", tags=["tasks"])
def cancel_task(task_id: str, caller: Tenant, control: Control) -> dict[str, Any]:
    """Stop the task's work within seconds; the task becomes CANCELLED and the platform is told."""
    return control.cancel(task_id, caller.scope).public_view()


@router.post("/tasks/{task_id}/redeliver", tags=["admin"])
def redeliver_task(task_id: str, _admin: Admin, control: Control) -> dict[str, Any]:
    """Admin: post the results of a DELIVERY_FAILED task again."""
    return control.redeliver(task_id).public_view()
