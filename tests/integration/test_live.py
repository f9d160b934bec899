"""Live status in-process: SSE (real uvicorn on loopback), WebSocket (TestClient), logs, /config/available."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from scanbridge.adapters.local.memory import (
    FernetSecretBox,
    MemoryArtifactStore,
    MemoryJobLauncher,
    MemoryTaskStore,
)
from scanbridge.bootstrap import Container, bootstrap
from scanbridge.config import Settings
from scanbridge.domain.progress import changes, task_progress
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.task import Progress, ScanState, Task
from scanbridge.entrypoints.http.app import create_app
from scanbridge.entrypoints.local_stack import free_port
from scanbridge.services.capabilities import DICOM_TRANSFER_SYNTAXES
from scanbridge.services.common import update_task
from tests.conftest import SAMPLE_WEBHOOK, ScriptedPlatform

TID = SAMPLE_WEBHOOK["task_id"]
SCAN = "8823846"

Step = Callable[[Task], Task]


def _scan(status: ScanStatus, step: str, percent: float, done: int = 0, total: int = 0,
          eta: float | None = None) -> Step:
    def apply(t: Task) -> Task:
        scans = dict(t.scans)
        scans[SCAN] = scans[SCAN].model_copy(update={"status": status, "progress": Progress(
            step=step, percent=percent, tiles_done=done, tiles_total=total, eta_s=eta)})
        return t.model_copy(update={"scans": scans, "updated_at": _tick(t)})
    return apply


def _move(status: TaskStatus, then: Step | None = None) -> Step:
    def apply(t: Task) -> Task:
        t = then(t) if then else t
        return t.moved_to(status)
    return apply


def _tick(t: Task) -> str:
    time.sleep(0.002)  # updated_at has millisecond resolution: every step gets its own
    from scanbridge.domain.task import utcnow

    return utcnow()


# What the worker and the results step do to a one-scan task, step by step (as in services/processing.py).
SCRIPT: list[Step] = [
    _move(TaskStatus.DOWNLOADING, _scan(ScanStatus.DOWNLOADING, "downloading", 0.0)),
    _scan(ScanStatus.DOWNLOADING, "quality control", 3.0),
    _move(TaskStatus.RUNNING, _scan(ScanStatus.RUNNING, "analysing", 5.0)),
    _scan(ScanStatus.RUNNING, "inference", 50.0, 5, 10, 2.0),
    _scan(ScanStatus.RUNNING, "inference", 95.0, 10, 10, 0.0),
    _scan(ScanStatus.SUCCEEDED, "done", 100.0, 10, 10, 0.0),
    _move(TaskStatus.DELIVERING),
    _move(TaskStatus.COMPLETED),
]
EXPECTED = [
    ("status", "QUEUED"), ("scan", "PENDING/pending"),
    ("status", "DOWNLOADING"), ("scan", "DOWNLOADING/downloading"),
    ("scan", "DOWNLOADING/quality control"),
    ("status", "RUNNING"), ("scan", "RUNNING/analysing"),
    ("scan", "RUNNING/inference"), ("scan", "RUNNING/inference"),
    ("scan", "SUCCEEDED/done"),
    ("status", "DELIVERING"), ("status", "COMPLETED"),
]


class DrivingLauncher(MemoryJobLauncher):
    """A JobLauncher whose 'worker' walks the task through SCRIPT, one step each time the client saw the last.

    Gated on what the client received (the `seen` updated_at values), so no step can be missed by timing.
    """

    def __init__(self, script: list[Step], gate_s: float = 10.0) -> None:
        super().__init__()
        self.script = script
        self.gate_s = gate_s
        self.store: MemoryTaskStore | None = None
        self.seen: set[str] = set()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        self.thread = threading.Thread(target=self._drive, args=(task_id,), daemon=True)
        self.thread.start()
        return "job-driven"

    def _drive(self, task_id: str) -> None:
        assert self.store is not None
        try:
            for step in self.script:
                deadline = time.monotonic() + self.gate_s
                while time.monotonic() < deadline:
                    task = self.store.get(task_id)
                    if task is not None and task.updated_at in self.seen:
                        break
                    time.sleep(0.005)
                update_task(self.store, task_id, step)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc


@pytest.fixture
def driver() -> DrivingLauncher:
    return DrivingLauncher(SCRIPT)


@pytest.fixture
def live(settings: Settings, driver: DrivingLauncher, platform: ScriptedPlatform) -> Container:
    container = bootstrap(settings, tasks=MemoryTaskStore(), artifacts=MemoryArtifactStore(),
                          secrets=FernetSecretBox(), launcher=driver, platform=platform, sleep=lambda _s: None)
    driver.store = container.tasks  # type: ignore[assignment]
    return container


def _app(container: Container) -> FastAPI:
    app = create_app(container)
    app.state.live_poll_s = 0.01
    return app


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """The app under a real uvicorn on a loopback port (true streaming), in a thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _sse_events(resp: httpx.Response, on_event: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    kind = None
    for line in resp.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            event = json.loads(line[6:])
            assert event["type"] == kind
            events.append(event)
            on_event(event)
    return events


def _summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["status"] if e["type"] == "status" else f"{e['status']}/{e['step']}") for e in events]


