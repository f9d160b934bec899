"""`scanbridge serve`: a worker SIGKILLed mid-scan is retried and resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from scanbridge.devtools.local_platform import FakePlatform
from tests.e2e.test_local_stack import _wait_terminal, start_stack
from tests.e2e.test_reliability import TOKEN, _worker_pid

pytestmark = pytest.mark.e2e


def test_a_worker_killed_mid_scan_resumes_from_the_tiles_it_finished(tmp_path: Path, busy_slide: Path) -> None:
    # GIVEN a slide that keeps the nuclei model busy for a while, and a stack checkpointing every 0.2 s
    with FakePlatform(files={"s": busy_slide}) as platform, \
            start_stack(platform, tmp_path, {"SCANBRIDGE_CHECKPOINT_INTERVAL_S": "0.2",
                                             "SCANBRIDGE_QC_ENABLED": "false"}) as url:
        httpx.post(f"{url}/webhook", json={"task_id": "resume-me", "jwt_token": TOKEN, "model_name": "nuclei",
                                          "scans": {"s1": platform.url_for("s")}})
        # WHEN its worker is SIGKILLed once a third of the tiles are done
        pid = _worker_pid("resume-me")
        deadline = time.monotonic() + 120
        done_at_kill = 0
        with httpx.Client(timeout=10) as http:  # one client for the poll: httpx.get builds one (~30 ms CPU) a call
            while time.monotonic() < deadline:
                progress = http.get(f"{url}/tasks/resume-me").json()["scans"]["s1"]["progress"]
                if progress["tiles_total"] and progress["tiles_done"] >= progress["tiles_total"] / 3:
                    done_at_kill = progress["tiles_done"]
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.2)
        assert done_at_kill, "the scan never got a third of the way"
        task = _wait_terminal(url, "resume-me", timeout_s=300)
    # THEN the retried worker resumed from a checkpoint (not tile 0) and the task completed with one POST
    assert task["status"] == "COMPLETED", task
    assert [p.task_id for p in platform.posts] == ["resume-me"]
    resumed = []
    for log in (tmp_path / "data" / "logs").glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            match = re.search(r"resuming a scan: (\d+) of (\d+) tiles already done", line)
            if match:
                resumed.append((int(match[1]), int(match[2])))
    assert len(resumed) == 1, resumed
    done, total = resumed[0]
    print(f"killed at {done_at_kill} tiles done; resumed from {done} of {total}")
    assert 0 < done <= done_at_kill + 16 and total == task["scans"]["s1"]["progress"]["tiles_total"], (resumed, task)
    assert json.loads(json.dumps(platform.posts[0].body))["scanResults"][0]["results"]["nuclei_count"] > 0
