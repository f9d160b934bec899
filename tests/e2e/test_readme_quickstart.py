"""The README's whole loop, typed as written: its marked quick-start blocks run in a shell, the bridge in one,
the stand-in platform in the other, on the README's own ports (8000, 8901), from a folder that has
`../shared/fixtures` beside it as a checkout does; then the docs' /v1/infer + evaluate block against it."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES, fixture_path

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def quickstart_blocks(text: str) -> dict[str, str]:
    """The fenced bash blocks marked `<!-- quickstart: NAME -->` in a markdown text, by name."""
    found = re.findall(r"<!-- quickstart: ([a-z-]+) -->\n```bash\n(.*?)```", text, flags=re.DOTALL)
    return dict(found)


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _shell_env() -> dict[str, str]:
    """A newcomer's shell: this environment without any SCANBRIDGE_* setting (the blocks set their own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SCANBRIDGE_")} | {"PYTHONUNBUFFERED": "1"}


def test_the_blocks_are_marked() -> None:
    # GIVEN the README / THEN it marks the bridge and the platform blocks, on the ports they name
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    assert set(blocks) == {"bridge", "platform"}
    assert "scanbridge serve" in blocks["bridge"] and "SCANBRIDGE_PLATFORM_URL=http://127.0.0.1:8901" in blocks["bridge"]
    assert "--send http://127.0.0.1:8000/webhook" in blocks["platform"]


def test_the_whole_loop_runs_as_written(tmp_path: Path) -> None:
    # GIVEN the README's two blocks, a folder laid out as a checkout (../shared/fixtures beside it) and
    # the README's ports free
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    fixture_path("boxes.tiff")
    if shutil.which("scanbridge") is None:
        pytest.fail("the scanbridge command is not on PATH (pip install -e '.[dev]')")
    for port in (8000, 8901):
        if _port_taken(port):
            pytest.skip(f"port {port}, which the README's commands use, is taken on this machine")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "fixtures").symlink_to(FIXTURES)
    env = _shell_env()
    # WHEN terminal 1's block runs
    bridge = subprocess.Popen(["bash", "-c", blocks["bridge"]], cwd=checkout, env=env, stdout=subprocess.PIPE,
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
        # THEN it announces the README's URL, and the URL answers the moment it is announced
        assert "scanbridge serving on http://127.0.0.1:8000" in log[-1]
        assert httpx.get("http://127.0.0.1:8000/health", timeout=2).status_code == 200
        # WHEN terminal 2's block runs
        out = subprocess.run(["bash", "-c", blocks["platform"]], cwd=checkout, env=env, capture_output=True,
                             text=True, timeout=240, check=False)
        # THEN the platform got results that meet the contract, and the task is listed COMPLETED
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "contract: OK" in out.stdout, out.stdout[-3000:]
        assert re.search(r"\bCOMPLETED\b", out.stdout.split("contract: OK", 1)[1]), out.stdout[-2000:]
        # WHEN the synchronous inference block of docs/inference-and-evaluation.md runs against the same bridge
        infer = quickstart_blocks((REPO / "docs" / "inference-and-evaluation.md").read_text())["infer"]
        out = subprocess.run(["bash", "-e", "-c", infer], cwd=checkout, env=env, capture_output=True, text=True,
                             timeout=180, check=False)
        # THEN every line succeeds and evaluate prints the AP50 the page says
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        claimed = re.search(r"# AP50 (\S+)", infer)
        assert claimed is not None and f"AP50 {claimed.group(1)}" in out.stdout, out.stdout[-2000:]
    finally:
        # Ctrl-C in terminal 1
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
    # AND the bridge kept its state where a newcomer's checkout would: .scanbridge beside the commands
    assert (checkout / ".scanbridge" / "state").is_dir()


def test_without_a_platform_submit_wait_ends_completed_with_results(tmp_path: Path) -> None:
    # GIVEN `scanbridge serve` with no SCANBRIDGE_PLATFORM_URL (only the client's file server allowed and a key)
    from scanbridge.devtools.stack import serve_subprocess
    from scanbridge.entrypoints.local_stack import free_port

    files_port = free_port()
    env = {"SCANBRIDGE_ALLOWED_SCAN_HOSTS": f"127.0.0.1:{files_port}", "SCANBRIDGE_PLATFORM_API_KEY": "local-dev-key",
           "SCANBRIDGE_DATA_DIR": str(tmp_path / "data"), "SCANBRIDGE_PLATFORM_URL": ""}
    with serve_subprocess(tmp_path, env) as url:
        # WHEN a scan is submitted and waited for
        out = subprocess.run(["scanbridge", "submit", str(fixture_path("boxes.tiff")), "--wait", "--url", url,
                              "--files-port", str(files_port)], env=_shell_env(), capture_output=True, text=True,
                             timeout=240, check=False)
        # THEN it exits 0 (COMPLETED) with the results summary
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "COMPLETED" in out.stdout
        tasks = httpx.get(f"{url}/tasks").json()["tasks"]
        assert len(tasks) == 1
        task = httpx.get(f"{url}/tasks/{tasks[0]['task_id']}").json()
        # AND the task says why nothing was posted, and its results are readable through the API
        assert task["status"] == "COMPLETED" and task["delivery"]["skipped"] == "no platform configured", task
        results = httpx.get(f"{url}/tasks/{task['task_id']}/results")
        assert results.status_code == 200 and results.json()["scanResults"][0]["results"]["report"]["summary"]
    assert "results kept, not posted: no platform configured" in (tmp_path / "serve.log").read_text()
