"""Without a platform (no SCANBRIDGE_PLATFORM_URL) a finished task keeps its results and ends COMPLETED with
`delivery.skipped = "no platform configured"`, instead of DELIVERY_FAILED and RESULTS_NOT_READY."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanbridge.adapters.local.memory import (
    FernetSecretBox,
    MemoryArtifactStore,
    MemoryJobLauncher,
    MemoryTaskStore,
)
from scanbridge.bootstrap import Container, bootstrap, build_processing
from scanbridge.config import Settings
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.results import ScanResult
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.storage_keys import posted_key, scan_result_key
from scanbridge.domain.task import ScanState, Task
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.services.delivery import NO_PLATFORM
from tests.conftest import fixture_path, logged


def _finished_task(tasks: MemoryTaskStore, artifacts: MemoryArtifactStore, *, statuses: dict[str, ScanStatus]) -> str:
    """A RUNNING task whose scans the worker finished, each SUCCEEDED one with its stored result."""
    scans = {sid: ScanState(scan_id=sid, urls=[f"https://x/{sid}"], status=st,
                            error_code=None if st == ScanStatus.SUCCEEDED else "SCAN_CORRUPT",
                            error_message=None if st == ScanStatus.SUCCEEDED else "bad") for sid, st in statuses.items()}
    tasks.create(Task(task_id="t-alone", company_id="c1", model="tissue", status=TaskStatus.RUNNING, scans=scans))
    for sid, st in statuses.items():
        if st == ScanStatus.SUCCEEDED:
            result = ScanResult(scanId=sid, results={"report": {"summary": {"Tissue area": f"{len(sid)} mm2"}}},
                                geojson={"type": "FeatureCollection", "features": []})
            artifacts.put(scan_result_key("t-alone", sid), result.model_dump_json().encode(), "application/json")
    return "t-alone"


def _container(settings: Settings) -> tuple[Container, MemoryTaskStore, MemoryArtifactStore]:
    tasks, artifacts = MemoryTaskStore(), MemoryArtifactStore()
    # a launcher that starts nothing: the tests run the worker's processing themselves (the default local
    # launcher would start a real worker process beside them, which fails on these in-memory stores)
    container = bootstrap(settings, tasks=tasks, artifacts=artifacts, secrets=FernetSecretBox(),
                          launcher=MemoryJobLauncher(), sleep=lambda _s: None)
    return container, tasks, artifacts


def test_no_platform_url_completes_the_task_with_its_results_readable(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN the bridge built with no platform URL and no platform credentials, and a task whose scans are done
    container, tasks, artifacts = _container(Settings(platform_url="", platform_api_key=""))
    task_id = _finished_task(tasks, artifacts, statuses={"s1": ScanStatus.SUCCEEDED, "s22": ScanStatus.FAILED})
    # WHEN the job ends
    with logged(caplog, "scanbridge.services.delivery"):
        task = container.delivery.on_job_finished(task_id, True)
    # THEN the task is COMPLETED, not DELIVERY_FAILED, its delivery record says why nothing was posted
    assert task.status == TaskStatus.COMPLETED and task.error_code is None, task
    assert task.delivery.skipped == NO_PLATFORM == "no platform configured"
    assert task.delivery.attempts == 0 and task.delivery.last_error is None and task.delivery.status_code is None
    # AND the results are readable through the queries the API serves: each scan's own result or its failure
    body = container.queries.results(task_id)
    by_scan = {s["scanId"]: s for s in body["scanResults"]}
    assert by_scan["s1"]["results"]["report"]["summary"] == {"Tissue area": "2 mm2"}
    assert by_scan["s22"]["results"]["error"]["code"] == "SCAN_CORRUPT"
    view = container.queries.task_view(task_id)
    assert view["status"] == "COMPLETED" and view["delivery"]["skipped"] == "no platform configured"
    # AND the log says so in words
    assert any("not posted: no platform configured" in r.getMessage() for r in caplog.records)


def test_no_platform_url_with_every_scan_failed_ends_failed_not_delivery_failed() -> None:
    # GIVEN no platform and a task whose only scan failed
    container, tasks, artifacts = _container(Settings(platform_url=""))
    task_id = _finished_task(tasks, artifacts, statuses={"s1": ScanStatus.FAILED})
    # WHEN the job ends / THEN FAILED with the scan's own code (what the platform would have been told), skipped
    task = container.delivery.on_job_finished(task_id, True)
    assert task.status == TaskStatus.FAILED and task.error_code == "SCAN_CORRUPT"
    assert task.delivery.skipped == "no platform configured"
    stored = json.loads(artifacts.get(posted_key(task_id)) or b"{}")
    assert stored == container.queries.results(task_id) and stored["scanResults"][0]["results"]["error"]["code"] == "SCAN_CORRUPT"


def test_a_configured_platform_is_still_posted_to(tmp_path: Path) -> None:
    # GIVEN a platform URL that refuses connections (nothing listens on port 9 of loopback); the dead letter
    # of the failed delivery goes under tmp_path (not the checkout's .scanbridge, which xdist workers share)
    container, tasks, artifacts = _container(Settings(platform_url="http://127.0.0.1:9", platform_api_key="k",
                                                      delivery_attempts=1, delivery_retry_window_s=0,
                                                      data_dir=tmp_path / "data"))
    task_id = _finished_task(tasks, artifacts, statuses={"s1": ScanStatus.SUCCEEDED})
    # WHEN the job ends / THEN the delivery was tried and failed: a configured platform is never skipped
    task = container.delivery.on_job_finished(task_id, True)
    assert task.status == TaskStatus.DELIVERY_FAILED and task.delivery.skipped is None and task.delivery.attempts == 1
    assert [p.name for p in (tmp_path / "data" / "dead-letters").iterdir()] == ["000001-t-alone.json"]


def _run_token_less(settings: Settings, task_id: str) -> tuple[Container, list[str], Task]:
    """A token-less webhook (what `scanbridge submit` sends) for the real boxes.tiff on a loopback file
    server, accepted and run by the worker's processing: (container, files downloaded, the processed task)."""
    container, _tasks, _artifacts = _container(settings)
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate(
            {"task_id": task_id, "scans": {"1": fake.url_for("boxes")}, "model": "tissue"}))
        processed = build_processing(container).run(task_id)
    return container, list(fake.downloads), processed


