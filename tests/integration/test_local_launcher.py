"""The local launcher: workers yield the CPU to the API, and a shutdown stops them for good."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from scanbridge.adapters.local.launcher import LocalJobLauncher

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_worker(launcher: LocalJobLauncher, job_id: str, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = launcher.pids().get(job_id)
        if pid is not None:
            return pid
        time.sleep(0.02)
    raise AssertionError("the worker did not start")


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_workers_run_at_idle_priority(tmp_path: Path) -> None:
    # GIVEN a local launcher whose worker just sleeps
    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path, worker_cmd=SLEEPER)
    try:
        # WHEN a task is submitted
        job_id = launcher.submit("task-1")
        pid = _wait_for_worker(launcher, job_id)
        # THEN its worker only gets CPU time nothing else wants
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    finally:
        launcher.shutdown()


def test_shutdown_stops_workers_without_retrying_them(tmp_path: Path) -> None:
    # GIVEN a launcher that retries killed workers, with one worker running
    finished: list[tuple[str, bool, str | None]] = []
    done = threading.Event()

    def on_finished(task_id: str, ok: bool, reason: str | None) -> None:
        finished.append((task_id, ok, reason))
        done.set()

    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path, worker_cmd=SLEEPER, retries=3,
                                on_finished=on_finished)
    job_id = launcher.submit("task-1")
    pid = _wait_for_worker(launcher, job_id)
    # WHEN the launcher shuts down (Ctrl-C on `scanbridge serve`)
    launcher.shutdown()
    # THEN the worker ends at once and is not started again
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
    time.sleep(0.5)
    assert launcher.pids() == {}
    # AND no result is reported for it (the stack, and its store, are going away)
    assert not done.is_set() and finished == []


# A stand-in for `worker --warm` (no task store here): blocks on one JSON line, writes to the log it names.
WARM = [sys.executable, "-c", (
    "import json, os, sys\n"
    "order = sys.stdin.readline()\n"
    "if not order.strip(): sys.exit(0)\n"
    "o = json.loads(order)\n"
    "with open(o['log'], 'a') as f: f.write(f\"warm {os.getpid()} ran {o['task_id']}\\n\")\n")]


def _wait_for(predicate: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_warm_spare_serves_a_task_and_a_killed_spare_is_replaced(tmp_path: Path) -> None:
    # GIVEN a launcher keeping one warm spare
    finished: list[tuple[str, bool, str | None]] = []
    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path, worker_cmd=SLEEPER, warm_cmd=WARM,
                                on_finished=lambda t, ok, r: finished.append((t, ok, r)))
    try:
        assert launcher.warm_up(1) == 1
        _wait_for(lambda: len(launcher.spare_pids()) == 1)
        first = launcher.spare_pids()[0]
        # WHEN the spare is killed before any task arrives
        os.kill(first, signal.SIGKILL)
        # THEN a fresh spare replaces it
        _wait_for(lambda: launcher.spare_pids() not in ([], [first]))
        spare = launcher.spare_pids()[0]
        # AND WHEN a task is submitted, the spare (not a fresh `worker_cmd`, which would sleep 60 s) runs it,
        job_id = launcher.submit("task-1")
        _wait_for(lambda: len(finished) == 1)
        assert finished == [("task-1", True, None)]
        # its output is the job's log,
        assert (tmp_path / f"{job_id}.log").read_text() == f"warm {spare} ran task-1\n"
        # and another spare is started for the next task
        _wait_for(lambda: len(launcher.spare_pids()) == 1 and launcher.spare_pids()[0] != spare)
    finally:
        launcher.shutdown()


def test_task_given_to_a_dead_spare_is_not_lost(tmp_path: Path) -> None:
    # GIVEN a launcher whose only spare was SIGKILLed just before a task came (the pool has not noticed yet)
    finished: list[tuple[str, bool, str | None]] = []
    cold = [sys.executable, "-c", "import sys; print('cold ran', sys.argv[-1])"]
    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path, worker_cmd=cold, warm_cmd=WARM, retries=0,
                                on_finished=lambda t, ok, r: finished.append((t, ok, r)))
    try:
        launcher.warm_up(1)
        _wait_for(lambda: len(launcher.spare_pids()) == 1)
        os.kill(launcher.spare_pids()[0], signal.SIGKILL)
        # WHEN a task is submitted
        job_id = launcher.submit("task-2")
        _wait_for(lambda: len(finished) == 1)
        # THEN it runs to the end in a live worker (a fresh one, or the dead spare's replacement), with its log
        assert finished == [("task-2", True, None)]
        assert "ran task-2" in (tmp_path / f"{job_id}.log").read_text()
    finally:
        launcher.shutdown()
