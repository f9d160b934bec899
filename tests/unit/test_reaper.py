"""Heartbeats and the reaper: an abandoned task ends as WORKER_FAILED and the platform is told."""

from __future__ import annotations

import time

from scanbridge.bootstrap import Container
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.services.common import update_task
from scanbridge.services.reaper import Heartbeat, Reaper, beat
from tests.conftest import SAMPLE_WEBHOOK, ScriptedPlatform


def _running(container: Container, task_id: str) -> None:
    container.intake.accept(WebhookPayload.model_validate({**SAMPLE_WEBHOOK, "task_id": task_id, "jwt_token": "t"}))
    update_task(container.tasks, task_id, lambda t: t.moved_to(TaskStatus.RUNNING))


def test_reaper_fails_only_silent_tasks_whose_job_is_gone(container: Container, platform: ScriptedPlatform) -> None:
    # GIVEN three running tasks: one beat long ago and its job is gone, one beat long ago but its job
    # is alive, one beat just now
    now = [1000.0]
    for tid in ("silent", "alive", "fresh"):
        _running(container, tid)
    beat(container.tasks, "silent", clock=lambda: 100.0)
    beat(container.tasks, "alive", clock=lambda: 100.0)
    beat(container.tasks, "fresh", clock=lambda: 990.0)
    alive_jobs = {container.tasks.get("alive").job_id}  # type: ignore[union-attr]
    reaper = Reaper(container.tasks, container.delivery, stale_after_s=60, is_alive=lambda j: j in alive_jobs,
                    clock=lambda: now[0])
    # WHEN the reaper runs (twice)
    first = reaper.reap()
    second = reaper.reap()
    # THEN only the silent one ended, as WORKER_FAILED, with one POST to the platform
    assert first == ["silent"] and second == []
    silent = container.tasks.get("silent")
    assert silent is not None and silent.status == TaskStatus.FAILED and silent.error_code == "WORKER_FAILED"
    assert [c[0] for c in platform.calls] == ["silent"]
    assert container.tasks.get("alive").status == TaskStatus.RUNNING  # type: ignore[union-attr]
    assert container.tasks.get("fresh").status == TaskStatus.RUNNING  # type: ignore[union-attr]


def test_heartbeat_thread_beats_while_the_worker_runs(container: Container) -> None:
    # GIVEN a running task
    _running(container, "beating")

    def last_beat() -> float | None:
        task = container.tasks.get("beating")
        return task.heartbeat_at if task is not None else None

    # WHEN a heartbeat runs for a while, its beats sampled twice, then stops
    with Heartbeat(container.tasks, "beating", interval_s=0.05):
        deadline = time.monotonic() + 5.0
        while last_beat() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first = last_beat()
        time.sleep(0.3)
        second = last_beat()
    time.sleep(0.2)
    stopped = last_beat()
    time.sleep(0.2)
    # THEN it beat repeatedly (the later sample is newer, by about the beats in between), and not after it stopped
    assert first is not None and second is not None and stopped is not None
    assert second - first >= 0.15, (first, second)
    assert last_beat() == stopped
