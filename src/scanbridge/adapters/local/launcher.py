"""JobLauncher for local mode: one worker subprocess per task, at most SCANBRIDGE_MAX_WORKERS at once."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scanbridge.domain.task import new_job_id

log = logging.getLogger(__name__)

WORKER_NICENESS = 19  # where SCHED_IDLE is not available


def yield_cpu(pid: int) -> str:
    """Put a worker process below everything else: Linux SCHED_IDLE, else the lowest nice; returns which.

    A SCHED_IDLE process runs only on CPU time nothing else wants, so the API's acknowledgements (and
    moto, locally) never wait for a worker; on an idle machine the worker still gets all of it. Set
    from the parent right after the exec rather than in a `preexec_fn`: that would make subprocess
    fork the whole (threaded) API process instead of vfork-ing, and Python documents it as unsafe
    with threads. The worker has no threads yet when this lands, and the ones it starts inherit it.
    """
    setter = getattr(os, "sched_setscheduler", None)
    if setter is not None and hasattr(os, "SCHED_IDLE"):
        try:
            setter(pid, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError:
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, pid, WORKER_NICENESS)
        return "nice"
    except OSError:
        return "normal"


OnFinished = Callable[[str, bool, "str | None"], object]


class LocalJobLauncher:
    """Runs `python -m scanbridge.entrypoints.worker --task-id ID`; calls `on_finished` when it exits.

    The child gets this process's environment (endpoint of the moto server, table names), never the
    task token: the worker reads what it needs from the task store, as on Batch. `worker_cmd` replaces
    the worker's command line (tests); `--task-id ID` is appended to it.
    """

    def __init__(self, *, max_workers: int, log_dir: Path, on_finished: OnFinished | None = None,
                 env: dict[str, str] | None = None, retries: int = 1,
                 worker_cmd: list[str] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="local-job")
        self._log_dir = log_dir
        self._on_finished = on_finished
        self._env = env
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._retries = max(0, retries)
        self._closing = False
        self._worker_cmd = worker_cmd or [sys.executable, "-P", "-m", "scanbridge.entrypoints.worker"]

    def set_on_finished(self, callback: OnFinished) -> None:
        """Set what runs when a job ends (the delivery service)."""
        self._on_finished = callback

    def submit(self, task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        """Queue the worker for `task_id` (it runs the scans on parallel threads); returns the job id (`job_id`)."""
        job_id = job_id or new_job_id()
        self._pool.submit(self._run, task_id, job_id)
        return job_id

    def _run(self, task_id: str, job_id: str) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{job_id}.log"
        reason: str | None = None
        ok = False
        try:
            with self._lock:
                if job_id in self._cancelled or self._closing:
                    return
            for attempt in range(self._retries + 1):
                code = self._spawn(task_id, job_id, log_path)
                ok = code == 0
                if ok:
                    break
                reason = f"worker exited with code {code}" if code > 0 else f"worker killed by signal {-code}"
                with self._lock:
                    stop = job_id in self._cancelled or self._closing
                # Like Batch's retry on host termination: a killed worker is retried, an erroring one is not
                # (nor one this launcher stopped: cancelled, or shutting down).
                if code > 0 or stop or attempt == self._retries:
                    break
                log.warning("%s; retrying the task", reason, extra={"task_id": task_id})
        except Exception as exc:
            log.exception("local worker could not run")
            reason = f"worker could not start: {type(exc).__name__}"
        finally:
            with self._lock:
                self._procs.pop(job_id, None)
        with self._lock:
            closing = self._closing
        if closing:  # stopped by shutdown(): no result to report, the stack (and locally its store) is going away
            log.info("worker stopped by the launcher's shutdown", extra={"task_id": task_id})
            return
        if self._on_finished is not None:
            try:
                self._on_finished(task_id, ok, reason)
            except Exception:
                log.exception("results step failed", extra={"task_id": task_id})

    def _spawn(self, task_id: str, job_id: str, log_path: Path) -> int:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [*self._worker_cmd, "--task-id", task_id],
                stdout=out, stderr=subprocess.STDOUT, env=self._env or dict(os.environ), start_new_session=True)
            yield_cpu(proc.pid)  # workers only get CPU time the API does not want
            with self._lock:
                self._procs[job_id] = proc
                closing = self._closing
            if closing:  # shutdown() ran while this one was starting
                os.killpg(proc.pid, signal.SIGTERM)
            return proc.wait()

    def is_alive(self, job_id: str) -> bool:
        """Whether the worker of `job_id` is running now."""
        with self._lock:
            proc = self._procs.get(job_id)
        return proc is not None and proc.poll() is None

    def pids(self) -> dict[str, int]:
        """Running worker processes by job id (for operators and tests)."""
        with self._lock:
            return {job: p.pid for job, p in self._procs.items() if p.poll() is None}

    def cancel(self, job_id: str, reason: str) -> None:
        """Terminate the worker of `job_id` (SIGTERM to its process group)."""
        with self._lock:
            self._cancelled.add(job_id)
            proc = self._procs.get(job_id)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)

    def shutdown(self) -> None:
        """Stop every worker and the pool (a worker stopped this way is not retried)."""
        with self._lock:
            self._closing = True
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self._pool.shutdown(wait=False, cancel_futures=True)
