"""The client SDK (scanbridge/client/): it loads nothing beyond httpx, its file server is downloaded by the
bridge's own fetcher, and BridgeClient and `scanbridge submit` / `tasks` work against a real bridge on loopback."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from scanbridge.adapters.local.memory import MemoryJobLauncher
from scanbridge.bootstrap import Container
from scanbridge.client import TERMINAL, BridgeClient, ClientError, LocalFileServer, build_webhook
from scanbridge.config import S3_HOSTS, Settings
from scanbridge.domain import status
from scanbridge.entrypoints.cli import main
from scanbridge.entrypoints.http.app import create_app
from scanbridge.entrypoints.local_stack import free_port
from scanbridge.imaging.fetch import FetchPolicy, SafeFetcher
from tests.conftest import REPO
from tests.integration.test_live import served

LOADED = "import json, sys; {}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"


def _loaded_by(statement: str) -> set[str]:
    """Top-level module names a fresh interpreter has loaded after `statement` (this checkout's src/)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-s", "-c", LOADED.format(statement)], capture_output=True, text=True,
                         check=True, env=env, timeout=60)
    return set(json.loads(out.stdout))


def _requirement_closure(dist: str) -> set[str]:
    """`dist` with any of its extras and every distribution those need, transitively, by canonical name
    (httpx imports its `cli` extra's click and rich when they are installed)."""
    extras = {"", *(md.metadata(dist).get_all("Provides-Extra") or [])}
    seen: set[str] = set()
    stack = [(dist, extras)]
    while stack:
        name, wanted = stack.pop()
        name = name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:  # an extra's package that is not installed cannot be loaded either
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted):
                stack.append((req.name, {""}))
    return seen


def test_the_sdk_loads_nothing_beyond_httpx_and_the_standard_library() -> None:
    # GIVEN what httpx itself needs, by import name
    closure = _requirement_closure("httpx")
    httpx_imports = {name for name, dists in md.packages_distributions().items()
                     if {d.lower().replace("_", "-") for d in dists} & closure}
    # WHEN a fresh interpreter imports the SDK
    added = _loaded_by("import scanbridge.client") - _loaded_by("pass")
    # THEN every module it added is the standard library's, httpx's (or what httpx needs), or scanbridge
    foreign = {m for m in added if m not in sys.stdlib_module_names and m not in httpx_imports} - {"scanbridge"}
    assert not foreign, f"scanbridge.client loads {sorted(foreign)}"
    # AND so none of the server's or the worker's stack (FastAPI, pydantic, numpy, Typer, boto3)
    assert not added & {"fastapi", "starlette", "numpy", "pydantic", "typer", "boto3"}, added


def test_the_sdk_knows_the_terminal_statuses_of_the_domain() -> None:
    # GIVEN the domain's terminal statuses / THEN the SDK stops following a task at exactly those
    assert {s.value for s in status.TERMINAL} == TERMINAL


def test_a_local_file_is_downloaded_by_the_bridges_fetcher_and_its_url_expires_like_s3(tmp_path: Path) -> None:
    # GIVEN a local file served under an unguessable name
    scan = tmp_path / "a scan.svs"
    scan.write_bytes(os.urandom(300_000))
    with LocalFileServer(port=0) as files:
        url = files.add(scan)
        # WHEN the bridge's safe fetcher downloads its URL, with the server's netloc allowed
        got = SafeFetcher(FetchPolicy(allowed_hosts=[files.netloc], attempts=1)).fetch(url, tmp_path / "got")
        # THEN the bytes arrive exactly, and the download is recorded under the served name
        assert got.read_bytes() == scan.read_bytes()
        assert len(files.downloads) == 1 and files.downloads[0].endswith("/a scan.svs")
        name = files.downloads[0]
        # AND a URL past X-Amz-Date + X-Amz-Expires is refused as S3 refuses it
        expired = httpx.get(files.url_for(name, expires_s=60, signed_at=datetime.now(UTC) - timedelta(hours=1)))
        assert expired.status_code == 403 and b"Request has expired" in expired.content
        # AND the file's own name without its token, or another path, is not found
        assert httpx.get(f"{files.base_url}/scans/{scan.name}").status_code == 404
        assert httpx.get(f"{files.base_url}/{name}").status_code == 404
        assert len(files.downloads) == 1
    # AND once the block ends the port is closed
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


@pytest.fixture
def files_port() -> int:
    return free_port()


