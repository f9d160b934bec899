"""A fork server for the local launcher's warm workers: one process imports the stack once, then forks a
fresh child per task (crash-isolated: each task is its own process, forked from a process that never ran one).

Protocol over the server's pipes (one line each): the launcher writes `{"task_id": ..., "log": PATH}` to its
stdin; the server forks, answers `started PID` on its stdout, and `exit PID CODE` when that child ends (CODE
as `Popen.returncode`: negative for a signal). The child puts itself in its own process group (the launcher
`killpg`s it, as a fresh worker), asks for SIGKILL when the server dies (the server itself dies with
`scanbridge serve`: lifetime.py), points stdout/stderr at PATH, runs the task and `_exit`s. The server never
starts a thread, so forking it is safe. EOF on stdin: the server exits once its children have.
Hand-written rather than `multiprocessing`'s forkserver: that one needs picklable callables and gives no
pid before the child runs, nor the launcher's per-task log and process-group semantics.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanbridge.adapters.local.lifetime import die_with_parent

log = logging.getLogger(__name__)

#: How long an order waits for the server's `started` answer (it may still be importing) before the server
#: is taken for hung: it is killed and the task starts a fresh worker.
START_TIMEOUT_S = 120.0


#: Without pidfds (Linux < 5.3) a child's end is looked for this often.
EXIT_POLL_S = 0.05


def serve_forks(run: Callable[[dict[str, Any]], int], stdin_fd: int = 0) -> int:
    """The server's loop: fork `run(order)` per order line; report `started`/`exit`. Returns after EOF
    once its children have ended. Reads the raw fd (a buffered reader would hide lines from select).

    It sleeps in `select` on stdin and on a pidfd per child, so a child's end is reported when it happens
    (the task's results step starts then), not at the next poll; without pidfds it polls every EXIT_POLL_S.
    """
    out = sys.stdout
    me = os.getpid()
    children: dict[int, int | None] = {}  # pid -> its pidfd (None: polled)
    pending = b""
    open_input = True
    while open_input or children:
        fds = [stdin_fd] if open_input else []
        fds += [fd for fd in children.values() if fd is not None]
        polled = any(fd is None for fd in children.values())
        ready = select.select(fds, [], [], EXIT_POLL_S if polled or not fds else None)[0] if fds else []
        if not fds:
            time.sleep(EXIT_POLL_S)
        if stdin_fd in ready:
            data = os.read(stdin_fd, 65536)
            open_input = bool(data)
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                order = json.loads(line)
                pid = os.fork()
                if pid == 0:  # the task's process
                    _child(run, order, me)
                with contextlib.suppress(OSError):  # as the child does: no window where killpg(pid) finds no group
                    os.setpgid(pid, pid)
                children[pid] = _pidfd(pid)
                print(f"started {pid}", file=out, flush=True)
        _reap(children, out)
    return 0


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when `pid` ends (None where the kernel has none)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _reap(children: dict[int, int | None], out: Any) -> None:
    """Report (`exit PID CODE`) and forget every child that has ended."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            for fd in children.values():
                if fd is not None:
                    os.close(fd)
            children.clear()
            return
        if pid == 0:
            return
        fd = children.pop(pid, None)
        if fd is not None:
            os.close(fd)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", file=out, flush=True)


def _child(run: Callable[[dict[str, Any]], int], order: dict[str, Any], server: int) -> None:
    """In the forked child: own process group, die with the server, output to the task's log, run, exit."""
    code = 70
    try:
        os.setpgid(0, 0)
        die_with_parent(server)
        fd = os.open(str(order["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if order.get("argv"):
            set_cmdline([str(a) for a in order["argv"]])
        print(f"warm worker {os.getpid()} took task {order['task_id']}", flush=True)
        code = run(order)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - whatever happens, this process must not return to the loop
        with contextlib.suppress(Exception):
            print(f"warm worker failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            # no interpreter teardown: everything is stored and logged, and the server's state is not ours
            os._exit(code)


#: Room the server's own command line leaves for its workers' (`set_cmdline`): an argument of spaces.
TITLE_ROOM = " " * 240


def set_cmdline(argv: list[str]) -> bool:
    """Show `argv` as this process's command line (/proc/PID/cmdline, ps, pgrep -f), as a fresh worker's
    would read, so operators and tests find a task's worker by `--task-id ID`. Linux: the kernel reads the
    original argv area (arg_start..arg_end in /proc/self/stat), rewritten here in place, truncated to it.
    Hand-written (~10 lines) rather than the setproctitle package, which is not a dependency."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
    except (OSError, IndexError, ValueError):
        return False
    room = end - start
    if room <= 1:
        return False
    data = b"\0".join(a.encode() for a in argv)[: room - 1]
    ctypes.memmove(start, data + b"\0" * (room - len(data)), room)
    return True


class ForkedWorker:
    """The launcher's handle on one forked child: `pid`, `poll()`, `wait(timeout)`, `returncode` as Popen's."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._done = threading.Event()

    def poll(self) -> int | None:
        """The exit code once the server has reported it, else None."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child's end is reported (subprocess.TimeoutExpired past `timeout`)."""
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def ended(self, code: int) -> None:
        """Record the child's exit code (from the server, or -SIGKILL when the server is gone)."""
        if self.returncode is None:
            self.returncode = code
            self._done.set()


class ForkServer:
    """Runs the fork server `cmd` (its own session, idle priority) and hands out `ForkedWorker`s."""

    def __init__(self, cmd: list[str], *, env: dict[str, str], log_path: Path,
                 nice: Callable[[int], object] = lambda pid: None) -> None:
        with open(log_path, "ab") as err:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                          env=env, start_new_session=True)
        nice(self._proc.pid)  # before it forks anything: its children inherit the scheduling policy
        self._args = cmd
        self._order_lock = threading.Lock()
        self._lock = threading.Lock()
        self._children: dict[int, ForkedWorker] = {}
        self._started: list[ForkedWorker] = []
        self._answer = threading.Condition(self._lock)
        self._gone = False
        threading.Thread(target=self._read, name="fork-server-reader", daemon=True).start()

    @property
    def pid(self) -> int:
        """The server's own pid."""
        return self._proc.pid

    def alive(self) -> bool:
        """Whether the server still runs (and answers)."""
        with self._lock:
            return not self._gone and self._proc.poll() is None

    def start(self, task_id: str, log_path: Path, argv: list[str] | None = None) -> ForkedWorker | None:
        """Fork a child for `task_id` writing to `log_path` (shown as `argv`, see `set_cmdline`); None when
        the server is gone or hung (then killed)."""
        order = (json.dumps({"task_id": task_id, "log": str(log_path), "argv": argv or []}) + "\n").encode()
        with self._order_lock:
            with self._lock:
                if self._gone:
                    return None
                self._started.clear()
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(order)
                self._proc.stdin.flush()
            except OSError:
                return None
            with self._lock:
                if not self._answer.wait_for(lambda: self._started or self._gone, timeout=START_TIMEOUT_S):
                    log.warning("the warm-worker server did not answer in %g s; killing it", START_TIMEOUT_S)
                    self._gone = True
                if self._gone or not self._started:
                    self.stop(signal.SIGKILL)
                    return None
                return self._started.pop()

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Its exit code once it has ended (SIGKILLed past `timeout`)."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)
            return self._proc.wait()

    def stopped(self) -> bool:
        """Whether the server is stopped (SIGSTOP: state T in /proc); its children's ends would go unreported."""
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[:1] == ["T"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the server's process group (its children are in their own groups and die with it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            parts = raw.decode(errors="replace").split()
            with self._lock:
                if len(parts) == 2 and parts[0] == "started" and parts[1].isdigit():
                    child = ForkedWorker(int(parts[1]), self._args)
                    self._children[child.pid] = child
                    self._started.append(child)
                    self._answer.notify_all()
                elif len(parts) == 3 and parts[0] == "exit" and parts[1].isdigit():
                    ended = self._children.pop(int(parts[1]), None)
                    if ended is not None:
                        ended.ended(int(parts[2]))
        self._proc.wait()
        with self._lock:
            self._gone = True
            orphans = list(self._children.values())
            self._children.clear()
            self._answer.notify_all()
        for child in orphans:  # they got SIGKILL with the server (PR_SET_PDEATHSIG): killed, so retried
            child.ended(-signal.SIGKILL)
