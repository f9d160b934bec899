"""The quick starts typed as written: the marked blocks of the README and docs/ run in a shell, from a folder
that has `../shared/fixtures` beside it as a checkout does, on the ports the blocks name (8000, 8901, 8902).

- README "See the whole loop": the bridge in one terminal, the stand-in platform in the other, then its
  generated slide through the nuclei model; then the /v1/infer + evaluate block of
  docs/inference-and-evaluation.md against the same bridge.
- docs/live-status.md: a bridge with no platform and `scanbridge submit --wait` (#20 item 2).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES, fixture_path

# the blocks name fixed ports (8000, 8901, 8902): under xdist these tests share one worker, one at a time
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("documented-ports")]

REPO = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"


def quickstart_blocks(text: str) -> dict[str, str]:
    """The fenced bash blocks marked `<!-- quickstart: NAME -->` in a markdown text, by name."""
    found = re.findall(r"<!-- quickstart: ([a-z-]+) -->\n```bash\n(.*?)```", text, flags=re.DOTALL)
    return dict(found)


def _shell_env() -> dict[str, str]:
    """A newcomer's shell: this environment without any SCANBRIDGE_* setting (the blocks set their own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SCANBRIDGE_")} | {"PYTHONUNBUFFERED": "1"}


def _checkout(tmp_path: Path, ports: tuple[int, ...]) -> Path:
    """A folder laid out as a checkout (../shared/fixtures beside it), once the blocks' ports are free."""
    fixture_path("boxes.tiff")
    if shutil.which("scanbridge") is None:
        pytest.fail("the scanbridge command is not on PATH (pip install -e '.[dev]')")
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port}, which the documented commands use, is taken on this machine")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "fixtures").symlink_to(FIXTURES)
    return checkout