def test_no_platform_and_no_credentials_a_token_less_task_is_still_analysed(tmp_path: Path) -> None:
    # GIVEN a bridge with no platform URL and no platform API key (`scanbridge serve` as it starts)
    settings = Settings(platform_url="", platform_api_key="", data_dir=tmp_path / "data")
    # WHEN a token-less task runs and its job ends
    container, downloads, processed = _run_token_less(settings, "t-submit")
    task = container.delivery.on_job_finished("t-submit", True)
    # THEN the scan was downloaded and analysed (not failed NO_PLATFORM_CREDENTIALS before any download)
    assert downloads == ["boxes"]
    assert processed.error_code is None and processed.scans["1"].status == ScanStatus.SUCCEEDED, processed
    # AND the task is COMPLETED with its results kept, nothing posted
    assert task.status == TaskStatus.COMPLETED and task.delivery.skipped == "no platform configured"
    assert container.queries.results("t-submit")["scanResults"][0]["geojson"]["features"]


def test_a_platform_without_credentials_still_fails_a_token_less_task_before_any_download(tmp_path: Path) -> None:
    # GIVEN a platform URL but no API key
    settings = Settings(platform_url="http://127.0.0.1:9", platform_api_key="", data_dir=tmp_path / "data")
    # WHEN a token-less task runs / THEN it fails at once, before any download: the results could never be posted
    _c, downloads, processed = _run_token_less(settings, "t-nokey")
    assert downloads == []
    assert processed.error_code == "NO_PLATFORM_CREDENTIALS"
