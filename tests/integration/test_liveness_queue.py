"""Liveness, deadlines and the queue with real worker processes (stand-in commands) and the real reaper."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scanbridge.adapters.local.launcher import LocalJobLauncher
from scanbridge.adapters.local.memory import FernetSecretBox, MemoryArtifactStore, MemoryTaskStore
from scanbridge.bootstrap import Container, bootstrap
from scanbridge.config import Settings
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.services.common import update_task
from scanbridge.services.reaper import Reaper
from tests.conftest import SAMPLE_WEBHOOK, ScriptedPlatform


def _stack(settings: Settings, tmp_path: Path, worker: list[str], **launcher_args: Any) -> Container:
    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path / "logs", worker_cmd=worker, **launcher_args)
    container = bootstrap(settings, tasks=MemoryTaskStore(), artifacts=MemoryArtifactStore(),
                          secrets=FernetSecretBox(), launcher=launcher, platform=ScriptedPlatform(),
                          sleep=lambda _s: None)
    launcher.set_on_finished(container.delivery.on_job_finished)
    return container


def _accept(container: Container, task_id: str) -> None:
    container.intake.accept(WebhookPayload.model_validate({**SAMPLE_WEBHOOK, "task_id": task_id, "jwt_token": "t"}))


def _wait(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_queued_tasks_show_their_position_and_an_eta_once_a_job_has_ended(settings: Settings, tmp_path: Path) -> None:
    # GIVEN one worker slot and jobs that take ~1 s
    container = _stack(settings, tmp_path, [sys.executable, "-c", "import time; time.sleep(1.0)"])
    try:
        # WHEN three tasks arrive at once
        for tid in ("q1", "q2", "q3"):
            _accept(container, tid)
        launcher = container.launcher
        assert isinstance(launcher, LocalJobLauncher)
        _wait(lambda: launcher.pids())
        # THEN the first runs and the others wait in order, no ETA yet (no job has ended)
        views = {tid: container.queries.task_view(tid) for tid in ("q2", "q3")}
        assert views["q2"]["queue"]["position"] == 1 and views["q3"]["queue"]["position"] == 2
        assert views["q3"]["queue"]["ahead"] == 1 and views["q3"]["queue"]["eta_s"] is None
        # WHEN the first job has ended / THEN the last one's ETA is the queue ahead of it at the jobs' mean
        # duration (however long a job took on this machine: at most `position` of them, one slot)
        _wait(lambda: container.tasks.get("q1").status.is_terminal)  # type: ignore[union-attr]
        queue = container.queries.task_view("q3")["queue"]
        mean = launcher.mean_job_s
        assert mean is not None and mean >= 1.0  # the job sleeps 1 s
        assert queue["position"] in (1, 2) and queue["eta_s"] is not None
        assert 0.0 <= queue["eta_s"] <= queue["position"] * mean + 0.05
        # AND a task that has ended has no queue
        assert container.queries.task_view("q1")["queue"] is None
    finally:
        container.launcher.shutdown()


def test_queue_position_without_a_launcher_queue_counts_older_queued_tasks(container: Container) -> None:
    # GIVEN three QUEUED tasks and a launcher (like Batch) that has no queue of its own
    for tid in ("a1", "a2", "a3"):
        _accept(container, tid)
    # WHEN the last one is read / THEN two are ahead of it and the ETA is honestly unknown
    queue = container.queries.task_view("a3")["queue"]
    assert queue == {"position": 3, "ahead": 2, "eta_s": None, "basis": "queued_tasks_created_before"}


def test_a_stopped_worker_is_killed_retried_then_failed(settings: Settings, tmp_path: Path) -> None:
    # GIVEN a worker that stops itself (SIGSTOP) at once, a launcher allowing one retry, a reaper with 1 s staleness
    stopper = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)"]
    container = _stack(settings, tmp_path, stopper, retries=1)
    reaper = Reaper(container.tasks, container.delivery, stale_after_s=1.0, launcher=container.launcher)
    stop = threading.Event()
    try:
        _accept(container, "hung")
        update_task(container.tasks, "hung", lambda t: t.moved_to(TaskStatus.RUNNING, heartbeat_at=time.time()))
        launcher = container.launcher
        assert isinstance(launcher, LocalJobLauncher)
        _wait(lambda: launcher.pids())
        first = next(iter(launcher.pids().values()))
        _wait(lambda: _state(first) == "T")
        # WHEN the reaper runs while the process still exists (stopped, silent)
        threading.Thread(target=reaper.run_every, args=(0.2, stop), daemon=True).start()
        # THEN it is killed, retried once (a new process), killed again, and the task ends WORKER_FAILED
        _wait(lambda: container.tasks.get("hung").status.is_terminal, timeout_s=15)  # type: ignore[union-attr]
        task = container.tasks.get("hung")
        assert task is not None and task.status == TaskStatus.FAILED and task.error_code == "WORKER_FAILED"
        assert "heartbeat" in (task.error_message or "")
        assert _state(first) in ("gone", "Z")
        platform = container.platform
        assert isinstance(platform, ScriptedPlatform) and [c[0] for c in platform.calls] == ["hung"]
    finally:
        stop.set()
        container.launcher.shutdown()


def test_a_task_past_its_deadline_is_killed_and_not_retried(settings: Settings, tmp_path: Path) -> None:
    # GIVEN a worker that would run for a minute and a 1 s task deadline (retries allowed)
    container = _stack(settings, tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"],
                       retries=3, task_timeout_s=1.0)
    try:
        started = time.monotonic()
        _accept(container, "slow")
        # WHEN the deadline passes / THEN the task ends FAILED (WORKER_FAILED, the deadline named), at once,
        # with one worker start only
        _wait(lambda: container.tasks.get("slow").status.is_terminal, timeout_s=30)  # type: ignore[union-attr]
        task = container.tasks.get("slow")
        assert task is not None and task.status == TaskStatus.FAILED and task.error_code == "WORKER_FAILED"
        assert "SCANBRIDGE_TASK_TIMEOUT_S" in (task.error_message or "")
        # (killed by the deadline, not ended by its 60 s sleep: ~1-2 s here, under 30 s whatever the load)
        assert time.monotonic() - started < 30
        assert container.launcher.pids() == {}  # type: ignore[attr-defined]
    finally:
        container.launcher.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_die_with_the_process_that_launched_them(tmp_path: Path) -> None:
    # GIVEN a process running a launcher whose (bound, default-style) worker sleeps, then SIGKILLed
    import subprocess

    code = ("import sys, time; from pathlib import Path; "
            "from scanbridge.adapters.local.launcher import LocalJobLauncher; "
            "from scanbridge.adapters.local.lifetime import bound_command; "
            f"l = LocalJobLauncher(max_workers=1, log_dir=Path({str(tmp_path)!r}), "
            "worker_cmd=bound_command('tests.integration.sleeper')); j = l.submit('t'); "
            "[time.sleep(0.05) for _ in range(200) if not l.pids()]; print(l.pids()[j], flush=True); time.sleep(60)")
    repo = Path(__file__).resolve().parents[2]
    # the worker runs with `python -P` (no cwd on sys.path): PYTHONPATH lets it import the test sleeper
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=repo, env=env)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    time.sleep(0.5)  # past its start-up: a worker that failed to start would be gone by now
    assert _state(worker) not in ("gone", "Z")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    # WHEN a moment passes / THEN the worker (its own session, so not in the parent's group) is gone too
    _wait(lambda: _state(worker) in ("gone", "Z"), timeout_s=5)


def test_live_events_carry_the_queue_position_while_queued(container: Container) -> None:
    # GIVEN three QUEUED tasks, a client following the last one's events
    import asyncio

    from scanbridge.entrypoints.http.events import task_events

    for tid in ("b1", "b2", "b3"):
        _accept(container, tid)

    async def follow() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async for event in task_events(container.queries, "b3", None, poll_s=0.05, timeout_s=1.0):
            if event is None:
                continue
            seen.append(event)
            if len(seen) == 1:  # WHEN the oldest task starts while the client follows
                update_task(container.tasks, "b1", lambda t: t.moved_to(TaskStatus.DOWNLOADING))
        return seen

    events = asyncio.run(follow())
    # THEN the QUEUED status event says it is third, and a queue event follows when it becomes second
    assert events[0]["type"] == "status" and events[0]["queue"]["position"] == 3
    moves = [e for e in events if e["type"] == "queue"]
    assert [e["queue"]["position"] for e in moves] == [2]
    assert events[-1]["type"] == "timeout"
