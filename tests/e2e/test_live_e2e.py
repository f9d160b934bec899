"""Live status, logs, capabilities, MCP and the client CLI against the real `scanbridge serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.entrypoints.local_stack import free_port
from tests.conftest import fixture_path
from tests.e2e.test_local_stack import start_stack

pytestmark = pytest.mark.e2e

ORDER = ["RECEIVED", "QUEUED", "DOWNLOADING", "RUNNING", "DELIVERING", "COMPLETED"]


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    with FakePlatform(files={"small": fixture_path("small.svs"), "boxes": fixture_path("boxes.tiff")}) as p:
        yield p


def _sse(url: str, task_id: str) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("GET", f"{url}/tasks/{task_id}/events", params={"timeout": 120}, timeout=150) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_sse_ws_logs_and_mcp_follow_a_real_task(platform: FakePlatform, tmp_path: Path) -> None:
    with start_stack(platform, tmp_path) as url:
        # GIVEN a task with two scans posted to the real stack
        body = {"task_id": "live-e2e", "company_id": "c1", "model_name": "", "jwt_token": "eyJhbGciOi.t.sig",
                "scans": {"small": platform.url_for("small"), "boxes": platform.url_for("boxes")}}
        assert httpx.post(f"{url}/webhook", json=body, timeout=10).status_code == 202
        # WHEN a client follows its Server-Sent Events
        events = _sse(url, "live-e2e")
        # THEN the statuses come in lifecycle order, the terminal COMPLETED last, then the stream closed
        statuses = [e["status"] for e in events if e["type"] == "status"]
        assert statuses[-1] == "COMPLETED" and events[-1]["type"] == "status" and events[-1]["terminal"]
        assert statuses == sorted(statuses, key=ORDER.index) and len(set(statuses)) == len(statuses)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        # AND each scan's steps only move forward and end done at 100 %
        for scan_id in ("small", "boxes"):
            steps = [e for e in events if e["type"] == "scan" and e["scan_id"] == scan_id]
            assert steps[-1]["status"] == "SUCCEEDED" and steps[-1]["percent"] == 100.0
            assert [e["percent"] for e in steps] == sorted(e["percent"] for e in steps)
        # AND the WebSocket of an ended task sends its scans as they are, the terminal status last, and closes
        ws_events = anyio.run(_ws_events, url.replace("http://", "ws://") + "/ws/tasks/live-e2e")
        assert [(e["type"], e["status"]) for e in ws_events] == [
            ("scan", "SUCCEEDED"), ("scan", "SUCCEEDED"), ("status", "COMPLETED")]
        # AND the task's view carries the aggregated progress; logs are the worker's lines of this task
        task = httpx.get(f"{url}/tasks/live-e2e").json()
        assert task["progress"]["percent"] == 100.0 and task["progress"]["scans_done"] == 2
        logs = httpx.get(f"{url}/tasks/live-e2e/logs").json()
        assert logs["source"] == "local-files" and logs["lines"]
        assert all(line["task_id"] == "live-e2e" for line in logs["lines"])
        assert any(line["message"] == "scan analysed" for line in logs["lines"])
        caps = httpx.get(f"{url}/config/available").json()
        assert caps["limits"]["allowed_scan_hosts"] == [platform.netloc]
        # AND the MCP endpoint of the real server answers the same task
        assert anyio.run(_mcp_get_task, url, "live-e2e")["status"] == "COMPLETED"


async def _ws_events(ws_url: str) -> list[dict[str, Any]]:
    import websockets

    out = []
    with anyio.fail_after(30):
        async with websockets.connect(ws_url) as ws:
            async for message in ws:
                out.append(json.loads(message))
    return out


async def _mcp_get_task(url: str, task_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        async with streamable_http_client(f"{url}/mcp") as (read, write, _sid), ClientSession(read, write) as mcp:
            await mcp.initialize()
            result = await mcp.call_tool("get_task", {"task_id": task_id})
            assert not result.isError, result.content
            return dict(result.structuredContent or json.loads(result.content[0].text))


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "scanbridge.entrypoints.cli", *args], capture_output=True, check=False,
                          text=True, timeout=timeout, env=env)


def test_cli_submit_wait_serves_a_local_file_and_follows_it_live(platform: FakePlatform, tmp_path: Path) -> None:
    # GIVEN the real stack allowing the CLI's loopback file server port
    files_port = free_port()
    extra = {"SCANBRIDGE_ALLOWED_SCAN_HOSTS": f"{platform.netloc},127.0.0.1:{files_port}",
             "SCANBRIDGE_PLATFORM_API_KEY": "local-dev-key"}  # the CLI's webhook has no task JWT
    with start_stack(platform, tmp_path, extra_env=extra) as url:
        # WHEN a local file is submitted with --wait
        done = _cli("submit", str(fixture_path("boxes.tiff")), "--url", url, "--files-port", str(files_port),
                    "--wait", "--task-id", "cli-e2e", "--timeout", "150")
        # THEN the CLI printed the live steps and the summary, and exited 0 (COMPLETED)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "task COMPLETED" in done.stdout and "scan boxes: SUCCEEDED done 100%" in done.stdout
        final = json.loads(done.stdout[done.stdout.index("{\n"):])
        assert final["status"] == "COMPLETED" and final["scans"][0]["scan_id"] == "boxes"
        assert final["scans"][0]["summary"]
        # AND it says the results reached the platform
        assert final["delivery"] == "delivered (HTTP 200, 1 attempt(s))", final["delivery"]
        # AND `scanbridge tasks` lists it with its progress
        listed = _cli("tasks", "--url", url, "--status", "COMPLETED")
        assert listed.returncode == 0 and "cli-e2e" in listed.stdout and "100.0%" in listed.stdout
        # AND a port the bridge does not allow is refused before anything is sent
        refused = _cli("submit", str(fixture_path("boxes.tiff")), "--url", url, "--files-port", str(free_port()))
        assert refused.returncode == 2 and "SCANBRIDGE_ALLOWED_SCAN_HOSTS=" in refused.stdout
        assert [t["task_id"] for t in httpx.get(f"{url}/tasks").json()["tasks"]] == ["cli-e2e"]
