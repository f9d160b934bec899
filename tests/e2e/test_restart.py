"""`scanbridge serve` killed and restarted on the same data dir: nothing acknowledged is lost, nothing is orphaned."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from scanbridge.client.files import LoopbackServer
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.devtools.stack import ServeProcess
from tests.conftest import SAMPLE_WEBHOOK, fixture_path

pytestmark = pytest.mark.e2e

TERMINAL = ("COMPLETED", "FAILED", "DELIVERY_FAILED", "CANCELLED")


class GatedScans(LoopbackServer):
    """Serves one file on loopback; the first `held` downloads wait (headers unsent) until `gate` is set."""

    def __init__(self, path: Path, held: int = 1) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.requests = 0
        self.held = held
        self.data = path.read_bytes()
        self.start()

    def handle_get(self, request: BaseHTTPRequestHandler) -> None:
        self.requests += 1
        if self.requests <= self.held:
            self.gate.wait(60)
        with suppress(OSError):  # the worker that asked is gone
            self.reply(request, 200, self.data)

    def url(self) -> str:
        """The scan's URL."""
        return f"{self.base_url}/scan.tiff"

    def close(self) -> None:
        """Release held requests and stop."""
        self.gate.set()
        self.stop()


@contextmanager
def gated(path: Path, held: int = 1) -> Iterator[GatedScans]:
    server = GatedScans(path, held)
    try:
        yield server
    finally:
        server.close()


def _env(platform: FakePlatform, scans: GatedScans, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"SCANBRIDGE_PLATFORM_URL": platform.base_url,
            "SCANBRIDGE_ALLOWED_SCAN_HOSTS": f"{platform.netloc},{scans.netloc}",
            "SCANBRIDGE_DATA_DIR": str(tmp_path / "data"), "SCANBRIDGE_MAX_WORKERS": "2",
            "SCANBRIDGE_DELIVERY_BACKOFF_S": "0.05", "SCANBRIDGE_HEARTBEAT_INTERVAL_S": "0.5", **extra}


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process, from /proc (psutil is not a dependency)."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], cmd)
    return table


