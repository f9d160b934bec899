"""The worker's processing service on real files fetched from a loopback platform, then delivery."""

from __future__ import annotations

import time

from scanbridge.bootstrap import Container, build_processing
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.results import geojson_problems
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.webhook import WebhookPayload
from tests.conftest import ScriptedPlatform, fixture_path


def test_each_scan_gets_a_result_or_a_coded_failure(container: Container, platform: ScriptedPlatform) -> None:
    # GIVEN a loopback platform serving a good TIFF, a corrupt SVS and an unsupported TIFF, plus a forbidden URL
    files = {"boxes": fixture_path("boxes.tiff"), "bad": fixture_path("unreadable.svs"),
             "odd": fixture_path("unopenable.tiff")}
    with FakePlatform(files=files) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        payload = WebhookPayload.model_validate({
            "task_id": "t-proc", "company_id": "c", "jwt_token": "a.b.c",
            "scan_urls": {"1": [fake.url_for("boxes")], "2": [fake.url_for("bad")], "3": [fake.url_for("odd")],
                          "4": ["http://169.254.169.254/latest/meta-data/"]}})
        container.intake.accept(payload)
        # WHEN the worker runs and the job's end is delivered
        task = build_processing(container).run("t-proc")
        done = container.delivery.on_job_finished("t-proc", True)
    # THEN each scan has the right outcome and code, and the hostile URL was never fetched
    codes = {sid: (s.status, s.error_code) for sid, s in task.scans.items()}
    assert codes == {"1": (ScanStatus.SUCCEEDED, None), "2": (ScanStatus.FAILED, "SCAN_CORRUPT"),
                     "3": (ScanStatus.FAILED, "SCAN_UNSUPPORTED_FORMAT"), "4": (ScanStatus.FAILED, "SCAN_URL_FORBIDDEN")}
    assert sorted(fake.downloads) == ["bad", "boxes", "odd"]
    # AND one POST carries four scan results: a valid level-0 GeoJSON for the good one, reasons for the rest
    assert done.status == TaskStatus.COMPLETED and len(platform.calls) == 1
    body = platform.calls[0][1]
    by_id = {s["scanId"]: s for s in body["scanResults"]}
    assert geojson_problems(by_id["1"]["geojson"], 300, 250) == []
    assert by_id["1"]["geojson"]["features"]
    assert by_id["2"]["results"]["report"]["summary"]["Error code"] == "SCAN_CORRUPT"
    assert body["caseResults"]["scans_analysed"] == 1 and body["caseResults"]["scans_failed"] == 3
    assert container.queries.scan_metadata("t-proc", "1")["level_count"] == 4


def test_expired_token_fails_before_any_download(container: Container, platform: ScriptedPlatform) -> None:
    # GIVEN a task whose JWT expired a minute ago
    import jwt

    token = jwt.encode({"exp": int(time.time()) - 60}, "k" * 32, algorithm="HS256")
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate(
            {"task_id": "t-exp", "scans": {"1": fake.url_for("boxes")}, "jwt_token": token}))
        # WHEN the worker runs
        task = build_processing(container).run("t-exp")
    # THEN nothing was downloaded and every scan failed with TASK_TOKEN_EXPIRED
    assert fake.downloads == []
    assert task.error_code == "TASK_TOKEN_EXPIRED" and task.scans["1"].error_code == "TASK_TOKEN_EXPIRED"


def test_unknown_model_fails_before_any_download(container: Container) -> None:
    # GIVEN a webhook asking for a model that does not exist
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate(
            {"task_id": "t-model", "scans": {"1": fake.url_for("boxes")}, "model_id": "no-such-model"}))
        # WHEN the worker runs / THEN MODEL_NOT_FOUND and no download
        task = build_processing(container).run("t-model")
    assert fake.downloads == [] and task.error_code == "MODEL_NOT_FOUND"


def test_scans_run_in_parallel_and_an_array_child_runs_only_its_scan(container: Container,
                                                                      launcher: object) -> None:
    # GIVEN a task with two scans (the launcher was told there are two)
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate(
            {"task_id": "t-par", "jwt_token": "a.b.c",
             "scan_urls": {"a": [fake.url_for("boxes")], "b": [fake.url_for("boxes")]}}))
        assert launcher.scans == [2]  # type: ignore[attr-defined]
        # WHEN an array child runs only scan "b"
        processing = build_processing(container)
        only_b = processing.run("t-par", only_scans=["b"])
        # THEN only "b" was fetched and finished
        assert fake.downloads == ["boxes"]
        assert only_b.scans["b"].status == ScanStatus.SUCCEEDED and only_b.scans["a"].status == ScanStatus.PENDING
        # WHEN the whole task runs (2 scans on parallel threads) / THEN "a" runs and "b" is not redone
        both = processing.run("t-par")
    assert both.scans["a"].status == ScanStatus.SUCCEEDED and len(fake.downloads) == 2