@pytest.fixture
def settings(tmp_path: Path, files_port: int) -> Settings:
    """The bridge allows S3 and the client's file server port."""
    return Settings(data_dir=tmp_path / "data", platform_url="http://127.0.0.1:9",
                    allowed_scan_hosts=f"{S3_HOSTS},127.0.0.1:{files_port}")


def test_bridge_client_reads_and_writes_a_real_bridge(container: Container, launcher: MemoryJobLauncher) -> None:
    # GIVEN a bridge on a loopback port
    with served(create_app(container)) as url, BridgeClient(url) as bridge:
        # WHEN a webhook is submitted / THEN it is accepted, a job submitted, and the task readable
        accepted = bridge.submit(build_webhook({"s": "https://bucket.s3.amazonaws.com/s"}, task_id="t-sdk"))
        assert accepted["task_id"] == "t-sdk" and launcher.submitted == ["t-sdk"]
        assert bridge.task("t-sdk")["status"] == accepted["status"]
        assert [t["task_id"] for t in bridge.tasks()["tasks"]] == ["t-sdk"]
        # AND the bridge's error body comes back as a ClientError with its code and status
        with pytest.raises(ClientError) as err:
            bridge.task("no-such-task")
        assert (err.value.code, err.value.status) == ("TASK_NOT_FOUND", 404)
    # AND a bridge that is not there is UNREACHABLE
    with pytest.raises(ClientError) as err, BridgeClient(f"http://127.0.0.1:{free_port()}") as gone:
        gone.tasks()
    assert err.value.code == "UNREACHABLE"


def test_submit_and_tasks_commands_against_a_real_bridge(container: Container, launcher: MemoryJobLauncher,
                                                         files_port: int, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a bridge that allows the files port, and a local scan
    scan = tmp_path / "boxes.tiff"
    scan.write_bytes(b"II*\x00" + bytes(1000))
    with served(create_app(container)) as url:
        # WHEN a URL is submitted / THEN it prints the acceptance as one JSON line and exits 0
        assert main(["submit", "https://bucket.s3.amazonaws.com/x/slide.svs", "--url", url, "--task-id", "t-url",
                     "--model", "tissue"]) == 0
        accepted = json.loads(capsys.readouterr().out)
        assert accepted["task_id"] == "t-url" and launcher.submitted == ["t-url"]
        assert container.tasks.get("t-url").scans["slide"].urls == ["https://bucket.s3.amazonaws.com/x/slide.svs"]
        # WHEN a local file is submitted (no worker downloads it here: the command gives up after --timeout)
        assert main(["submit", str(scan), "--url", url, "--files-port", str(files_port), "--task-id", "t-file",
                     "--timeout", "1"]) == 0
        out = capsys.readouterr().out
        # THEN the webhook named the file served from the loopback port, and the command said so
        [served_url] = container.tasks.get("t-file").scans["boxes"].urls
        assert served_url.startswith(f"http://127.0.0.1:{files_port}/scans/") and "/boxes.tiff?" in served_url
        assert f"serving 1 local file(s) from 127.0.0.1:{files_port}" in out
        # AND the server stopped with the command
        with pytest.raises(httpx.ConnectError):
            httpx.get(served_url)
        # WHEN the files port is not one the bridge allows / THEN exit 2 with the setting to change, nothing sent
        other = free_port()
        assert main(["submit", str(scan), "--url", url, "--files-port", str(other)]) == 2
        assert f"SCANBRIDGE_ALLOWED_SCAN_HOSTS={S3_HOSTS},127.0.0.1:{files_port},127.0.0.1:{other}" in \
            capsys.readouterr().out
        # AND a missing file is refused before the bridge is asked
        assert main(["submit", str(tmp_path / "none.svs"), "--url", url]) == 2
        assert "no such file" in capsys.readouterr().out
        assert launcher.submitted == ["t-url", "t-file"]
        # WHEN the tasks are listed / THEN a table of both, newest first; with --json the page itself
        assert main(["tasks", "--url", url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["TASK", "STATUS", "PROGRESS", "STEP", "MODEL", "CREATED"]
        assert [line.split()[0] for line in table[1:]] == ["t-file", "t-url"]
        assert main(["tasks", "--url", url, "--json", "--limit", "1"]) == 0
        assert [t["task_id"] for t in json.loads(capsys.readouterr().out)["tasks"]] == ["t-file"]
