"""The local launcher: workers yield the CPU to the API, and a shutdown stops them for good."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scanbridge.adapters.local.forkserver import TITLE_ROOM
from scanbridge.adapters.local.launcher import LocalJobLauncher
from tests.conftest import logged

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


def test_shutdown_kills_a_worker_deaf_to_sigterm_and_returns_once_its_jobs_have_ended(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a launcher with one worker, SIGSTOPped: a SIGTERM stays pending on it
    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path, worker_cmd=SLEEPER, retries=3)
    job_id = launcher.submit("task-1")
    pid = _wait_for_worker(launcher, job_id)
    os.kill(pid, signal.SIGSTOP)
    try:
        # WHEN the launcher shuts down with a short grace
        with logged(caplog, "scanbridge.adapters.local.launcher"):
            stopped = launcher.shutdown(grace_s=0.3)
        # THEN when it returns the worker is gone (killed after the grace, and reaped), and its job's thread has
        # ended and said so: nothing of the launcher runs or logs after the shutdown
        assert stopped == ["task-1"]
        assert not _alive(pid)
        assert "worker stopped by the launcher's shutdown" in caplog.messages
        assert launcher.pids() == {}
    finally:  # a shutdown that left it stopped would leave its job's thread waiting, and pytest with it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


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


def _warm(body: str) -> list[str]:
    """A warm-worker server (the real fork server) whose task is `body` (Python; `order` is the task's order)."""
    return [sys.executable, "-c", ("import sys, time\nfrom scanbridge.adapters.local.forkserver import serve_forks\n"
            f"def run(order):\n    {body}\n    return 0\nserve_forks(run)\n"), "--title-room", TITLE_ROOM]


def _wait_for(predicate: Callable[[], object], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_warm_worker_serves_a_task_and_a_killed_server_is_replaced(tmp_path: Path) -> None:
    # GIVEN a launcher with warm workers on (a fresh `worker_cmd` would sleep 60 s)
    finished: list[tuple[str, bool, str | None]] = []
    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path, worker_cmd=SLEEPER,
                                warm_cmd=_warm("print('ran', order['task_id'], flush=True)"),
                                on_finished=lambda t, ok, r: finished.append((t, ok, r)))
    try:
        assert launcher.warm_up(1) == 1
        _wait_for(lambda: launcher.warm_pids())
        first = launcher.warm_pids()[0]
        # WHEN the warm server is killed before any task arrives
        os.kill(first, signal.SIGKILL)
        # THEN a fresh one replaces it
        _wait_for(lambda: launcher.warm_pids() not in ([], [first]))
        # AND WHEN a task is submitted, a process forked from it runs the task to the end
        job_id = launcher.submit("task-1")
        _wait_for(lambda: len(finished) == 1)
        assert finished == [("task-1", True, None)]
        # with its output in the job's log
        text = (tmp_path / f"{job_id}.log").read_text().splitlines()
        assert text[0].startswith("warm worker ") and text[0].endswith(" took task task-1")
        assert text[1:] == ["ran task-1"]
        assert int(text[0].split()[2]) not in (first, *launcher.warm_pids())  # its own process
    finally:
        launcher.shutdown()


def test_warm_worker_is_killed_retried_and_its_deadline_kept(tmp_path: Path) -> None:
    # GIVEN warm workers that hang, a launcher that retries killed workers once, and a 3 s deadline
    finished: list[tuple[str, bool, str | None]] = []
    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path, worker_cmd=SLEEPER, retries=1, task_timeout_s=3,
                                warm_cmd=_warm("time.sleep(60)"),
                                on_finished=lambda t, ok, r: finished.append((t, ok, r)))
    try:
        launcher.warm_up(1)
        _wait_for(lambda: launcher.warm_pids())
        job_id = launcher.submit("task-2")
        pid = _wait_for_worker(launcher, job_id)
        assert pid not in launcher.warm_pids()
        # AND it shows the command line a fresh worker would have (ps / pgrep -f find it by its task)
        def shown() -> list[str]:
            return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]

        _wait_for(lambda: shown() == [*SLEEPER, "--task-id", "task-2"])  # set by the child as it starts
        if hasattr(os, "SCHED_IDLE"):  # and yields the CPU to the API, as a fresh worker
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        # WHEN its worker is SIGSTOPped and then killed as hung (the reaper's call), with a retry
        os.kill(pid, signal.SIGSTOP)
        assert launcher.kill(job_id, "hung", retry=True)
        # THEN another forked worker runs it
        _wait_for(lambda: launcher.pids().get(job_id) not in (None, pid))
        assert launcher.warm_pids()  # the server stayed up
        # AND past the deadline that one is killed and the job ends for good with the reason
        _wait_for(lambda: finished, timeout_s=15)
        assert finished[0][0] == "task-2" and finished[0][1] is False
        assert "SCANBRIDGE_TASK_TIMEOUT_S" in (finished[0][2] or "")
        assert not _alive(pid)
    finally:
        launcher.shutdown()


