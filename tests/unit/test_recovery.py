"""After a restart every task left in flight resumes or ends WORKER_FAILED, once; finished ones are left alone."""

from __future__ import annotations

import time

from scanbridge.adapters.local.memory import MemoryJobLauncher
from scanbridge.bootstrap import Container
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.services.common import update_task
from scanbridge.services.recovery import recover
from tests.conftest import SAMPLE_WEBHOOK, ScriptedPlatform


def _task(container: Container, task_id: str, status: TaskStatus | None, attempts: int = 1) -> None:
    container.intake.accept(WebhookPayload.model_validate({**SAMPLE_WEBHOOK, "task_id": task_id, "jwt_token": "t"}))
    path = {TaskStatus.RUNNING: [TaskStatus.RUNNING],
            TaskStatus.COMPLETED: [TaskStatus.RUNNING, TaskStatus.DELIVERING, TaskStatus.COMPLETED]}.get(status, [])
    for step in path:
        update_task(container.tasks, task_id, lambda t, s=step: t.moved_to(s, attempts=attempts))


def test_recover_resumes_in_flight_tasks_and_fails_those_out_of_attempts(
        container: Container, launcher: MemoryJobLauncher, platform: ScriptedPlatform) -> None:
    # GIVEN a stack that died with one task queued, one running (first attempt), one running on its
    # last attempt, and one completed
    _task(container, "queued", None)
    _task(container, "running", TaskStatus.RUNNING, attempts=1)
    _task(container, "last-try", TaskStatus.RUNNING, attempts=2)
    _task(container, "done", TaskStatus.COMPLETED)
    _task(container, "unsubmitted", None)
    update_task(container.tasks, "unsubmitted", lambda t: t.model_copy(update={"status": TaskStatus.RECEIVED}))
    launcher.submitted.clear()
    # WHEN the restarted stack recovers
    out = recover(container.tasks, launcher, container.delivery, max_attempts=2)
    # THEN the queued, the unsubmitted and the running one get a worker again (the running one on its
    # second attempt)
    assert sorted(out.resubmitted) == sorted(launcher.submitted) == ["queued", "running", "unsubmitted"]
    assert container.tasks.get("unsubmitted").status == TaskStatus.QUEUED  # type: ignore[union-attr]
    assert container.tasks.get("running").attempts == 2  # type: ignore[union-attr]
    assert container.tasks.get("queued").attempts == 1  # type: ignore[union-attr]
    # AND the one out of attempts ends FAILED / WORKER_FAILED with one POST; the completed one is not posted
    assert out.failed == ["last-try"]
    deadline = time.monotonic() + 10
    while container.tasks.get("last-try").status != TaskStatus.FAILED and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.02)
    ended = container.tasks.get("last-try")
    assert ended is not None and ended.status == TaskStatus.FAILED and ended.error_code == "WORKER_FAILED"
    assert [c[0] for c in platform.calls] == ["last-try"]
    # AND at a second restart the resumed one has used its attempts and fails; the queued one is submitted again
    again = recover(container.tasks, launcher, container.delivery, max_attempts=2)
    assert again.failed == ["running"] and again.resubmitted == ["queued", "unsubmitted"]


def test_a_clean_stop_gives_back_the_attempt_recovery_counts(container: Container, launcher: MemoryJobLauncher) -> None:
    # GIVEN a task running its first attempt when the stack is stopped cleanly
    _task(container, "interrupted", TaskStatus.RUNNING, attempts=1)
    from scanbridge.services.recovery import stopped_cleanly

    stopped_cleanly(container.tasks, ["interrupted"])
    # WHEN the stack starts again (twice, each after a clean stop)
    recover(container.tasks, launcher, container.delivery, max_attempts=2)
    stopped_cleanly(container.tasks, ["interrupted"])
    out = recover(container.tasks, launcher, container.delivery, max_attempts=2)
    # THEN it resumes each time, still on its first attempt
    assert out.resubmitted == ["interrupted"] and out.failed == []
    assert container.tasks.get("interrupted").attempts == 1  # type: ignore[union-attr]
