"""Task-level progress aggregated from the scans, and the change events live clients receive.

Pure functions over `Task`: the HTTP live routes (SSE, WebSocket) and the MCP tools poll the TaskStore
and hand two snapshots to `changes()`; whatever store holds the task (memory, moto, DynamoDB), the
events are the same.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.task import ScanState, Task

#: share of a task's percent the scans make up; the rest is delivery
SCANS_SHARE = 95.0
_FINISHED = (ScanStatus.SUCCEEDED, ScanStatus.FAILED)


class TaskProgress(BaseModel):
    """How far along a whole task is: percent, a step name, tiles and scans done, an ETA."""

    step: str
    percent: float
    tiles_done: int = 0
    tiles_total: int = 0
    scans_done: int = 0
    scans_total: int = 0
    eta_s: float | None = None


def task_progress(task: Task) -> TaskProgress:
    """The task's progress: the scans' mean percent scaled to 95 %, delivery the rest, 100 % when it ended."""
    scans = list(task.scans.values())
    done = sum(1 for s in scans if s.status in _FINISHED)
    tiles_done = sum(s.progress.tiles_done for s in scans)
    tiles_total = sum(s.progress.tiles_total for s in scans)
    common = {"tiles_done": tiles_done, "tiles_total": tiles_total, "scans_done": done, "scans_total": len(scans)}
    if task.status.is_terminal:
        return TaskProgress(step=task.status.lower(), percent=100.0, eta_s=0.0, **common)
    if task.status == TaskStatus.DELIVERING:
        return TaskProgress(step="delivering", percent=SCANS_SHARE + 2.0, eta_s=None, **common)
    mean = sum(_scan_percent(s) for s in scans) / len(scans) if scans else 0.0
    percent = round(SCANS_SHARE * mean / 100.0, 1)
    if task.status in (TaskStatus.RECEIVED, TaskStatus.QUEUED) and done == 0:
        return TaskProgress(step=task.status.lower(), percent=percent, eta_s=None, **common)
    open_scans = [s for s in scans if s.status not in _FINISHED]
    step = min(open_scans, key=_scan_percent).progress.step if open_scans else "finishing"
    return TaskProgress(step=step, percent=percent, eta_s=_eta(open_scans), **common)


def _scan_percent(scan: ScanState) -> float:
    return 100.0 if scan.status in _FINISHED else max(0.0, min(100.0, scan.progress.percent))


def _eta(open_scans: list[ScanState]) -> float | None:
    """The slowest open scan's ETA (scans run in parallel); None while any open scan has none yet."""
    etas = [s.progress.eta_s for s in open_scans]
    if not etas or any(e is None for e in etas):
        return None
    return max(e for e in etas if e is not None)


def scan_fingerprint(scan: ScanState) -> tuple[Any, ...]:
    """What a live client sees of a scan; an event is sent when it changes."""
    p = scan.progress
    return (scan.status, p.step, p.percent, p.tiles_done, p.tiles_total, scan.error_code)


def status_event(task: Task, previous: TaskStatus | None) -> dict[str, Any]:
    """The event of the task reaching `task.status`."""
    return {"type": "status", "task_id": task.task_id, "status": str(task.status),
            "previous": str(previous) if previous is not None else None, "terminal": task.status.is_terminal,
            "progress": task_progress(task).model_dump(), "error_code": task.error_code,
            "error_message": task.error_message, "updated_at": task.updated_at}


def scan_event(task: Task, scan: ScanState) -> dict[str, Any]:
    """The event of one scan's status, step or percent changing."""
    p = scan.progress
    return {"type": "scan", "task_id": task.task_id, "scan_id": scan.scan_id, "status": str(scan.status),
            "step": p.step, "percent": p.percent, "tiles_done": p.tiles_done, "tiles_total": p.tiles_total,
            "eta_s": p.eta_s, "error_code": scan.error_code, "task_status": str(task.status),
            "task_progress": task_progress(task).model_dump(), "updated_at": task.updated_at}


def changes(previous: Task | None, current: Task) -> list[dict[str, Any]]:
    """The events between two snapshots of a task, in order; the terminal status always comes last.

    With no previous snapshot: the status, then every scan as it is now.
    """
    events: list[dict[str, Any]] = []
    old_scans = previous.scans if previous is not None else {}
    for scan_id, scan in current.scans.items():
        old = old_scans.get(scan_id)
        if old is None or scan_fingerprint(old) != scan_fingerprint(scan):
            events.append(scan_event(current, scan))
    if previous is None or previous.status != current.status:
        status = status_event(current, previous.status if previous is not None else None)
        events = [*events, status] if current.status.is_terminal else [status, *events]
    return events
