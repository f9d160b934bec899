"""`scanbridge serve` as a child process: for the end-to-end tests, the load benchmark and demos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from scanbridge.entrypoints.local_stack import free_port


class ServeProcess:
    """One `scanbridge serve` started in its own session (so its whole process group can be signalled).

    `env` is added to this process's environment; the log goes to `workdir/serve.log` (appended, so a
    restart on the same folder keeps the earlier run's lines). `port` defaults to a free one.
    """

    def __init__(self, workdir: Path, env: dict[str, str], *, port: int | None = None,
                 start_timeout_s: float = 60.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "serve.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        if "SCANBRIDGE_AWS_ENDPOINT_URL" not in env:
            full_env.pop("SCANBRIDGE_AWS_ENDPOINT_URL", None)  # serve starts its own moto
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scanbridge.entrypoints.cli", "serve", "--port", str(self.port)],
                cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_healthy(start_timeout_s)
        except BaseException:
            self.kill_tree()
            raise

    def _wait_healthy(self, timeout_s: float) -> None:
        """Poll /health with one client: `httpx.get` builds a client (its SSL context) per call, ~30 ms of CPU."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=1) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"scanbridge serve exited early:\n{self.log_path.read_text()}")
                try:
                    if http.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"scanbridge serve did not answer within {timeout_s} s")
                time.sleep(0.2)

    @property
    def pid(self) -> int:
        """The serve process's id (also its process group's)."""
        return self.proc.pid

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 20.0) -> int:
        """Send `sig` to serve alone (SIGINT: as Ctrl-C would) and wait; killed if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill_tree(self) -> None:
        """SIGKILL serve's whole process group at once (serve and moto; workers die with serve)."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextmanager
def serve_subprocess(workdir: Path, env: dict[str, str], *, start_timeout_s: float = 60.0,
                     stop_timeout_s: float = 20.0) -> Iterator[str]:
    """Run `scanbridge serve` on a free loopback port in `workdir` (log: workdir/serve.log); yields its URL.

    `env` is added to this process's environment. The stack is stopped with SIGINT, as Ctrl-C would.
    """
    server = ServeProcess(workdir, env, start_timeout_s=start_timeout_s)
    try:
        yield server.url
    finally:
        server.stop(signal.SIGINT, stop_timeout_s)
