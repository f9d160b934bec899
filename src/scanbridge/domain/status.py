"""The task lifecycle: one status enum and the transitions it allows."""

from __future__ import annotations

from enum import StrEnum

from scanbridge.domain.errors import InvalidTransitionError


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    RECEIVED = "RECEIVED"
    QUEUED = "QUEUED"
    DOWNLOADING = "DOWNLOADING"
    RUNNING = "RUNNING"
    DELIVERING = "DELIVERING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    DELIVERY_FAILED = "DELIVERY_FAILED"

    @property
    def is_terminal(self) -> bool:
        """True when nothing more will happen to the task by itself."""
        return self in TERMINAL


class ScanStatus(StrEnum):
    """Where one scan of a task is."""

    PENDING = "PENDING"
    DOWNLOADING = "DOWNLOADING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED,
                      TaskStatus.DELIVERY_FAILED})

_ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.RECEIVED: frozenset({TaskStatus.QUEUED, TaskStatus.DELIVERING, TaskStatus.FAILED,
                                    TaskStatus.CANCELLED}),
    TaskStatus.QUEUED: frozenset({TaskStatus.DOWNLOADING, TaskStatus.RUNNING, TaskStatus.DELIVERING,
                                  TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.QUEUED}),
    TaskStatus.DOWNLOADING: frozenset({TaskStatus.RUNNING, TaskStatus.DOWNLOADING, TaskStatus.DELIVERING,
                                       TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.QUEUED}),
    TaskStatus.RUNNING: frozenset({TaskStatus.DOWNLOADING, TaskStatus.RUNNING, TaskStatus.DELIVERING,
                                   TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.QUEUED}),
    TaskStatus.DELIVERING: frozenset({TaskStatus.DELIVERING, TaskStatus.COMPLETED, TaskStatus.FAILED,
                                      TaskStatus.DELIVERY_FAILED, TaskStatus.CANCELLED}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
    TaskStatus.DELIVERY_FAILED: frozenset({TaskStatus.DELIVERING}),
}


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    """Whether the state machine allows `current -> new`."""
    return new in _ALLOWED[current]


def check_transition(current: TaskStatus, new: TaskStatus) -> None:
    """Raise InvalidTransitionError unless `current -> new` is allowed."""
    if not can_transition(current, new):
        raise InvalidTransitionError(
            f"task cannot go from {current} to {new}",
            details={"from": str(current), "to": str(new)},
        )


def allowed_sources(new: TaskStatus) -> list[TaskStatus]:
    """Every status from which `new` may be reached (for conditional writes)."""
    return [s for s, targets in _ALLOWED.items() if new in targets]
