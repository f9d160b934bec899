"""Helpers every service uses: read-modify-write of a task under optimistic concurrency."""

from __future__ import annotations

from collections.abc import Callable

from scanbridge.domain.errors import ConflictError, TaskNotFoundError
from scanbridge.domain.task import Task
from scanbridge.ports import TaskStore


def update_task(store: TaskStore, task_id: str, change: Callable[[Task], Task | None], *,
                attempts: int = 20) -> Task:
    """Apply `change` to the stored task and write it back, retrying when another writer won.

    `change` returns the new task, or None to leave it as it is.
    """
    for _ in range(attempts):
        task = store.get(task_id)
        if task is None:
            raise TaskNotFoundError(f"task {task_id!r} does not exist")
        new = change(task)
        if new is None:
            return task
        if store.replace(new, expected_version=task.version):
            return new.model_copy(update={"version": task.version + 1})
    raise ConflictError(f"task {task_id!r} kept changing under us; gave up after {attempts} attempts")
