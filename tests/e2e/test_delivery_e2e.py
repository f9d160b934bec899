"""`scanbridge serve` against a platform that is down when the results are ready and back a while later."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.devtools.stack import serve_subprocess
from scanbridge.services.delivery import delivery_id_for
from tests.conftest import fixture_path
from tests.e2e.test_local_stack import _wait_terminal
from tests.e2e.test_reliability import TOKEN
from tests.integration.test_delivery_schedule import Platform, free_port

pytestmark = pytest.mark.e2e


def test_results_reach_a_platform_that_comes_back_and_the_worker_slot_is_not_held(tmp_path: Path) -> None:
    # GIVEN scans served by a loopback file host, and a results endpoint where nothing listens yet
    port = free_port()
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}) as files, serve_subprocess(tmp_path, {
            "SCANBRIDGE_PLATFORM_URL": f"http://127.0.0.1:{port}", "SCANBRIDGE_ALLOWED_SCAN_HOSTS": files.netloc,
            "SCANBRIDGE_DATA_DIR": str(tmp_path / "data"), "SCANBRIDGE_MAX_WORKERS": "1",
            "SCANBRIDGE_DELIVERY_ATTEMPTS": "2", "SCANBRIDGE_DELIVERY_BACKOFF_S": "0.5",
            "SCANBRIDGE_DELIVERY_MAX_BACKOFF_S": "3"}) as url:
        # WHEN two tasks arrive one after the other (one worker slot) while the platform is down
        for tid in ("down-1", "down-2"):
            resp = httpx.post(f"{url}/webhook", json={"task_id": tid, "jwt_token": TOKEN,
                                                      "scans": {"s": files.url_for("boxes")}})
            assert resp.status_code == 202
        # THEN both get analysed (the first one's undelivered results do not hold the slot) and wait, DELIVERING
        deadline = time.monotonic() + 90
        states: dict[str, str] = {}
        http = httpx.Client(timeout=10)  # one client for the polls: httpx.get builds one (~30 ms CPU) a call
        while time.monotonic() < deadline:
            states = {tid: http.get(f"{url}/tasks/{tid}").json()["status"] for tid in ("down-1", "down-2")}
            if all(s == "DELIVERING" for s in states.values()):
                break
            time.sleep(0.3)
        assert all(s == "DELIVERING" for s in states.values()), states
        # (the first task's burst of two tries may still be running when the second turns DELIVERING: the
        # warm worker pool makes the second task fast; wait, bounded, for the burst to be recorded)
        waiting: dict[str, Any] = {}
        while time.monotonic() < deadline:
            waiting = http.get(f"{url}/tasks/down-1").json()["delivery"]
            if waiting.get("attempts", 0) >= 2 and waiting.get("next_attempt_at"):
                break
            time.sleep(0.2)
        http.close()
        assert waiting["attempts"] >= 2 and waiting["next_attempt_at"] and "unreachable" in waiting["last_error"]
        # WHEN the platform comes back
        with Platform(port=port) as platform:
            done = {tid: _wait_terminal(url, tid, timeout_s=60) for tid in ("down-1", "down-2")}
            time.sleep(4)  # a retry after the success would show up here
    # THEN each task completed with exactly one POST, carrying its stable delivery id
    assert {tid: t["status"] for tid, t in done.items()} == {"down-1": "COMPLETED", "down-2": "COMPLETED"}
    ids = sorted(p["headers"]["webhook-id"] for p in platform.posts)
    assert ids == sorted([delivery_id_for("down-1"), delivery_id_for("down-2")])
    assert all(p["headers"]["idempotency-key"] == p["headers"]["webhook-id"] for p in platform.posts)
    assert done["down-1"]["delivery"]["delivery_id"] == delivery_id_for("down-1")