def test_sse_client_sees_every_step_in_order_then_the_stream_closes(live: Container, driver: DrivingLauncher) -> None:
    # GIVEN the app on a real loopback server and a worker that waits for the client before each step
    with served(_app(live)) as url:
        assert httpx.post(f"{url}/webhook", json=SAMPLE_WEBHOOK).status_code == 202
        # WHEN a client follows /tasks/{id}/events
        with httpx.stream("GET", f"{url}/tasks/{TID}/events", timeout=30) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = _sse_events(resp, lambda e: driver.seen.add(e["updated_at"]))
        view = httpx.get(f"{url}/tasks/{TID}").json()
    # THEN it saw every status and every scan step, in order, the terminal status last, then the end
    assert driver.error is None
    assert _summary(events) == EXPECTED
    assert [e["seq"] for e in events] == list(range(1, len(EXPECTED) + 1))
    inference = [e for e in events if e["type"] == "scan" and e["step"] == "inference"]
    assert [(e["tiles_done"], e["tiles_total"], e["eta_s"]) for e in inference] == [(5, 10, 2.0), (10, 10, 0.0)]
    assert events[-1]["terminal"] is True and events[-1]["progress"]["percent"] == 100.0
    percents = [e["task_progress"]["percent"] for e in events if e["type"] == "scan"]
    assert percents == sorted(percents)
    # AND the task's public view carries the aggregated progress
    assert view["progress"] == {**view["progress"], "step": "completed", "percent": 100.0, "scans_done": 1}


def test_websocket_sends_the_same_messages_and_closes_when_the_task_ends(live: Container,
                                                                       driver: DrivingLauncher) -> None:
    # GIVEN a task and its driven worker
    client = TestClient(_app(live))
    assert client.post("/webhook", json=SAMPLE_WEBHOOK).status_code == 202
    # WHEN a client opens /ws/tasks/{id}
    events: list[dict[str, Any]] = []
    with client.websocket_connect(f"/ws/tasks/{TID}") as ws:
        for _ in range(len(EXPECTED) + 1):
            try:
                event = ws.receive_json()
            except WebSocketDisconnect as exc:
                # THEN the server closes normally once the terminal status was sent
                assert exc.code == 1000  # noqa: PT017 - a close after the stream, not the error under test
                break
            events.append(event)
            driver.seen.add(event["updated_at"])
    # AND the messages are the SSE events, in the same order
    assert _summary(events) == EXPECTED
    assert events[-1] == {**events[-1], "type": "status", "status": "COMPLETED", "terminal": True}


def test_live_routes_are_scoped_to_the_tenant(live: Container, driver: DrivingLauncher) -> None:
    # GIVEN keys for two tenants and a task of company A (its worker never advances: nobody marks steps seen)
    live.settings.api_keys = "key-a:companyA,key-b:companyB"
    driver.gate_s = 0.0
    driver.script = []
    client = TestClient(_app(live))
    assert client.post("/webhook", json={**SAMPLE_WEBHOOK, "company_id": "companyA"}).status_code == 202
    # WHEN B, nobody, or a wrong key asks for its events, logs or WebSocket
    # THEN 404 for B (no existence leak), 401 without a valid key, via header or ?api_key=
    assert client.get(f"/tasks/{TID}/events", params={"api_key": "key-b"}).json()["error"]["code"] == "TASK_NOT_FOUND"
    assert client.get(f"/tasks/{TID}/events").status_code == 401
    assert client.get(f"/tasks/{TID}/logs", params={"api_key": "nope"}).status_code == 401
    assert client.get(f"/tasks/{TID}/logs", headers={"X-API-Key": "key-b"}).status_code == 404
    assert client.get("/config/available").status_code == 401
    with client.websocket_connect(f"/ws/tasks/{TID}?api_key=key-b") as ws:
        assert ws.receive_json()["error"]["code"] == "TASK_NOT_FOUND"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4404
    with client.websocket_connect(f"/ws/tasks/{TID}") as ws:
        assert ws.receive_json()["error"]["code"] == "UNAUTHORIZED"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4401
    # AND A's key in the query string opens the stream, which ends with a timeout event when asked to
    resp = client.get(f"/tasks/{TID}/events", params={"api_key": "key-a", "timeout": 0.05})
    kinds = [line[7:] for line in resp.text.splitlines() if line.startswith("event: ")]
    assert resp.status_code == 200 and kinds[0] == "status" and kinds[-1] == "timeout"


