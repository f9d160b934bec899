"""`scanbridge serve`: the API, a moto server (DynamoDB, S3, KMS) and the local worker launcher in one tree."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

log = logging.getLogger("scanbridge.serve")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


#: `python -m moto.server`, without werkzeug's access log: formatting and writing one line per request (to
#: /dev/null) took a fifth of the moto process's CPU, which every acknowledgement waits on locally
MOTO_MAIN = ("import logging, sys; logging.getLogger('werkzeug').setLevel(logging.WARNING); "
             "from moto.server import main; main(sys.argv[1:])")


class MotoProcess:
    """A moto server in a child process (its own interpreter, so workers' traffic never holds the API's GIL)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen([sys.executable, "-c", MOTO_MAIN, "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("the moto server did not start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the moto server did not start within 30 s")

    def stop(self) -> None:
        """Stop the server (it holds no state worth keeping)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


def start_moto() -> tuple[Any, str]:
    """A moto server on a free loopback port; returns it and its endpoint URL."""
    server = MotoProcess()
    return server, server.url


def serve(host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run the local stack until Ctrl-C."""
    import uvicorn

    from scanbridge.bootstrap import bootstrap
    from scanbridge.config import Settings, get_settings
    from scanbridge.entrypoints.http.app import create_app
    from scanbridge.logs import setup_logging

    setup_logging("scanbridge-local", os.environ.get("SCANBRIDGE_LOG_LEVEL", "INFO"))
    moto, endpoint = start_moto()
    # Children (worker subprocesses) inherit these, so they reach the same moto server.
    os.environ["SCANBRIDGE_AWS_ENDPOINT_URL"] = endpoint
    os.environ.setdefault("SCANBRIDGE_LAUNCHER", "local")
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    get_settings.cache_clear()
    settings: Settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["SCANBRIDGE_DATA_DIR"] = str(settings.data_dir.resolve())
    container = bootstrap(settings, provision=True)
    if not settings.platform_url:
        log.warning("SCANBRIDGE_PLATFORM_URL is not set: results cannot be delivered")
    log.info("moto (DynamoDB, S3, KMS) at %s; data in %s; up to %d workers", endpoint,
             settings.data_dir.resolve(), settings.max_workers)
    print(f"scanbridge serving on http://{host}:{port}  (docs: http://{host}:{port}/docs)", flush=True)
    from scanbridge.services.reaper import Reaper

    stop = threading.Event()
    is_alive = getattr(container.launcher, "is_alive", lambda _job: False)
    reaper = Reaper(container.tasks, container.delivery, stale_after_s=settings.stale_after_s, is_alive=is_alive)
    threading.Thread(target=reaper.run_every, args=(max(1.0, settings.stale_after_s / 4), stop),
                     name="reaper", daemon=True).start()
    try:
        uvicorn.run(create_app(container), host=host, port=port, log_level="warning")
    finally:
        stop.set()
        shutdown = getattr(container.launcher, "shutdown", None)
        if shutdown:
            shutdown()
        moto.stop()
        print("scanbridge stopped", flush=True)
    return 0
