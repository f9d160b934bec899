"""Heartbeats and the reaper: an abandoned task ends as WORKER_FAILED and the platform is told."""

from __future__ import annotations

import time

from scanbridge.adapters.local.memory import MemoryJobLauncher
from scanbridge.bootstrap import Container
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.services.common import update_task
from scanbridge.services.reaper import Heartbeat, Reaper, beat
from tests.conftest import SAMPLE_WEBHOOK, ScriptedPlatform


def _running(container: Container, task_id: str) -> None:
    container.intake.accept(WebhookPayload.model_validate({**SAMPLE_WEBHOOK, "task_id": task_id, "jwt_token": "t"}))
    update_task(container.tasks, task_id, lambda t: t.moved_to(TaskStatus.RUNNING))


class LiveJobs(MemoryJobLauncher):
    """The in-memory launcher, told which of its jobs still have a process; it records what it is asked to kill
    (and reports nothing itself: a killed job's end comes from the launcher later)."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: set[str] = set()
        self.killed: list[tuple[str, bool]] = []

    def is_alive(self, job_id: str) -> bool:
        return job_id in self.alive

    def kill(self, job_id: str, reason: str, *, retry: bool) -> bool:
        self.killed.append((job_id, retry))
        return True


def test_reaper_fails_silent_tasks_whose_job_is_gone_and_kills_silent_live_ones(
        container: Container, platform: ScriptedPlatform) -> None:
    # GIVEN three running tasks: one beat long ago and its job is gone, one beat long ago but its job's process
    # is still there (hung), one beat just now
    now = [1000.0]
    for tid in ("silent", "alive", "fresh"):
        _running(container, tid)
    beat(container.tasks, "silent", clock=lambda: 100.0)
    beat(container.tasks, "alive", clock=lambda: 100.0)
    beat(container.tasks, "fresh", clock=lambda: 990.0)
    launcher = LiveJobs()
    hung_job = container.tasks.get("alive").job_id  # type: ignore[union-attr]
    assert hung_job is not None
    launcher.alive.add(hung_job)
    reaper = Reaper(container.tasks, container.delivery, stale_after_s=60, launcher=launcher, clock=lambda: now[0])
    # WHEN the reaper runs
    first = reaper.reap()
    # THEN the silent one with no process ended as WORKER_FAILED, with one POST to the platform; the hung one's
    # process was killed through the launcher, with a retry (its end is the launcher's to report: still RUNNING)
    assert sorted(first) == ["alive", "silent"]
    assert launcher.killed == [(hung_job, True)]
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
