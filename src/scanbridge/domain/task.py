"""A task and its scans as scanbridge stores them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scanbridge.domain.status import ScanStatus, TaskStatus, check_transition


def new_job_id() -> str:
    """An id for a task's next job, stored with the task before the job is submitted (local log file name)."""
    return f"job-{uuid.uuid4()}"


def utcnow() -> str:
    """The current UTC time as an ISO-8601 string (sortable)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Progress(BaseModel):
    """How far along a scan (or a task) is."""

    step: str = "pending"
    percent: float = 0.0
    tiles_done: int = 0
    tiles_total: int = 0
    eta_s: float | None = None


class ScanState(BaseModel):
    """One scan of a task: where its files are and how it went."""

    scan_id: str
    urls: list[str]
    stain: dict[str, Any] | None = None
    status: ScanStatus = ScanStatus.PENDING
    error_code: str | None = None
    error_message: str | None = None
    progress: Progress = Field(default_factory=Progress)
    started_at: str | None = None
    finished_at: str | None = None


class Delivery(BaseModel):
    """The record of posting results to the platform."""

    status_code: int | None = None
    attempts: int = 0
    delivered_at: str | None = None
    last_error: str | None = None
    response_excerpt: str | None = None
    duration_s: float | None = None
    delivery_id: str | None = None  # the Idempotency-Key / webhook-id of every POST of these results
    first_attempt_at: float | None = None  # epoch s: the retry window starts here
    next_attempt_at: float | None = None  # epoch s: the next try is due (while DELIVERING: also the claim's lease)
    skipped: str | None = None  # why nothing was posted (e.g. "no platform configured": no SCANBRIDGE_PLATFORM_URL)


class Task(BaseModel):
    """A platform task as scanbridge tracks it (the token only ever as ciphertext)."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    company_id: str = ""
    case_id: str | None = None
    status: TaskStatus = TaskStatus.RECEIVED
    model: str | None = None
    scans: dict[str, ScanState] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=utcnow)
    updated_at: str = Field(default_factory=utcnow)
    token_ciphertext: str | None = Field(None, repr=False)
    token_exp: int | None = None
    job_id: str | None = None
    heartbeat_at: float | None = None
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    delivery: Delivery = Field(default_factory=Delivery)
    version: int = 0

    def moved_to(self, status: TaskStatus, **changes: Any) -> Task:
        """A copy in `status` (checked against the state machine) with `changes` applied."""
        check_transition(self.status, status)
        return self.model_copy(update={"status": status, "updated_at": utcnow(), **changes})

    def public_view(self) -> dict[str, Any]:
        """What the REST API shows: everything but the token."""
        data = self.model_dump(mode="json", exclude={"token_ciphertext", "version"})
        data["has_token"] = self.token_ciphertext is not None
        from scanbridge.domain.progress import task_progress  # progress.py imports this module

        data["progress"] = task_progress(self).model_dump()
        return data
