"""JobLauncher for local mode: one worker subprocess per task, at most SCANBRIDGE_MAX_WORKERS at once."""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from scanbridge.adapters.local.forkserver import TITLE_ROOM, ForkServer
from scanbridge.adapters.local.lifetime import bound_command
from scanbridge.domain.task import new_job_id
from scanbridge.ports import WorkerProcess

log = logging.getLogger(__name__)

WORKER_NICENESS = 19  # where SCHED_IDLE is not available
#: `shutdown`: seconds its SIGTERM has before the workers still there get SIGKILL, then seconds it waits for them
SHUTDOWN_GRACE_S = 5.0
SHUTDOWN_KILL_WAIT_S = 2.0


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


def work_dir_name(task_id: str) -> str:
    """The folder under `{data_dir}/work` that a task's downloads go to (as the processing service names it)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in task_id)[:100] or "_"


OnFinished = Callable[[str, bool, "str | None"], object]


class LocalJobLauncher:
    """Runs `python -m scanbridge.entrypoints.worker --task-id ID`; calls `on_finished` when it exits.

    The child gets this process's environment (endpoint of the moto server, table names), never the
    task token: the worker reads what it needs from the task store, as on Batch. `worker_cmd` replaces
    the worker's command line (tests); `--task-id ID` is appended to it. By default the worker runs
    bound to this process (`lifetime.py`: it dies with it, even on SIGKILL). `task_timeout_s` is the
    job's deadline over all its attempts: past it the worker is killed and not retried. When a job has
    ended for good its downloads under `work_dir/<task>` are removed.

    `warm_up(1)` starts a warm-worker server (`worker --warm`, forkserver.py: the stack imported once, never
    running a task itself); each attempt then gets a process forked from it instead of paying the start-up,
    or a fresh worker when the server is not there. A forked worker runs one task and exits, in its own
    process group, dying with the server (which dies with this process), so crash isolation, retries, kills,
    deadlines and the logs are the same as for a fresh worker; at most `max_workers` run at once. The server
    is one extra idle process (SCHED_IDLE, memory only).
    """

    def __init__(self, *, max_workers: int, log_dir: Path, on_finished: OnFinished | None = None,
                 env: dict[str, str] | None = None, retries: int = 1,
                 worker_cmd: list[str] | None = None, task_timeout_s: float | None = None,
                 work_dir: Path | None = None, clock: Callable[[], float] = time.time,
                 warm_cmd: list[str] | None = None) -> None:
        self._max_workers = max(1, max_workers)
        self._pool = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="local-job")
        self._jobs: set[Future[None]] = set()  # the pool's jobs not finished yet (shutdown waits for them)
        self._log_dir = log_dir
        self._on_finished = on_finished
        self._env = env
        self._procs: dict[str, WorkerProcess] = {}
        self._cancelled: set[str] = set()
        self._reasons: dict[str, str] = {}
        self._queued: dict[str, float] = {}  # job id -> when submitted, in submission order
        self._started: dict[str, float] = {}  # job id -> when its current attempt started
        self._active: set[str] = set()  # jobs between their first start and their end (retries included)
        self._task_of: dict[str, str] = {}  # job id -> task id, until the job ends
        self._durations: deque[float] = deque(maxlen=20)  # of the jobs that ended, for the queue's ETA
        self._lock = threading.Lock()
        self._retries = max(0, retries)
        self._closing = False
        self._timeout = task_timeout_s if task_timeout_s and task_timeout_s > 0 else None
        self._work_dir = work_dir
        self._clock = clock
        self._worker_cmd = worker_cmd or bound_command("scanbridge.entrypoints.worker")
        # the warm server's command: the real worker's --warm mode unless the tests replace the worker
        self._warm_cmd = warm_cmd or (None if worker_cmd else [*self._worker_cmd, "--warm", "--title-room", TITLE_ROOM])
        self._server: ForkServer | None = None
        self._warm_cond = threading.Condition(self._lock)
        self._warm_thread: threading.Thread | None = None

    def set_on_finished(self, callback: OnFinished) -> None:
        """Set what runs when a job ends (the delivery service)."""
        self._on_finished = callback

    def submit(self, task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        """Queue the worker for `task_id` (it runs the scans on parallel threads); returns the job id (`job_id`)."""
        job_id = job_id or new_job_id()
        with self._lock:
            self._queued[job_id] = self._clock()
            self._task_of[job_id] = task_id
        future = self._pool.submit(self._run, task_id, job_id)
        with self._lock:
            self._jobs.add(future)
        future.add_done_callback(self._job_done)
        return job_id

    def _job_done(self, future: Future[None]) -> None:
        with self._lock:
            self._jobs.discard(future)

    def _run(self, task_id: str, job_id: str) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{job_id}.log"
        reason: str | None = None
        ok = False
        began = self._clock()
        try:
            with self._lock:
                self._queued.pop(job_id, None)
                if job_id in self._cancelled or self._closing:
                    return
                self._active.add(job_id)
            for attempt in range(self._retries + 1):
                code = self._spawn(task_id, job_id, log_path, began)
                ok = code == 0
                if ok:
                    break
                reason = f"worker exited with code {code}" if code > 0 else f"worker killed by signal {-code}"
                with self._lock:
                    stop = job_id in self._cancelled or self._closing
                    reason = self._reasons.pop(job_id, reason)
                # Like Batch's retry on host termination: a killed worker is retried, an erroring one is not
                # (nor one this launcher stopped: cancelled, past its deadline, or shutting down).
                if code > 0 or stop or attempt == self._retries:
                    break
                log.warning("%s; retrying the task", reason, extra={"task_id": task_id})
        except Exception as exc:
            log.exception("local worker could not run")
            reason = f"worker could not start: {type(exc).__name__}"
        finally:
            with self._lock:
                self._procs.pop(job_id, None)
                self._started.pop(job_id, None)
                self._reasons.pop(job_id, None)
                self._active.discard(job_id)
                if not self._closing:
                    self._task_of.pop(job_id, None)
                closing = self._closing
                if not closing:
                    self._durations.append(self._clock() - began)
        if closing:  # stopped by shutdown(): no result to report; the task resumes when the stack restarts
            log.info("worker stopped by the launcher's shutdown", extra={"task_id": task_id})
            return
        if self._on_finished is not None:
            try:
                self._on_finished(task_id, ok, reason)
            except Exception:
                log.exception("results step failed", extra={"task_id": task_id})
        self.clean_work(task_id)

    def clean_work(self, task_id: str) -> None:
        """Remove what the workers downloaded for `task_id` (its job has ended for good)."""
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir / work_dir_name(task_id), ignore_errors=True)

    def clean_work_except(self, keep: set[str]) -> int:
        """At start: remove the download folders of every task but `keep` (those resuming); returns how many."""
        if self._work_dir is None or not self._work_dir.is_dir():
            return 0
        names = {work_dir_name(t) for t in keep}
        removed = 0
        for entry in self._work_dir.iterdir():
            if entry.name not in names:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def _spawn(self, task_id: str, job_id: str, log_path: Path, began: float) -> int:
        open(log_path, "ab").close()  # the job's log exists from its start, as with a fresh worker
        for tries in range(3):
            size = log_path.stat().st_size
            proc = self._take_spare(task_id, log_path) if tries < 2 else None  # then a fresh worker
            if proc is None:
                return self._attempt(task_id, job_id, log_path, began, None)
            code = self._attempt(task_id, job_id, log_path, began, proc)
            with self._lock:
                stopped = job_id in self._reasons or job_id in self._cancelled or self._closing
            # a warm worker killed before it began (its server killed) wrote nothing to the task's log (its first
            # act is a line there): that was no attempt, the task goes to the next worker
            if code >= 0 or stopped or log_path.stat().st_size > size:
                return code
            log.warning("warm worker %d died before it began the task; another one runs it", proc.pid,
                        extra={"task_id": task_id})
        raise AssertionError("unreachable: the last try starts a fresh worker")

    def _attempt(self, task_id: str, job_id: str, log_path: Path, began: float,
                 proc: WorkerProcess | None) -> int:
        """One worker run of the job: `proc` (a spare already given the task) or a fresh worker; its exit code."""
        if proc is None:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    [*self._worker_cmd, "--task-id", task_id],
                    stdout=out, stderr=subprocess.STDOUT, env=self._env or dict(os.environ), start_new_session=True)
            yield_cpu(proc.pid)  # workers only get CPU time the API does not want
        with self._lock:
            self._procs[job_id] = proc
            self._started[job_id] = self._clock()
            closing = self._closing
        if closing:  # shutdown() ran while this one was starting
            os.killpg(proc.pid, signal.SIGTERM)
        if self._timeout is None:
            return proc.wait()
        try:
            return proc.wait(timeout=max(0.0, began + self._timeout - self._clock()))
        except subprocess.TimeoutExpired:
            log.warning("worker ran past SCANBRIDGE_TASK_TIMEOUT_S; killing it", extra={"task_id": task_id})
            self.kill(job_id, f"the task ran past its deadline (SCANBRIDGE_TASK_TIMEOUT_S={self._timeout:g} s)",
                      retry=False)
            return proc.wait()

    def warm_up(self, count: int) -> int:
        """Switch the warm workers on (SCANBRIDGE_WARM_WORKERS >= 1: one fork server) or leave them off (0);
        returns 1 when on (0 also when the worker command was replaced without a `warm_cmd`)."""
        if count <= 0 or self._warm_cmd is None:
            return 0
        with self._lock:
            if self._closing:
                return 0
            if self._warm_thread is None:
                # the server is started from this one long-lived thread: PR_SET_PDEATHSIG fires when the thread
                # that started a child ends, so it must outlive the server (it ends at shutdown)
                self._warm_thread = threading.Thread(target=self._keep_warm, name="warm-pool", daemon=True)
                self._warm_thread.start()
        return 1

    def warm_pids(self) -> list[int]:
        """The warm-worker server's pid while it runs (for operators and tests)."""
        with self._lock:
            server = self._server
        return [server.pid] if server is not None and server.alive() else []

    def _take_spare(self, task_id: str, log_path: Path) -> WorkerProcess | None:
        """A worker forked for `task_id` by the warm server; None when there is none (start a fresh worker)."""
        with self._lock:
            server = None if self._closing else self._server
        if server is None or not server.alive():
            return None
        worker = server.start(task_id, log_path, [*self._worker_cmd, "--task-id", task_id])
        if worker is not None:
            log.info("warm worker %d takes the task", worker.pid, extra={"task_id": task_id})
        else:
            with self._warm_cond:
                self._warm_cond.notify_all()  # it is gone: the pool starts another
        return worker

    def _keep_warm(self) -> None:
        """The warm pool's thread: keep one live fork server; back off, then give up, when it keeps crashing."""
        failures = 0
        while True:
            with self._lock:
                while True:
                    server = self._server
                    if self._closing or server is None or not server.alive():
                        break
                    if server.stopped():  # SIGSTOPped: the ends of its workers would go unreported
                        break
                    self._warm_cond.wait(timeout=1.0)
                if self._closing:
                    self._server = None
                    if server is not None:
                        server.stop()
                    return
            if server is not None:
                if server.alive():  # stopped: kill it; its workers die with it and are retried
                    log.warning("the warm-worker server %d is stopped; replacing it", server.pid)
                    server.stop(signal.SIGKILL)
                code = server.wait_exit()
                if code > 0:  # it failed on its own (not killed): count it
                    failures += 1
                    log.warning("the warm-worker server exited with code %d", code)
            if failures >= 5:
                log.error("warm workers keep failing at start; tasks start fresh workers from now on")
                return
            if failures:
                time.sleep(min(30.0, 0.5 * 2 ** failures))
            try:
                self._log_dir.mkdir(parents=True, exist_ok=True)
                assert self._warm_cmd is not None
                fresh = ForkServer(self._warm_cmd, env=self._env or dict(os.environ),
                                   log_path=self._log_dir / "warm-workers.log", nice=yield_cpu)
            except Exception:
                log.exception("could not start the warm-worker server")
                failures += 1
                with self._lock:
                    self._server = None
                continue
            with self._lock:
                self._server = fresh
                if self._closing:
                    fresh.stop()
                    return

    def is_alive(self, job_id: str) -> bool:
        """Whether the worker of `job_id` is running now."""
        with self._lock:
            proc = self._procs.get(job_id)
        return proc is not None and proc.poll() is None

    def last_seen(self, job_id: str) -> float | None:
        """The latest sign of life the launcher itself has of `job_id`: now while it waits in the queue or
        between two attempts, the start of its current attempt while a worker runs it, None when unknown."""
        with self._lock:
            if job_id in self._queued:
                return self._clock()
            proc = self._procs.get(job_id)
            if proc is not None and proc.poll() is None:
                return self._started.get(job_id)
            if job_id in self._active:
                return self._clock()
        return None

    def kill(self, job_id: str, reason: str, *, retry: bool) -> bool:
        """SIGKILL the worker of `job_id` (stopped or hung ones too); `retry` lets the launcher start it again
        when attempts are left, else the job ends with `reason`. Returns whether there was a worker."""
        with self._lock:
            proc = self._procs.get(job_id)
            self._reasons[job_id] = reason
            if not retry:
                self._cancelled.add(job_id)
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start, 2 after it...; 0 when `job_id` is not waiting (its worker is starting
        or running, or this launcher does not hold it)."""
        with self._lock:
            for position, queued in enumerate(self._queued, start=1):
                if queued == job_id:
                    return position
        return 0

    def queue_eta_s(self, job_id: str) -> float | None:
        """Seconds until `job_id` should start: the queue ahead of it spread over the workers, each job
        taking the mean of the last jobs' durations; None while no job has ended yet (or it is not waiting)."""
        position = self.queue_position(job_id)
        mean = self.mean_job_s
        with self._lock:
            if not position or mean is None:
                return None
            now = self._clock()
            free = sorted(max(0.0, mean - (now - t)) for t in self._started.values())[: self._max_workers]
        free += [0.0] * (self._max_workers - len(free))
        heapq.heapify(free)
        start = 0.0
        for _ in range(position):
            start = heapq.heappop(free)
            heapq.heappush(free, start + mean)
        return round(start, 1)

    @property
    def mean_job_s(self) -> float | None:
        """The mean duration of the last jobs that ended (what the ETAs assume), or None before the first."""
        with self._lock:
            return sum(self._durations) / len(self._durations) if self._durations else None

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

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> list[str]:
        """Stop every worker and the pool (a worker stopped this way is not retried); returns the ids of the
        tasks whose worker it stopped (they resume when the stack starts again).

        The workers get SIGTERM, and SIGKILL when still there after `grace_s` (a stopped or hung one); it
        returns once every job thread has ended (at most SHUTDOWN_KILL_WAIT_S after the kill), so nothing of
        the launcher runs or logs after it, and `serve` stops moto only once its workers are gone."""
        with self._lock:
            self._closing = True
            procs = list(self._procs.values())
            server, self._server = self._server, None
            self._warm_cond.notify_all()
            stopped = [self._task_of[job] for job in self._active if job in self._task_of]
        self._signal(procs, signal.SIGTERM)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            jobs = set(self._jobs)
        _done, running = wait(jobs, timeout=grace_s)
        if running:
            with self._lock:
                procs = list(self._procs.values())
            self._signal(procs, signal.SIGKILL)
            wait(running, timeout=SHUTDOWN_KILL_WAIT_S)
        if server is not None:
            server.stop()
        return sorted(stopped)

    @staticmethod
    def _signal(procs: list[WorkerProcess], signum: int) -> None:
        """`signum` to the process group of each worker still running."""
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signum)
