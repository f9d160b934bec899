"""Faults against the real local stack: concurrent redeliveries, a flaky platform, a killed worker, no leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from scanbridge.devtools.local_platform import FakePlatform
from tests.conftest import SAMPLE_WEBHOOK, fixture_path
from tests.e2e.test_local_stack import _wait_terminal, start_stack
from tests.e2e.test_restart import _wait, gated

pytestmark = pytest.mark.e2e

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ0YXNrIjoiZTJlIn0.c2VjcmV0LXNpZ25hdHVyZQ"


def test_fifty_concurrent_redeliveries_make_one_task_one_job_one_post(tmp_path: Path) -> None:
    # GIVEN a platform that answers 500 twice before accepting, and the local stack
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}, responses=[500, 500]) as platform, \
            start_stack(platform, tmp_path) as url:
        body = {**SAMPLE_WEBHOOK, "jwt_token": TOKEN, "scans": {"s1": platform.url_for("boxes")}}
        # WHEN 50 identical webhooks arrive at once
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(lambda _i: httpx.post(f"{url}/webhook", json=body, timeout=30), range(50)))
        # THEN all are acknowledged with the same task, exactly one created it
        assert {a.status_code for a in answers} == {202}
        assert {a.json()["task_id"] for a in answers} == {SAMPLE_WEBHOOK["task_id"]}
        assert sum(a.json()["created"] for a in answers) == 1
        task = _wait_terminal(url, SAMPLE_WEBHOOK["task_id"])
        time.sleep(1.0)  # room for any duplicate job to show itself
        # AND one job ran (one download), and one result was delivered after the platform's two 500s
        assert task["status"] == "COMPLETED" and task["attempts"] == 1
        assert platform.downloads == ["boxes"]
        assert len(platform.posts) == 3 and task["delivery"]["attempts"] == 3
        assert len(httpx.get(f"{url}/tasks").json()["tasks"]) == 1
    # AND the token appears in no log line of the API, the moto server or the worker
    logs = [p for p in tmp_path.rglob("*.log")]
    assert logs
    for log in logs:
        assert TOKEN not in log.read_text(errors="replace"), log


def test_killed_worker_is_retried_and_cancel_stops_work(tmp_path: Path, busy_slide: Path) -> None:
    # GIVEN a slide that keeps the nuclei model busy for a while, and a small scan whose first download is held
    # (a warm worker finishes the small scan in well under a second: without the hold it can be gone before
    # it is seen, and there would be nothing to kill)
    with FakePlatform(files={"big": busy_slide}) as platform, gated(fixture_path("boxes.tiff")) as small, \
            start_stack(platform, tmp_path, {"SCANBRIDGE_ALLOWED_SCAN_HOSTS": f"{platform.netloc},{small.netloc}"}) as url:
        # WHEN its worker is killed with SIGKILL while it runs (waiting on that download)
        httpx.post(f"{url}/webhook", json={"task_id": "kill-me", "jwt_token": TOKEN, "scans": {"s": small.url()}})
        pid = _worker_pid("kill-me")
        _wait(lambda: small.requests >= 1, 20, "the held download")
        os.kill(pid, signal.SIGKILL)
        small.gate.set()  # the retry's download (the second) was never held; this frees the first one's thread
        # THEN the launcher retries it and the task still completes, with one POST
        task = _wait_terminal(url, "kill-me")
        assert task["status"] == "COMPLETED", task
        assert small.requests == 2  # the killed attempt's download and the retry's
        assert [p.task_id for p in platform.posts] == ["kill-me"]
        # WHEN a long task is cancelled
        httpx.post(f"{url}/webhook", json={"task_id": "cancel-me", "jwt_token": TOKEN, "model_name": "nuclei",
                                          "scans": {"s": platform.url_for("big")}})
        pid = _worker_pid("cancel-me")
        started = time.monotonic()
        resp = httpx.post(f"{url}/tasks/cancel-me/cancel", timeout=30)
        # THEN it is CANCELLED, the worker is gone within seconds, and the platform was told
        assert resp.status_code == 200 and resp.json()["status"] == "CANCELLED"
        while _alive(pid) and time.monotonic() - started < 10:
            time.sleep(0.1)
        assert not _alive(pid)
        cancelled = [p for p in platform.posts if p.task_id == "cancel-me"]
        assert len(cancelled) == 1
        assert cancelled[0].body["scanResults"][0]["results"]["report"]["summary"]["Error code"] == "TASK_CANCELLED"
        assert httpx.get(f"{url}/tasks/cancel-me").json()["status"] == "CANCELLED"


def _worker_pid(task_id: str, timeout_s: float = 20) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", f"scanbridge.entrypoints.worker --task-id {task_id}"],
                             check=False, capture_output=True, text=True).stdout.split()
        if out:
            return int(out[0])
        time.sleep(0.05)
    raise AssertionError(f"no worker process for {task_id}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive for our purpose
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
