"""Intake, delivery and queries over in-memory adapters (no AWS, no network)."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from scanbridge.adapters.local.memory import (
    FernetSecretBox,
    MemoryArtifactStore,
    MemoryJobLauncher,
    MemoryTaskStore,
)
from scanbridge.bootstrap import Container, bootstrap
from scanbridge.config import Settings
from scanbridge.domain.errors import ResultsNotReadyError, TaskNotFoundError, ValidationError
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.storage_keys import posted_key, scan_result_key
from scanbridge.domain.task import Task
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.services.common import update_task
from tests.conftest import SAMPLE_WEBHOOK, ScriptedPlatform


def _payload(**changes: object) -> WebhookPayload:
    return WebhookPayload.model_validate({**SAMPLE_WEBHOOK, **changes})


def _finish_scans(container: Container, task_id: str, status: ScanStatus = ScanStatus.SUCCEEDED) -> None:
    def change(t):  # type: ignore[no-untyped-def]
        scans = {k: v.model_copy(update={"status": status}) for k, v in t.scans.items()}
        return t.moved_to(TaskStatus.RUNNING, scans=scans)
    update_task(container.tasks, task_id, change)


def test_intake_stores_one_task_and_submits_one_job(container: Container, launcher: MemoryJobLauncher) -> None:
    # GIVEN the platform's sample webhook with a token
    token = jwt.encode({"exp": int(time.time()) + 3600, "sub": "task"}, "k" * 32, algorithm="HS256")
    payload = _payload(jwt_token=token, extra_thing=[1, 2])
    # WHEN it arrives three times
    results = [container.intake.accept(payload) for _ in range(3)]
    # THEN one task exists, QUEUED, with one job; the token is stored only encrypted; extras are kept
    assert [r.created for r in results] == [True, False, False]
    assert launcher.submitted == [SAMPLE_WEBHOOK["task_id"]]
    task = container.tasks.get(SAMPLE_WEBHOOK["task_id"])
    assert task is not None and task.status == TaskStatus.QUEUED and task.job_id == "job-1"
    assert task.model == "tissue"
    assert task.token_ciphertext and token not in task.model_dump_json()
    assert container.secrets.decrypt(task.token_ciphertext, {"task_id": task.task_id}) == token
    assert task.token_exp is not None and task.token_exp > time.time()
    assert task.extra == {"extra_thing": [1, 2]}
    view = str(task.public_view())
    assert token not in view and task.token_ciphertext not in view and "token_ciphertext" not in view


def test_intake_refuses_too_many_scans(container: Container, launcher: MemoryJobLauncher) -> None:
    # GIVEN a webhook with more scans than the limit / WHEN accepted / THEN refused, nothing stored or submitted
    scans = {str(i): f"https://b.s3.amazonaws.com/{i}" for i in range(container.settings.max_scans_per_task + 1)}
    with pytest.raises(ValidationError):
        container.intake.accept(_payload(scans=scans))
    assert launcher.submitted == [] and container.tasks.get(SAMPLE_WEBHOOK["task_id"]) is None


def test_failed_submission_leaves_task_received_for_the_redelivery(container: Container,
                                                                     launcher: MemoryJobLauncher) -> None:
    # GIVEN a launcher that fails once
    calls = {"n": 0}
    real = launcher.submit

    def flaky(task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Batch is down")
        return real(task_id, scans=scans, job_id=job_id)

    launcher.submit = flaky  # type: ignore[method-assign]
    # WHEN the webhook arrives, fails, and is redelivered
    with pytest.raises(RuntimeError):
        container.intake.accept(_payload())
    assert container.tasks.get(SAMPLE_WEBHOOK["task_id"]).status == TaskStatus.RECEIVED  # type: ignore[union-attr]
    again = container.intake.accept(_payload())
    # THEN the redelivery submits the job
    assert again.task.status == TaskStatus.QUEUED and launcher.submitted == [SAMPLE_WEBHOOK["task_id"]]
    stored = container.tasks.get(SAMPLE_WEBHOOK["task_id"])
    assert stored is not None and stored.job_id == "job-1"


class CountingStore(MemoryTaskStore):
    """The in-memory store, counting the writes it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def create(self, task: Task) -> bool:
        self.writes += 1
        return super().create(task)

    def replace(self, task: Task, expected_version: int) -> bool:
        self.writes += 1
        return super().replace(task, expected_version)


