"""`scanbridge serve` as a child process: for the end-to-end tests, the load benchmark and demos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from scanbridge.entrypoints.local_stack import free_port


@contextmanager
def serve_subprocess(workdir: Path, env: dict[str, str], *, start_timeout_s: float = 60.0,
                     stop_timeout_s: float = 20.0) -> Iterator[str]:
    """Run `scanbridge serve` on a free loopback port in `workdir` (log: workdir/serve.log); yields its URL.

    `env` is added to this process's environment. The stack is stopped with SIGINT, as Ctrl-C would.
    """
    port = free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    if "SCANBRIDGE_AWS_ENDPOINT_URL" not in env:
        full_env.pop("SCANBRIDGE_AWS_ENDPOINT_URL", None)  # serve starts its own moto
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "scanbridge.entrypoints.cli", "serve", "--port", str(port)],
                                cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"scanbridge serve exited early:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"scanbridge serve did not answer within {start_timeout_s} s")
                time.sleep(0.2)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