def test_config_available_lists_models_formats_syntaxes_and_limits(container: Container) -> None:
    # GIVEN the app / WHEN a client asks what it can do
    body = TestClient(create_app(container)).get("/config/available").json()
    # THEN the built-in models come with their specs, and the limits are the settings'
    names = {m["name"] for m in body["models"]}
    assert container.settings.default_model in names and body["default_model"] == container.settings.default_model
    assert all("kind" in m and "mpp" in m for m in body["models"])
    assert body["limits"]["max_scans_per_task"] == container.settings.max_scans_per_task
    assert {f["format"] for f in body["formats"]} >= {"aperio-svs", "tiff", "dicom-wsi", "zip"}
    assert body["endpoints"]["events"]["link"] == "/tasks/{task_id}/events" and body["version"]
    # AND the DICOM transfer syntaxes are exactly what the readers decode (the constant cannot drift)
    from scanbridge.imaging.readers import OPENSLIDE_DICOM_SYNTAXES
    from scanbridge.imaging.readers.dicom_frames import SUPPORTED_SYNTAXES

    readers = {str(u) for u in SUPPORTED_SYNTAXES | OPENSLIDE_DICOM_SYNTAXES}
    assert {s["uid"] for s in body["dicom_transfer_syntaxes"]} == readers == set(DICOM_TRANSFER_SYNTAXES)
    assert all(reader == "pydicom" for _name, reader in DICOM_TRANSFER_SYNTAXES.values())


def test_logs_are_the_workers_json_lines_of_that_task(container: Container, tmp_path: Path) -> None:
    # GIVEN a task whose local worker log holds its lines, another task's lines and non-JSON noise
    client = TestClient(create_app(container))
    client.post("/webhook", json=SAMPLE_WEBHOOK)
    task = container.tasks.get(TID)
    assert task is not None and task.job_id
    logs = container.settings.data_dir / "logs"
    logs.mkdir(parents=True)
    lines = [{"level": "INFO", "message": "scan analysed", "timestamp": "2025-01-01 10:00:01", "task_id": TID},
             {"level": "INFO", "message": "other", "timestamp": "2025-01-01 10:00:02", "task_id": "other"},
             {"level": "WARNING", "message": "quality control failed", "timestamp": "2025-01-01 10:00:03",
              "task_id": TID}]
    (logs / f"{task.job_id}.log").write_text("\n".join([json.dumps(x) for x in lines] + ["Traceback (noise)", "{"]))
    # WHEN its logs are read, all and by level
    body = client.get(f"/tasks/{TID}/logs").json()
    warnings = client.get(f"/tasks/{TID}/logs", params={"level": "warning"}).json()
    # THEN only that task's JSON lines come back, oldest first, from the local files
    assert body["source"] == "local-files" and [x["message"] for x in body["lines"]] == [
        "scan analysed", "quality control failed"]
    assert [x["message"] for x in warnings["lines"]] == ["quality control failed"]
    assert client.get(f"/tasks/{TID}/logs", params={"limit": 1}).json()["truncated"] is True
    # AND on AWS (Batch launcher) the route says the lines are in CloudWatch instead
    container.settings.launcher = "batch"
    assert client.get(f"/tasks/{TID}/logs").json()["source"] == "cloudwatch"


def test_task_progress_aggregates_scans_and_changes_orders_events() -> None:
    # GIVEN a running task with one scan half done (ETA 4 s) and one finished
    scans = {"a": ScanState(scan_id="a", urls=["u"], status=ScanStatus.RUNNING,
                            progress=Progress(step="inference", percent=50.0, tiles_done=5, tiles_total=10, eta_s=4.0)),
             "b": ScanState(scan_id="b", urls=["u"], status=ScanStatus.SUCCEEDED,
                            progress=Progress(step="done", percent=100.0, tiles_done=8, tiles_total=8, eta_s=0.0))}
    task = Task(task_id="t", status=TaskStatus.RUNNING, scans=scans)
    # WHEN its progress is computed / THEN 95 % x mean(50, 100), tiles and scans summed, the open scan's step
    p = task_progress(task)
    assert (p.percent, p.step, p.tiles_done, p.tiles_total, p.scans_done, p.scans_total, p.eta_s) == (
        71.2, "inference", 13, 18, 1, 2, 4.0)
    # AND a queued task has no ETA; a terminal one is 100 %
    assert task_progress(task.model_copy(update={"status": TaskStatus.QUEUED, "scans": {}})).eta_s is None
    assert task_progress(task.model_copy(update={"status": TaskStatus.FAILED})).percent == 100.0
    # AND between two snapshots the terminal status comes after the scan events; nothing changed -> no event
    ended = task.model_copy(update={"status": TaskStatus.COMPLETED, "scans": {
        **scans, "a": scans["a"].model_copy(update={"status": ScanStatus.SUCCEEDED})}})
    assert [e["type"] for e in changes(task, ended)] == ["scan", "status"]
    assert changes(task, task.model_copy(update={"updated_at": "later"})) == []
