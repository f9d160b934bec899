"""The local launcher: workers yield the CPU to the API, and a shutdown stops them for good."""

from __future__ import annotations

import os
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
