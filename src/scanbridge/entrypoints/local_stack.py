"""The local stack: a moto server (DynamoDB, S3, KMS, SQS), the container over it and the worker launcher.

`start()` starts it (`scanbridge serve` and the in-process stack of `scanbridge mcp`); `serve()` adds the API.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from scanbridge.heap import freeze_heap

if TYPE_CHECKING:
    from scanbridge.bootstrap import Container

log = logging.getLogger("scanbridge.serve")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


#: the AWS services the local stack asks moto for
MOTO_SERVICES: tuple[Literal["dynamodb", "s3", "kms", "sqs"], ...] = ("dynamodb", "s3", "kms", "sqs")


def moto_main(argv: list[str] | None = None) -> None:
    """moto's server as the local stack runs it: its WSGI app on uvicorn, its services loaded, heap frozen.

    `python -m moto.server` serves with werkzeug's development server, which closes the connection after
    every response (a TCP connect per AWS call for the caller, a new thread for moto) and logs each
    request (to /dev/null here, under the logging lock). Measured per conditional put_item, moto's CPU:
    2.9 ms with that server, 2.2 ms without its log, 1.7 ms on uvicorn (httptools, keep-alive), which
    runs the same app here through a2wsgi's thread pool. Every webhook acknowledgement waits on one
    such put. moto imports a service on its first request; importing them up front lets `freeze_heap`
    take them in.
    """
    import argparse

    import uvicorn
    from a2wsgi import WSGIMiddleware
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    parser = argparse.ArgumentParser(prog="moto_main")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--state-dir", default=None,
                        help="keep the state here (journal + snapshot, adapters/local/journal.py); none: in memory only")
    parser.add_argument("--fsync", action="store_true", help="fsync every journal record (survives power loss)")
    parser.add_argument("--compact-bytes", type=int, default=None, help="snapshot when the journal reaches this size")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server sets it
    for service in MOTO_SERVICES:
        create_backend_app(service)
    app: Any = DomainDispatcherApplication(create_backend_app)
    if args.state_dir:
        from scanbridge.adapters.local.journal import COMPACT_BYTES, StateJournal

        journal = StateJournal(Path(args.state_dir), fsync=args.fsync, compact_bytes=args.compact_bytes or COMPACT_BYTES)
        journal.restore(app)
        app = journal.wrap(app)
    freeze_heap()
    uvicorn.run(WSGIMiddleware(app, workers=8), host=args.host, port=args.port, log_level="warning",
                access_log=False, lifespan="off")


#: moto's process: bound to its parent first (it dies with `serve`, even on SIGKILL), then the server
MOTO_MAIN = ("from scanbridge.adapters.local.lifetime import die_with_parent; die_with_parent({parent}); "
             "from scanbridge.entrypoints.local_stack import moto_main; moto_main()")


class MotoStartError(RuntimeError):
    """The moto server exited before it listened; the message is its own last word (e.g. the state folder is
    another `serve`'s)."""


def _last_error(log_text: str) -> str:
    """The last line of a traceback in `log_text` (``SomeError: message``), without the exception's name."""
    lines = [line for line in log_text.splitlines() if line.strip() and not line.startswith((" ", "\t"))]
    last = lines[-1] if lines else ""
    name, sep, message = last.partition(": ")
    return message if sep and name.replace(".", "").replace("_", "").isalnum() else last


class MotoProcess:
    """A moto server in a child process (its own interpreter, so workers' traffic never holds the API's GIL)."""

    def __init__(self, state_dir: Path | None = None, *, fsync: bool = False, compact_bytes: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", MOTO_MAIN.format(parent=os.getpid()), "-H", "127.0.0.1", "-p", str(self.port)]
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--state-dir", str(state_dir)] + (["--fsync"] if fsync else [])
            cmd += ["--compact-bytes", str(compact_bytes)] if compact_bytes else []
        # moto's own output goes to the state folder's log when there is one (replay warnings), else nowhere
        out = open(state_dir / "moto.log", "ab") if state_dir is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if state_dir is not None:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 120  # a long journal takes a while to replay
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                why = _last_error((state_dir / "moto.log").read_text(errors="replace")) if state_dir else ""
                raise MotoStartError(f"the moto server did not start{': ' + why if why else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the moto server did not start within 120 s")

    def stop(self) -> None:
        """Stop the server (its state, when it has a state folder, is already in the journal)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


def start_moto(state_dir: Path | None = None, *, fsync: bool = False) -> tuple[MotoProcess, str]:
    """A moto server on a free loopback port (keeping its state in `state_dir`); returns it and its URL."""
    server = MotoProcess(state_dir, fsync=fsync)
    return server, server.url


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port, bound as uvicorn binds (OSError when busy or not local)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """What `serve` says when it cannot listen on host:port."""
    why = ("the port is already in use (another scanbridge serve? choose another port with --port)"
           if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc))
    return f"scanbridge serve: cannot listen on {host}:{port}: {why}"


def run_api(app: Any, sock: socket.socket, announce: str) -> None:
    """Serve `app` on the listening `sock` with uvicorn; print `announce` once it accepts requests."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                print(announce, flush=True)

    AnnouncingServer(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@dataclass
class LocalStack:
    """A started local stack: the moto server, the container over it and the reaper; `stop()` ends it."""

    container: Container
    endpoint: str  # the moto server's URL (workers reach it through SCANBRIDGE_AWS_ENDPOINT_URL)
    moto: MotoProcess
    reaper_stop: threading.Event

    def stop(self) -> None:
        """Stop the reaper, the workers (the tasks they ran resume at the next start) and moto."""
        from scanbridge.services.recovery import stopped_cleanly

        self.reaper_stop.set()
        stopped = self.container.launcher.shutdown()
        if stopped:
            stopped_cleanly(self.container.tasks, stopped)
        self.moto.stop()


def start(*, durable: bool = True) -> LocalStack:
    """Start moto, build the container over it (tables provisioned) and start the reaper and the warm workers.

    `durable` (`scanbridge serve`): the state is kept as SCANBRIDGE_LOCAL_STATE says (under
    `{data_dir}/state`), and what the last stop left in flight is resumed (its stale download folders
    removed); otherwise (the in-process stack of `scanbridge mcp`) moto keeps it in memory only. The
    environment is set so that the worker subprocesses reach the same moto server and data folder.
    """
    from scanbridge.bootstrap import bootstrap
    from scanbridge.config import get_settings  # here, not at the top: moto's process imports this module too
    from scanbridge.services.reaper import Reaper
    from scanbridge.services.recovery import recover

    get_settings.cache_clear()
    first = get_settings()
    data_dir = first.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    state = data_dir / "state" if durable and first.local_state != "memory" else None
    moto, endpoint = start_moto(state, fsync=durable and first.local_state == "journal-fsync")
    # Children (worker subprocesses) inherit these, so they reach the same moto server.
    os.environ["SCANBRIDGE_AWS_ENDPOINT_URL"] = endpoint
    os.environ.setdefault("SCANBRIDGE_LAUNCHER", "local")
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    os.environ["SCANBRIDGE_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    settings = get_settings()
    stop = threading.Event()
    try:
        container = bootstrap(settings, provision=True)
        container.launcher.warm_up(settings.warm_workers)  # spare workers import the stack while the stack starts
    except BaseException:
        moto.stop()
        raise
    stack = LocalStack(container, endpoint, moto, stop)
    try:
        if not settings.platform_url:
            log.warning("SCANBRIDGE_PLATFORM_URL is not set: results are kept here, not posted (tasks end "
                        "COMPLETED, delivery skipped: no platform configured)")
        if durable:
            recovered = recover(container.tasks, container.launcher, container.delivery,
                                max_attempts=settings.worker_retries + 1)
            # results steps the stop cut short: their leases were the dead process's, so they are tried now
            container.delivery.deliver_due(after_restart=True)
            cleaned = container.launcher.clean_work_except(set(recovered.resubmitted))
            log.info("moto (DynamoDB, S3, KMS) at %s; data in %s; up to %d workers; %s; %d stale download "
                     "folder(s) removed", endpoint, settings.data_dir, settings.max_workers, recovered.summary(),
                     cleaned)
        else:
            log.info("in-process local stack: moto at %s, data in %s", endpoint, settings.data_dir)
        reaper = Reaper(container.tasks, container.delivery, stale_after_s=settings.stale_after_s,
                        launcher=container.launcher, task_timeout_s=settings.task_timeout_s)
        threading.Thread(target=reaper.run_every, args=(max(1.0, min(settings.stale_after_s / 4, 30.0)), stop),
                         name="reaper", daemon=True).start()
    except BaseException:
        stack.stop()
        raise
    return stack


def serve(host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run the local stack until Ctrl-C (or SIGTERM); its state is kept under `{data_dir}/state`.

    The port is taken first (a busy one: a clear message, exit 1, nothing started); the URL is printed once
    the API accepts requests."""
    from scanbridge.entrypoints.http.app import create_app
    from scanbridge.logs import setup_logging

    setup_logging("scanbridge-local", os.environ.get("SCANBRIDGE_LOG_LEVEL", "INFO"),
                  os.environ.get("SCANBRIDGE_LOG_FORMAT", "auto"))
    try:
        listener = listen(host, port)
    except OSError as exc:
        print(cannot_listen(host, port, exc), file=sys.stderr, flush=True)
        return 1
    port = int(listener.getsockname()[1])  # --port 0: the free port it got
    stack: LocalStack | None = None
    try:
        try:
            stack = start()
        except MotoStartError as exc:  # e.g. another serve's state folder: one line, no traceback, no "stopped"
            print(f"scanbridge serve: {exc}", file=sys.stderr, flush=True)
            return 1
        app = create_app(stack.container)
        freeze_heap()
        # uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler found before it
        # ran: the default one would end the process before the clean-up below; this one lets it run
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        run_api(app, listener, f"scanbridge serving on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    finally:
        listener.close()
        if stack is not None:
            stack.stop()
            print("scanbridge stopped", flush=True)
    return 0