@contextmanager
def terminal_1(block: str, checkout: Path) -> Iterator[list[str]]:
    """Run a bridge block until it announces its URL; Ctrl-C after. Yields its output lines so far."""
    bridge = subprocess.Popen(["bash", "-c", block], cwd=checkout, env=_shell_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in bridge.stdout or []:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    log: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any("scanbridge serving on" in line for line in log):
            assert bridge.poll() is None and time.monotonic() < deadline, "".join(log)
            try:
                log.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        yield log
    finally:
        if bridge.poll() is None:
            os.killpg(bridge.pid, signal.SIGINT)
        try:
            bridge.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(bridge.pid, signal.SIGKILL)
            bridge.wait()
    time.sleep(0.2)
    while not lines.empty():
        log.append(lines.get())
    assert "scanbridge stopped" in "".join(log), "".join(log)[-3000:]


def terminal_2(block: str, checkout: Path, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a block to its end (`bash -e`: a failing line fails it)."""
    return subprocess.run(["bash", "-e", "-c", block], cwd=checkout, env=_shell_env(), capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def test_the_blocks_are_marked() -> None:
    # GIVEN the README and the pages / THEN each quick start is marked, on the ports it names
    readme = quickstart_blocks((REPO / "README.md").read_text())
    assert set(readme) == {"bridge", "platform", "nuclei"}
    assert "--model nuclei" in readme["nuclei"] and "make-slide" in readme["nuclei"]
    assert "scanbridge serve" in readme["bridge"] and "SCANBRIDGE_PLATFORM_URL=http://127.0.0.1:8901" in readme["bridge"]
    assert "--send http://127.0.0.1:8000/webhook" in readme["platform"]
    assert "infer" in quickstart_blocks((REPO / "docs" / "inference-and-evaluation.md").read_text())
    live = quickstart_blocks((REPO / "docs" / "live-status.md").read_text())
    assert set(live) == {"submit-bridge", "submit"} and "SCANBRIDGE_PLATFORM_URL" not in live["submit-bridge"]


def test_the_whole_loop_runs_as_written(tmp_path: Path) -> None:
    # GIVEN the README's two blocks, a checkout-like folder and the README's ports free
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    checkout = _checkout(tmp_path, (8000, 8901))
    # WHEN terminal 1's block runs
    with terminal_1(blocks["bridge"], checkout) as log:
        # THEN it announces the README's URL, and the URL answers the moment it is announced
        assert f"scanbridge serving on {URL}" in log[-1]
        assert httpx.get(f"{URL}/health", timeout=2).status_code == 200
        # WHEN terminal 2's block runs
        out = terminal_2(blocks["platform"], checkout)
        # THEN the platform got results that meet the contract, and the task is listed COMPLETED
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "contract: OK" in out.stdout, out.stdout[-3000:]
        assert re.search(r"\bCOMPLETED\b", out.stdout.split("contract: OK", 1)[1]), out.stdout[-2000:]
        # AND the worker's last line says what it did and what came next, not a bare status
        task_id = httpx.get(f"{URL}/tasks").json()["tasks"][0]["task_id"]
        lines = httpx.get(f"{URL}/tasks/{task_id}/logs").json()["lines"]
        last = [json.dumps(line) for line in lines if "worker finished task" in json.dumps(line)]
        assert len(last) == 1 and "1 of 1 scan(s) analysed; results delivery next" in last[0], lines[-5:]
        # WHEN the README's generated-slide block runs against the same bridge
        out = terminal_2(blocks["nuclei"], checkout)
        # THEN the nuclei model's results meet the contract, with the nuclei as polygons, and its overlay is drawn
        assert out.returncode == 0 and "contract: OK" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
        made = re.search(r"nuclei=(\d+)", out.stdout)
        found = re.search(r"geojson: (\d+) features \(\d+ Polygon/nucleus\)", out.stdout)
        assert made and found and 0.9 * int(made.group(1)) <= int(found.group(1)) <= int(made.group(1)), out.stdout
        nuclei_task = httpx.get(f"{URL}/tasks").json()["tasks"][0]["task_id"]
        files = httpx.get(f"{URL}/tasks/{nuclei_task}/artifacts").json()
        assert "overlay.png" in json.dumps(files), files
        # WHEN the synchronous inference block of docs/inference-and-evaluation.md runs against the same bridge
        infer = quickstart_blocks((REPO / "docs" / "inference-and-evaluation.md").read_text())["infer"]
        out = terminal_2(infer, checkout, timeout_s=180)
        # THEN every line succeeds and evaluate prints the figures the page shows (AP50, Jaccard, TP)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        claimed = re.search(r"# (AP50 \S+  Jaccard \S+  TP \d+)", infer)
        assert claimed is not None and claimed.group(1) in out.stdout, out.stdout[-2000:]
    # AND the bridge kept its state where a newcomer's checkout would: .scanbridge beside the commands
    assert (checkout / ".scanbridge" / "state").is_dir()


def test_without_a_platform_submit_wait_ends_completed_with_results(tmp_path: Path) -> None:
    # GIVEN docs/live-status.md's bridge with no SCANBRIDGE_PLATFORM_URL, on its ports
    blocks = quickstart_blocks((REPO / "docs" / "live-status.md").read_text())
    checkout = _checkout(tmp_path, (8000, 8902))
    with terminal_1(blocks["submit-bridge"], checkout) as log:
        # WHEN its `scanbridge submit ... --wait` runs
        out = terminal_2(blocks["submit"], checkout)
        # THEN it exits 0 (COMPLETED) with the results summary, and says why nothing was posted
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        final = json.loads(out.stdout[out.stdout.index("{\n"):])
        assert final["status"] == "COMPLETED" and final["delivery"] == "skipped: no platform configured", final
        tasks = httpx.get(f"{URL}/tasks").json()["tasks"]
        assert len(tasks) == 1
        task = httpx.get(f"{URL}/tasks/{tasks[0]['task_id']}").json()
        # AND the task says why nothing was posted, and its results are readable through the API
        assert task["status"] == "COMPLETED" and task["delivery"]["skipped"] == "no platform configured", task
        results = httpx.get(f"{URL}/tasks/{task['task_id']}/results")
        assert results.status_code == 200 and results.json()["scanResults"][0]["results"]["report"]["summary"]
    # AND serve's log said so in words, at start and when the results were kept
    text = "".join(log)
    assert "SCANBRIDGE_PLATFORM_URL is not set: results are kept here" in text
    assert "results kept, not posted: no platform configured" in text