def test_task_goes_to_a_fresh_worker_when_the_warm_server_is_gone(tmp_path: Path) -> None:
    # GIVEN a launcher whose warm server keeps failing at start (it exits 3 at once)
    finished: list[tuple[str, bool, str | None]] = []
    cold = [sys.executable, "-c", "import sys; print('cold ran', sys.argv[-1])"]
    launcher = LocalJobLauncher(max_workers=1, log_dir=tmp_path, worker_cmd=cold, retries=0,
                                warm_cmd=[sys.executable, "-c", "raise SystemExit(3)"],
                                on_finished=lambda t, ok, r: finished.append((t, ok, r)))
    try:
        launcher.warm_up(1)
        # WHEN a task is submitted
        job_id = launcher.submit("task-3")
        _wait_for(lambda: finished)
        # THEN it is not lost: a fresh worker runs it
        assert finished == [("task-3", True, None)]
        assert (tmp_path / f"{job_id}.log").read_text() == "cold ran task-3\n"
    finally:
        launcher.shutdown()


def test_the_fork_server_reports_each_child_as_it_ends(tmp_path: Path) -> None:
    # GIVEN a fork server whose task sleeps `sleep` seconds then exits with `code`
    program = ("import time\nfrom scanbridge.adapters.local.forkserver import serve_forks\n"
               "def run(order):\n    time.sleep(order['sleep'])\n    return order['code']\nserve_forks(run)\n")
    server = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert server.stdin is not None and server.stdout is not None
    # WHEN a slow task that fails (3) and a quick one that fails otherwise (4) are ordered, then stdin closes
    for sleep, code in ((1.0, 3), (0.0, 4)):
        order = {"task_id": f"t{code}", "log": str(tmp_path / f"t{code}.log"), "sleep": sleep, "code": code}
        server.stdin.write(json.dumps(order).encode() + b"\n")
        server.stdin.flush()
    server.stdin.close()
    lines = server.stdout.read().decode().split()
    # THEN both are started, the quick one's end is reported first, each with its own code, and the server
    # ends (0) once both have
    assert server.wait(timeout=30) == 0
    started = [int(lines[i + 1]) for i, k in enumerate(lines) if k == "started"]
    exits = [(int(lines[i + 1]), int(lines[i + 2])) for i, k in enumerate(lines) if k == "exit"]
    assert len(started) == 2 and [pid for pid, _ in exits] == started[::-1]
    assert [code for _, code in exits] == [4, 3]
    assert (tmp_path / "t3.log").read_text().startswith("warm worker")


#: The worker's start-up with its steps replaced by probes of the collector (scanbridge/heap.py); the task
#: prints what it finds. `sys.argv[1]`: the worker's arguments.
_HEAP_PROBE = """
import gc, json, sys
import scanbridge.entrypoints.worker as w
seen = {}
kept = []
def step(name):
    seen[name] = gc.isenabled()
    kept.extend([i] for i in range(20_000))  # what a start-up keeps: lists the collector tracks
w.bootstrap = lambda: step("bootstrap")
w.build_processing = lambda container: step("build_processing")
w.prepare = lambda: step("prepare")
def run_task(task_id, index, container, started):
    print(json.dumps({"start-up with the collector on": seen, "task": task_id, "task with it on": gc.isenabled(),
                      "frozen": gc.get_freeze_count()}), flush=True)
    return 0
w.run_task = run_task
sys.exit(w.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("warm", [True, False], ids=["warm server's fork", "fresh worker"])
def test_the_worker_imports_with_the_collector_off_and_runs_its_task_with_it_on_and_the_start_up_frozen(
        tmp_path: Path, warm: bool) -> None:
    # GIVEN the worker's real entry point, its start-up steps probing the collector
    log = tmp_path / "task.log"
    args = ["--warm"] if warm else ["--task-id", "t1"]
    order = json.dumps({"task_id": "t1", "log": str(log)}) + "\n" if warm else ""
    # WHEN it starts and runs a task (a warm server: forked for the order read from its stdin)
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, *args], input=order, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads((log.read_text() if warm else out.stdout).splitlines()[-1])
    # THEN every start-up step ran with the collector off, the task with it on
    steps = ["bootstrap", "build_processing", "prepare"] if warm else ["bootstrap", "build_processing"]
    assert report["start-up with the collector on"] == dict.fromkeys(steps, False)
    assert report["task"] == "t1" and report["task with it on"] is True
    # AND what the start-up made is out of the collector's reach (the task's collections never walk it)
    assert report["frozen"] >= 20_000 * len(steps)