class NamingLauncher(MemoryJobLauncher):
    """A launcher that runs the job under the id its caller proposes (as the local launcher does)."""

    def submit(self, task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        super().submit(task_id, scans)
        return job_id or "unnamed"


def test_acknowledgement_writes_once_when_the_launcher_takes_the_job_id(settings: Settings) -> None:
    # GIVEN a store that counts writes and a launcher that takes the job id it is given
    store, launcher = CountingStore(), NamingLauncher()
    container = bootstrap(settings, tasks=store, artifacts=MemoryArtifactStore(), secrets=FernetSecretBox(),
                          launcher=launcher, platform=ScriptedPlatform())
    # WHEN a webhook is accepted
    first = container.intake.accept(_payload())
    # THEN that made one write, the conditional create, and the job runs under the id stored with the task
    assert store.writes == 1
    stored = container.tasks.get(SAMPLE_WEBHOOK["task_id"])
    assert stored is not None and stored.job_id and stored.job_id.startswith("job-")
    assert first.created and first.task.job_id == stored.job_id
    assert stored.status == TaskStatus.QUEUED and stored.version == 0
    # AND a redelivery submits nothing more
    again = container.intake.accept(_payload())
    assert not again.created and launcher.submitted == [SAMPLE_WEBHOOK["task_id"]]


def test_delivery_posts_with_the_token_and_completes(container: Container, platform: ScriptedPlatform) -> None:
    # GIVEN a task whose only scan succeeded and stored its result
    container.intake.accept(_payload(jwt_token="tok.en.x"))
    tid = SAMPLE_WEBHOOK["task_id"]
    stored = {"scanId": "8823846", "results": {"report": {"summary": {"Tissue area": "1.000 mm²"}}},
              "geojson": {"type": "FeatureCollection", "features": []}}
    container.artifacts.put(scan_result_key(tid, "8823846"), json.dumps(stored).encode())
    _finish_scans(container, tid)
    # WHEN the job finishes (twice: the event is redelivered)
    first = container.delivery.on_job_finished(tid, True)
    second = container.delivery.on_job_finished(tid, True)
    # THEN exactly one POST with the Bearer token; the body is what GET results returns; delivery recorded
    assert len(platform.calls) == 1
    task_id, body, bearer = platform.calls[0]
    assert task_id == tid and bearer == "tok.en.x"
    assert body["scanResults"] == [stored]
    assert body["caseResults"]["scans_analysed"] == 1 and body["caseResults"]["scans_failed"] == 0
    assert first.status == TaskStatus.COMPLETED
    assert second.status == first.status
    assert container.queries.results(tid) == body
    assert first.delivery.status_code == 200 and first.delivery.attempts == 1


def test_delivery_retries_5xx_and_not_4xx(container: Container, platform: ScriptedPlatform) -> None:
    # GIVEN a platform answering 500, 503 then 200
    platform.statuses = [500, 503, 200]
    container.intake.accept(_payload(jwt_token="t"))
    tid = SAMPLE_WEBHOOK["task_id"]
    _finish_scans(container, tid)
    # WHEN delivered / THEN three attempts, one success recorded
    task = container.delivery.on_job_finished(tid, True)
    assert len(platform.calls) == 3 and task.delivery.attempts == 3 and task.delivery.status_code == 200
    # GIVEN another task and a platform answering 401 / WHEN delivered / THEN no retry, DELIVERY_FAILED
    platform.statuses = [401]
    container.intake.accept(_payload(task_id="other", jwt_token="t"))
    _finish_scans(container, "other")
    task = container.delivery.on_job_finished("other", True)
    assert len(platform.calls) == 4
    assert task.status == TaskStatus.DELIVERY_FAILED and task.delivery.status_code == 401
    with pytest.raises(ResultsNotReadyError):
        container.queries.results("other")


def test_worker_crash_is_reported_as_failed_scans(container: Container, platform: ScriptedPlatform) -> None:
    # GIVEN a queued task whose worker died
    container.intake.accept(_payload(jwt_token="t"))
    tid = SAMPLE_WEBHOOK["task_id"]
    # WHEN the job ends FAILED
    task = container.delivery.on_job_finished(tid, False, "Essential container in task exited")
    # THEN the platform is told why and the task is FAILED with WORKER_FAILED
    summary = platform.calls[0][1]["scanResults"][0]["results"]["report"]["summary"]
    assert summary["Error code"] == "WORKER_FAILED" and "Essential container" in summary["Reason"]
    assert task.status == TaskStatus.FAILED and task.error_code == "WORKER_FAILED"


def test_no_token_and_no_api_key_fails_clearly(container: Container, platform: ScriptedPlatform) -> None:
    # GIVEN the platform's sample (no jwt_token) and no API key configured
    container.intake.accept(_payload())
    tid = SAMPLE_WEBHOOK["task_id"]
    _finish_scans(container, tid)
    # WHEN delivered / THEN nothing is posted and the task says why
    task = container.delivery.on_job_finished(tid, True)
    assert platform.calls == []
    assert task.status == TaskStatus.FAILED and task.error_code == "NO_PLATFORM_CREDENTIALS"


def test_queries_list_filter_and_page(container: Container) -> None:
    # GIVEN five tasks of two companies
    for i in range(5):
        container.intake.accept(_payload(task_id=f"t{i}", company_id="A" if i % 2 else "B"))
    # WHEN listed by company, and paged
    a = container.queries.tasks(status=None, company_id="A", limit=50, cursor=None)
    page1 = container.queries.tasks(status=TaskStatus.QUEUED, company_id=None, limit=3, cursor=None)
    page2 = container.queries.tasks(status=TaskStatus.QUEUED, company_id=None, limit=3, cursor=page1.next_cursor)
    # THEN filters hold and pages cover all tasks once
    assert sorted(t.task_id for t in a.tasks) == ["t1", "t3"]
    ids = [t.task_id for t in page1.tasks + page2.tasks]
    assert sorted(ids) == [f"t{i}" for i in range(5)] and page2.next_cursor is None
    with pytest.raises(TaskNotFoundError):
        container.queries.task("t1", company_id="B")
    assert container.artifacts.get(posted_key("t1")) is None
