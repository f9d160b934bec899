"""The JobLauncher port's lifecycle and questions on the launchers that cannot answer them (Batch, in memory)."""

from __future__ import annotations

from typing import Any

import pytest

from scanbridge.adapters.aws.batch import BatchJobLauncher
from scanbridge.adapters.local.memory import (
    FernetSecretBox,
    MemoryArtifactStore,
    MemoryJobLauncher,
    MemoryTaskStore,
)
from scanbridge.bootstrap import bootstrap
from scanbridge.config import Settings
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.ports import JobLauncher
from scanbridge.services.common import update_task
from scanbridge.services.reaper import Reaper, beat
from tests.conftest import SAMPLE_WEBHOOK, ScriptedPlatform


class FakeBatchClient:
    """The two Batch calls the launcher makes, recorded; job ids as Batch returns them."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def submit_job(self, **kwargs: Any) -> dict[str, Any]:
        self.jobs.append(kwargs)
        return {"jobId": f"batch-{len(self.jobs)}"}

    def terminate_job(self, **kwargs: Any) -> None:
        pass


def _launchers() -> list[JobLauncher]:
    return [BatchJobLauncher(FakeBatchClient(), "queue", "definition"), MemoryJobLauncher()]


@pytest.mark.parametrize("launcher", _launchers(), ids=["batch", "memory"])
def test_launchers_without_local_workers_count_queued_tasks_and_let_the_reaper_fail_silent_ones(
        settings: Settings, launcher: JobLauncher) -> None:
    # GIVEN a container over a launcher whose backend owns its workers (Batch) or runs none (memory)
    platform = ScriptedPlatform()
    container = bootstrap(settings, tasks=MemoryTaskStore(), artifacts=MemoryArtifactStore(),
                          secrets=FernetSecretBox(), launcher=launcher, platform=platform, sleep=lambda _s: None)
    for tid in ("q1", "q2", "q3"):
        container.intake.accept(WebhookPayload.model_validate({**SAMPLE_WEBHOOK, "task_id": tid, "jwt_token": "t"}))
    # WHEN the stack's start and stop steps run, and a client asks where the last task waits
    started = (launcher.warm_up(1), launcher.clean_work_except(set()), launcher.shutdown())
    queue = container.queries.task_view("q3")["queue"]
    # THEN nothing was started or stopped, and the place is counted from the QUEUED tasks (ETA unknown)
    assert started == (0, 0, [])
    assert queue == {"position": 3, "ahead": 2, "eta_s": None, "basis": "queued_tasks_created_before"}
    # WHEN the first task's worker goes silent and the reaper runs
    update_task(container.tasks, "q1", lambda t: t.moved_to(TaskStatus.RUNNING))
    beat(container.tasks, "q1", clock=lambda: 100.0)
    reaped = Reaper(container.tasks, container.delivery, stale_after_s=60, launcher=launcher,
                    clock=lambda: 1000.0).reap()
    # THEN, with no process of its own to kill, the task is failed and the platform told once
    task = container.tasks.get("q1")
    assert reaped == ["q1"] and task is not None and task.error_code == "WORKER_FAILED"
    assert [c[0] for c in platform.calls] == ["q1"]
