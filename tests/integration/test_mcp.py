"""MCP tools through the `mcp` package's own client: streamable HTTP at /mcp in-process, stdio via `scanbridge mcp`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi.testclient import TestClient
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from scanbridge.adapters.local.memory import MemoryJobLauncher
from scanbridge.bootstrap import Container
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.storage_keys import posted_key
from scanbridge.entrypoints.http.app import create_app
from scanbridge.entrypoints.local_stack import free_port
from scanbridge.services.common import update_task
from tests.conftest import fixture_path
from tests.integration.test_live import served

TOOLS = {"submit_scan", "get_task", "list_tasks", "cancel_task", "scan_metadata", "list_models",
         "get_results_summary"}
BASE = "http://127.0.0.1:8000"


@asynccontextmanager
async def mcp_session(container: Container, headers: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    """An MCP client session over streamable HTTP against the app in-process (httpx ASGI transport)."""
    app = create_app(container)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers or {},
                                 timeout=30) as http, \
            streamable_http_client(f"{BASE}/mcp", http_client=http) as (read, write, _sid), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


def _data(result: Any) -> dict[str, Any]:
    assert not result.isError, result.content
    if result.structuredContent is not None:
        return dict(result.structuredContent)
    return dict(json.loads(result.content[0].text))


def _error(result: Any) -> str:
    """The tool error's text without FastMCP's "Error executing tool X: " prefix: "CODE: message"."""
    assert result.isError
    text = str(result.content[0].text)
    return text.split(": ", 1)[1] if text.startswith("Error executing tool") else text


def test_mcp_over_http_lists_and_calls_every_tool(container: Container, launcher: MemoryJobLauncher) -> None:
    async def scenario() -> None:
        async with mcp_session(container) as mcp:
            # GIVEN the app's /mcp endpoint (open local mode) / WHEN the tools are listed
            tools = {t.name: t for t in (await mcp.list_tools()).tools}
            # THEN all seven are there, with descriptions and input schemas
            assert set(tools) == TOOLS
            assert "scans" in tools["submit_scan"].inputSchema["properties"]
            # WHEN a scan URL is submitted
            sub = _data(await mcp.call_tool("submit_scan", {"scans": ["https://bucket.s3.amazonaws.com/a.svs"],
                                                            "task_id": "mcp-1"}))
            # THEN a task exists and its job was started; get_task / list_tasks show it with progress
            assert sub == {"task_id": "mcp-1", "status": "QUEUED", "created": True}
            assert launcher.submitted == ["mcp-1"]
            task = _data(await mcp.call_tool("get_task", {"task_id": "mcp-1"}))
            assert task["status"] == "QUEUED" and task["progress"]["step"] == "queued" and "a" in task["scans"]
            listed = _data(await mcp.call_tool("list_tasks", {"status": "QUEUED"}))
            assert [t["task_id"] for t in listed["tasks"]] == ["mcp-1"]
            # AND models come with specs; metadata of an unopened scan is a coded tool error
            models = _data(await mcp.call_tool("list_models", {}))
            assert container.settings.default_model in {m["name"] for m in models["models"]}
            assert _error(await mcp.call_tool("scan_metadata", {"task_id": "mcp-1", "scan_id": "a"})).startswith(
                "RESULTS_NOT_READY")
            assert _error(await mcp.call_tool("get_task", {"task_id": "nope"})).startswith("TASK_NOT_FOUND")
            # WHEN it is cancelled / THEN CANCELLED; no results were posted yet (no platform credentials)
            assert _data(await mcp.call_tool("cancel_task", {"task_id": "mcp-1"}))["status"] == "CANCELLED"
            assert _error(await mcp.call_tool("get_results_summary", {"task_id": "mcp-1"})).startswith(
                "RESULTS_NOT_READY")
            # AND once a results body is recorded as posted, the summary reads it
            container.artifacts.put(posted_key("mcp-1"), json.dumps({"caseResults": {"n": 1}, "scanResults": [
                {"scanId": "a", "results": {"report": {"summary": {"Tissue": "12 %"}}}, "geojson": {
                    "type": "FeatureCollection", "features": []}}]}).encode())
            summary = _data(await mcp.call_tool("get_results_summary", {"task_id": "mcp-1"}))
            assert summary["case_results"] == {"n": 1}
            assert summary["scans"] == [{"scan_id": "a", "qc_fail_reasons": [], "summary": {"Tissue": "12 %"},
                                         "features": 0}]
            # AND a local path is refused here (only `scanbridge mcp` on stdio serves local files)
            assert "URLs only" in _error(await mcp.call_tool("submit_scan", {"scans": ["/etc/hostname"]}))

    anyio.run(scenario)


def test_mcp_over_http_is_tenant_scoped(container: Container) -> None:
    # GIVEN two tenants' keys, an admin token, and a task of company A
    s = container.settings
    s.api_keys, s.admin_token = "key-a:companyA,key-b:companyB", "admin-token-0123456789"
    client = TestClient(create_app(container))
    client.post("/webhook", json={"task_id": "ta", "company_id": "companyA",
                                  "scans": {"x": "https://bucket.s3.amazonaws.com/x"}})
    # WHEN /mcp is called without a key / THEN the uniform 401
    resp = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                       headers={"accept": "application/json, text/event-stream", "host": "127.0.0.1:8000"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "UNAUTHORIZED"

    async def scenario() -> None:
        # WHEN B calls the tools / THEN A's task does not exist for B, and a tenant cannot submit
        async with mcp_session(container, {"Authorization": "Bearer key-b"}) as b:
            assert _error(await b.call_tool("get_task", {"task_id": "ta"})).startswith("TASK_NOT_FOUND")
            assert _data(await b.call_tool("list_tasks", {}))["tasks"] == []
            assert _error(await b.call_tool("submit_scan", {"scans": ["https://bucket.s3.amazonaws.com/y"]})
                          ).startswith("FORBIDDEN")
        async with mcp_session(container, {"X-API-Key": "key-a"}) as a:
            assert _data(await a.call_tool("get_task", {"task_id": "ta"}))["company_id"] == "companyA"
        async with mcp_session(container, {"Authorization": "Bearer admin-token-0123456789"}) as admin:
            sub = _data(await admin.call_tool("submit_scan", {"scans": ["https://bucket.s3.amazonaws.com/y"]}))
            assert sub["created"] is True

    anyio.run(scenario)


def test_scanbridge_mcp_on_stdio_talks_to_a_running_bridge(container: Container, tmp_path: Path) -> None:
    # GIVEN a bridge on a loopback port holding a running task
    client = TestClient(create_app(container))
    client.post("/webhook", json={"task_id": "t-stdio", "scans": {"s": "https://bucket.s3.amazonaws.com/s"}})
    update_task(container.tasks, "t-stdio", lambda t: t.moved_to(TaskStatus.RUNNING))
    with served(create_app(container)) as url:
        params = StdioServerParameters(command=sys.executable, args=["-m", "scanbridge.entrypoints.cli", "mcp",
                                                                     "--url", url, "--files-port", str(free_port())],
                                       env={**os.environ, "SCANBRIDGE_DATA_DIR": str(tmp_path)})

        async def scenario() -> None:
            # WHEN an MCP client starts `scanbridge mcp --url ...` on stdio
            with anyio.fail_after(60):
                await stdio_scenario()

        async def stdio_scenario() -> None:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as mcp:
                await mcp.initialize()
                # THEN it lists the same tools, and they answer from the bridge over HTTP
                assert {t.name for t in (await mcp.list_tools()).tools} == TOOLS
                task = _data(await mcp.call_tool("get_task", {"task_id": "t-stdio"}))
                assert task["status"] == "RUNNING"
                assert [t["task_id"] for t in _data(await mcp.call_tool("list_tasks", {}))["tasks"]] == ["t-stdio"]
                # AND a missing local file is refused before anything is sent
                assert "no such file" in _error(await mcp.call_tool("submit_scan",
                                                                    {"scans": [str(tmp_path / "none.svs")]}))
                # AND a real local file is refused when the bridge does not allow the file server's port
                (tmp_path / "a.svs").write_bytes(b"II*\x00")
                refused = _error(await mcp.call_tool("submit_scan", {"scans": [str(tmp_path / "a.svs")]}))
                assert refused.startswith("SCAN_URL_FORBIDDEN") and "SCANBRIDGE_ALLOWED_SCAN_HOSTS=" in refused

        anyio.run(scenario)


def test_scanbridge_mcp_on_stdio_without_url_runs_an_in_process_stack(tmp_path: Path) -> None:
    # GIVEN `scanbridge mcp` with no --url (moto + launcher in its own process), and a local scan file
    scan = fixture_path("small.svs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBRIDGE_")}
    env |= {"SCANBRIDGE_DATA_DIR": str(tmp_path / "data"), "SCANBRIDGE_PLATFORM_API_KEY": "k"}
    params = StdioServerParameters(command=sys.executable, cwd=str(tmp_path), env=env, args=[
        "-m", "scanbridge.entrypoints.cli", "mcp", "--files-port", str(free_port())])

    async def scenario() -> None:
        with anyio.fail_after(90):
            async with stdio_client(params) as (read, write), ClientSession(read, write) as mcp:
                await mcp.initialize()
                # WHEN a local path is submitted / THEN it is served on loopback and the task is accepted
                sub = _data(await mcp.call_tool("submit_scan", {"scans": [str(scan)], "task_id": "local-1"}))
                assert sub["task_id"] == "local-1" and sub["created"] is True
                # AND the worker fetches it (the stack allows exactly its own file server's port)
                for _ in range(300):
                    task = _data(await mcp.call_tool("get_task", {"task_id": "local-1"}))
                    if task["scans"]["small"]["status"] not in ("PENDING", "DOWNLOADING"):
                        break
                    await anyio.sleep(0.2)
                assert task["scans"]["small"]["error_code"] in (None,), task["scans"]["small"]
                assert {m["name"] for m in _data(await mcp.call_tool("list_models", {}))["models"]}

    anyio.run(scenario)