def _descendants(root: int) -> set[int]:
    table = _proc_table()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _s, _c) in table.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def _live(pids: set[int]) -> set[int]:
    table = _proc_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def _worker_pids(task_id: str) -> set[int]:
    return {pid for pid, (_pp, state, cmd) in _proc_table().items()
            if f"--task-id {task_id}" in cmd and "lifetime" in cmd and state != "Z"}


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _task(url: str, task_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/tasks/{task_id}", timeout=10).json())


def _wait_terminal(url: str, task_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """Poll with one client (`httpx.get` builds one per call: ~30 ms of CPU each, every 0.1 s)."""
    with httpx.Client(timeout=10) as http:
        _wait(lambda: http.get(f"{url}/tasks/{task_id}").json().get("status") in TERMINAL, timeout_s,
              f"{task_id} to end")
    return _task(url, task_id)


def _send(url: str, task_id: str, scan_url: str) -> None:
    body = {**SAMPLE_WEBHOOK, "task_id": task_id, "jwt_token": f"jwt-{task_id}", "scans": {"s1": scan_url}}
    resp = httpx.post(f"{url}/webhook", json=body, timeout=10)
    assert resp.status_code == 202, resp.text


def test_sigkill_of_the_whole_tree_then_restart_loses_nothing_and_posts_once(tmp_path: Path) -> None:
    # GIVEN the local stack with one finished task and one whose download is still in flight
    boxes = fixture_path("boxes.tiff")
    with FakePlatform(files={"boxes": boxes}) as platform, gated(boxes) as scans:
        env = _env(platform, scans, tmp_path)
        serve = ServeProcess(tmp_path, env)
        try:
            _send(serve.url, "done", platform.url_for("boxes"))
            _send(serve.url, "inflight", scans.url())
            assert _wait_terminal(serve.url, "done")["status"] == "COMPLETED"
            posted = httpx.get(f"{serve.url}/tasks/done/results").json()
            _wait(lambda: scans.requests >= 1 and _worker_pids("inflight"), 20, "the in-flight download")
            old_tree = {serve.pid} | _descendants(serve.pid) | _worker_pids("inflight")
            assert _task(serve.url, "inflight")["status"] in ("QUEUED", "DOWNLOADING")
            # WHEN the whole process group is SIGKILLed at once (no clean-up runs anywhere)
            serve.kill_tree()
            # THEN nothing of the old tree survives (the worker, in its own session, died with serve)
            _wait(lambda: not _live(old_tree), 5, "the old tree to die")
        finally:
            serve.kill_tree()
        # WHEN the stack starts again on the same data dir, with the scan now downloadable
        scans.gate.set()
        serve = ServeProcess(tmp_path, env)
        try:
            # THEN every task is listed, newest first, and the finished one's results are as posted
            listed = [t["task_id"] for t in httpx.get(f"{serve.url}/tasks").json()["tasks"]]
            assert listed == ["inflight", "done"]
            assert httpx.get(f"{serve.url}/tasks/done/results").json() == posted
            assert _task(serve.url, "done")["status"] == "COMPLETED"
            # AND the interrupted one resumes and ends, and the platform got exactly one POST per task
            ended = _wait_terminal(serve.url, "inflight")
            assert ended["status"] == "COMPLETED" or ended["error_code"] == "WORKER_FAILED", ended
            time.sleep(1.0)  # room for a duplicate POST to show itself
            assert sorted(p.task_id for p in platform.posts) == ["done", "inflight"]
            assert next(p for p in platform.posts if p.task_id == "inflight").authorization == "Bearer jwt-inflight"
            # AND the downloads of finished tasks are gone
            work = tmp_path / "data" / "work"
            assert not work.exists() or not any(work.iterdir())
        finally:
            serve.stop(signal.SIGTERM)


def test_a_stopped_worker_is_killed_and_its_task_ends_within_the_deadline(tmp_path: Path) -> None:
    # GIVEN the stack with 2 s staleness, no retries, and a task whose worker is then SIGSTOPped mid-download
    boxes = fixture_path("boxes.tiff")
    with FakePlatform(files={"boxes": boxes}) as platform, gated(boxes) as scans:
        serve = ServeProcess(tmp_path, _env(platform, scans, tmp_path, SCANBRIDGE_STALE_AFTER_S="2",
                                            SCANBRIDGE_WORKER_RETRIES="0"))
        try:
            _send(serve.url, "hung", scans.url())
            _wait(lambda: scans.requests >= 1 and _worker_pids("hung"), 20, "the download")
            workers = _worker_pids("hung")
            for pid in workers:
                import os

                os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            # WHEN the reaper sees its heartbeat go stale while the process still exists
            task = _wait_terminal(serve.url, "hung", timeout_s=40)
            # THEN it ends FAILED as WORKER_FAILED within staleness + a reaper pass (~3 s; under 30 s whatever
            # the load, far short of the default 120 s staleness), the platform told once, and the stopped
            # process is gone
            assert time.monotonic() - stopped < 30
            assert task["status"] == "FAILED" and task["error_code"] == "WORKER_FAILED", task
            _wait(lambda: not _live(workers), 5, "the stopped worker to be killed")
            platform.wait_for_posts(1, timeout_s=5)
            assert [p.task_id for p in platform.posts] == ["hung"]
        finally:
            serve.stop(signal.SIGTERM)


def test_stopping_serve_never_orphans_moto_or_workers(tmp_path: Path) -> None:
    # GIVEN the stack with a worker busy on a held download
    boxes = fixture_path("boxes.tiff")
    with FakePlatform(files={"boxes": boxes}) as platform, gated(boxes, held=2) as scans:
        env = _env(platform, scans, tmp_path)
        for how in (signal.SIGTERM, signal.SIGKILL):
            serve = ServeProcess(tmp_path, env)
            try:
                _send(serve.url, f"busy-{how.name}", scans.url())
                _wait(lambda how=how: _worker_pids(f"busy-{how.name}"), 20, "the worker")
                children = _descendants(serve.pid) | _worker_pids(f"busy-{how.name}")
                assert any("moto_main" in _proc_table().get(p, (0, "", ""))[2] for p in children)
                # WHEN serve alone gets SIGTERM (a clean stop), then in a second run SIGKILL (no clean-up)
                serve.stop(how)
                # THEN moto and the worker are gone within seconds: nothing left running
                _wait(lambda children=children: not _live(children), 5, f"children to die after {how.name}")
            finally:
                serve.kill_tree()
        # AND after the clean stop the log says so
        assert "scanbridge stopped" in (tmp_path / "serve.log").read_text()
