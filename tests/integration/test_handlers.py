"""Every Lambda handler invoked in-process with the events/ files (the same ones `sam local invoke -e` takes)."""

from __future__ import annotations

import base64
import importlib.util
import json
from types import ModuleType
from typing import Any

import boto3
import pytest

from scanbridge.adapters.aws.provision import provision
from scanbridge.config import Settings, get_settings
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.status import ScanStatus, TaskStatus
from tests.conftest import EVENTS, REPO


def _load_function(name: str) -> ModuleType:
    """functions/<name>/app.py loaded from its file, as the Lambda runtime would."""
    path = REPO / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"function_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def deployed(aws: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The template's resources and a Batch queue + job definition in moto; env as template.yaml sets it."""
    iam = boto3.client("iam", region_name="us-east-1")
    role = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    batch = boto3.client("batch", region_name="us-east-1")
    ce = batch.create_compute_environment(computeEnvironmentName="gpu", type="UNMANAGED", state="ENABLED",
                                          serviceRole=role)["computeEnvironmentArn"]
    queue = batch.create_job_queue(jobQueueName="gpu-queue", state="ENABLED", priority=1,
                                   computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])["jobQueueArn"]
    jobdef = batch.register_job_definition(
        jobDefinitionName="worker", type="container", parameters={"task_id": "none"},
        containerProperties={"image": "scanbridge-worker", "command": ["scanbridge", "worker", "--task-id", "Ref::task_id"],
                             "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}]},
    )["jobDefinitionArn"]
    for key, value in {"SCANBRIDGE_LAUNCHER": "batch", "SCANBRIDGE_JOB_QUEUE": queue,
                       "SCANBRIDGE_JOB_DEFINITION": jobdef, "SCANBRIDGE_DELIVERY_BACKOFF_S": "0"}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    settings = Settings()
    clients = {n: boto3.client(n, region_name="us-east-1") for n in ("dynamodb", "s3", "kms")}
    provision(settings, clients["dynamodb"], clients["s3"], clients["kms"])
    _reset_handlers()
    yield {"batch": batch, "queue": queue}
    _reset_handlers()
    get_settings.cache_clear()


def _accept_with_token(api: ModuleType, token: str = "header.payload.signature") -> None:
    """The platform's sample webhook, with a task JWT, accepted through the API function (202)."""
    event = _event("api_webhook.json")
    body = json.loads(event["body"])
    body["jwt_token"] = token
    event["body"] = json.dumps(body)
    assert api.handler(event, None)["statusCode"] == 202


def _reset_handlers() -> None:
    """Forget the containers the handler modules cache per Lambda container (one per test here)."""
    from scanbridge.entrypoints import lambda_api, lambda_results, lambda_webhook

    lambda_api._handler = None
    lambda_webhook._container = None
    lambda_results._container = None


def test_api_handler_accepts_the_platform_sample_and_submits_one_batch_job(deployed: dict[str, Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the API function and the platform's sample webhook as an API Gateway event
    api = _load_function("api")
    event = _event("api_webhook.json")
    # WHEN it is invoked twice (a redelivery)
    first = api.handler(event, None)
    second = api.handler(event, None)
    # THEN both answer 202 with the same task, and exactly one Batch job carries only its task_id
    body = json.loads(first["body"])
    assert first["statusCode"] == 202 and body["task_id"] == "dGFzazoxODU4MzU=" and body["status"] == "QUEUED"
    assert second["statusCode"] == 202 and json.loads(second["body"])["created"] is False
    assert _metrics(capsys.readouterr().out) == {"Http2xx": 2}  # the API function counts answers by class
    jobs = deployed["batch"].list_jobs(jobQueue=deployed["queue"], filters=[{"name": "JOB_NAME", "values": ["*"]}])
    summaries = jobs["jobSummaryList"]
    assert len(summaries) == 1
    job = deployed["batch"].describe_jobs(jobs=[summaries[0]["jobId"]])["jobs"][0]
    assert job["parameters"] == {"task_id": "dGFzazoxODU4MzU="}
    # AND GET /tasks/{id} and /health through the same handler answer with the task and the models
    task = json.loads(api.handler(_event("api_get_task.json"), None)["body"])
    assert task["task_id"] == "dGFzazoxODU4MzU=" and task["status"] == "QUEUED" and task["model"] == "tissue"
    health = json.loads(api.handler(_event("api_health.json"), None)["body"])
    assert health["status"] == "ok" and "tissue" in health["models"]


@pytest.mark.parametrize(("event_file", "scans_ok"), [("results_succeeded.json", True), ("results_failed.json", False)])
def test_results_handler_posts_once_per_state_change(deployed: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                     event_file: str, scans_ok: bool) -> None:
    # GIVEN a task accepted through the API with a token, a loopback platform, and (when the job
    # succeeded) a stored result for its scan
    with FakePlatform() as platform:
        monkeypatch.setenv("SCANBRIDGE_PLATFORM_URL", platform.base_url)
        get_settings.cache_clear()
        api, results = _load_function("api"), _load_function("results")
        _accept_with_token(api)
        from scanbridge.bootstrap import bootstrap
        from scanbridge.domain.storage_keys import scan_result_key
        from scanbridge.services.common import update_task
        c = bootstrap()
        tid = "dGFzazoxODU4MzU="
        if scans_ok:
            c.artifacts.put(scan_result_key(tid, "8823846"), json.dumps(
                {"scanId": "8823846", "results": {"report": {"summary": {"Tissue area": "2.000 mm²"}}},
                 "geojson": {"type": "FeatureCollection", "features": []}}).encode())
            update_task(c.tasks, tid, lambda t: t.moved_to(TaskStatus.RUNNING, scans={
                k: v.model_copy(update={"status": ScanStatus.SUCCEEDED}) for k, v in t.scans.items()}))
        # WHEN the Batch state-change event arrives (twice)
        out = results.handler(_event(event_file), None)
        results.handler(_event(event_file), None)
        # THEN one POST with the Bearer token; COMPLETED on success, FAILED with WORKER_FAILED otherwise
        posts = platform.wait_for_posts(1, timeout_s=10)
        assert len(posts) == 1 and posts[0].authorization == "Bearer header.payload.signature"
        summary = posts[0].body["scanResults"][0]["results"]["report"]["summary"]
        task = c.tasks.get(tid)
        assert task is not None
        if scans_ok:
            assert out["status"] == "COMPLETED" and summary == {"Tissue area": "2.000 mm²"}
        else:
            assert out["status"] == "FAILED" and task.error_code == "WORKER_FAILED"
            assert summary["Error code"] == "WORKER_FAILED"


def _metrics(out: str) -> dict[str, float]:
    """The metrics of the CloudWatch embedded-metric-format lines Powertools printed, summed by name."""
    found: dict[str, float] = {}
    for line in out.splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        for directive in record.get("_aws", {}).get("CloudWatchMetrics", []):
            for metric in directive["Metrics"]:
                value = record[metric["Name"]]
                found[metric["Name"]] = found.get(metric["Name"], 0) + sum(value if isinstance(value, list) else [value])
    return found


def test_results_handler_ignores_array_children(deployed: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a task accepted through the API, a loopback platform, and the state change of one child of an
    # array job (the parent's event is the one that delivers)
    with FakePlatform() as platform:
        monkeypatch.setenv("SCANBRIDGE_PLATFORM_URL", platform.base_url)
        get_settings.cache_clear()
        api, results = _load_function("api"), _load_function("results")
        assert api.handler(_event("api_webhook.json"), None)["statusCode"] == 202
        from scanbridge.bootstrap import bootstrap

        tasks = bootstrap().tasks
        before = tasks.get("dGFzazoxODU4MzU=")
        event = _event("results_succeeded.json")
        event["detail"]["arrayProperties"] = {"index": 1}
        # WHEN it is handled
        out = results.handler(event, None)
        # THEN it says so (and counts it), nothing is POSTed to the platform and the task record is unchanged
        assert "ignored" in out
        assert _metrics(capsys.readouterr().out).get("EventsIgnored") == 1
        assert platform.wait_for_posts(1, timeout_s=1.0) == []
        after = tasks.get("dGFzazoxODU4MzU=")
        assert before is not None and after is not None
        assert (after.status, after.delivery, after.updated_at) == (before.status, before.delivery, before.updated_at)


def test_webhook_function_acknowledges_once_and_refuses_with_the_uniform_body(
        deployed: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN the lean webhook function and the platform's sample webhook as an API Gateway event
    webhook = _load_function("webhook")
    event = _event("api_webhook.json")
    # WHEN it arrives twice / THEN 202 both times with the same task, one Batch job with only the task_id
    first, second = webhook.handler(event, None), webhook.handler(event, None)
    assert first["statusCode"] == 202 and json.loads(first["body"]) == {
        "task_id": "dGFzazoxODU4MzU=", "status": "QUEUED", "created": True}
    assert second["statusCode"] == 202 and json.loads(second["body"])["created"] is False
    assert _metrics(capsys.readouterr().out) == {"WebhookAccepted": 1, "WebhookDuplicate": 1}
    jobs = deployed["batch"].list_jobs(jobQueue=deployed["queue"], filters=[{"name": "JOB_NAME", "values": ["*"]}])
    assert len(jobs["jobSummaryList"]) == 1
    # AND the FastAPI API reads the same task
    task = json.loads(_load_function("api").handler(_event("api_get_task.json"), None)["body"])
    assert task["status"] == "QUEUED" and task["model"] == "tissue"
    capsys.readouterr()
    # WHEN the body is not the contract / THEN 422 with the uniform error body
    bad = dict(event, body=json.dumps({"task_id": "x"}))
    resp = webhook.handler(bad, None)
    assert resp["statusCode"] == 422 and json.loads(resp["body"])["error"]["code"] == "VALIDATION_ERROR"
    # AND it is counted as refused and logged with its code, without its body
    assert _metrics(capsys.readouterr().out) == {"WebhookRefused": 1}
    refusal = next(r for r in caplog.records if r.getMessage() == "webhook refused")
    assert refusal.__dict__["error_code"] == "VALIDATION_ERROR" and "task_id" not in refusal.__dict__
    # WHEN a webhook secret is configured and the request is unsigned / THEN 401 and nothing stored
    monkeypatch.setenv("SCANBRIDGE_WEBHOOK_SECRET", "whsec_" + base64.b64encode(b"k" * 32).decode())
    get_settings.cache_clear()
    _reset_handlers()
    other = dict(event, body=event["body"].replace("dGFzazoxODU4MzU=", "unsigned-task"))
    resp = webhook.handler(other, None)
    assert resp["statusCode"] == 401 and json.loads(resp["body"])["error"]["code"] == "WEBHOOK_SIGNATURE_INVALID"
    from scanbridge.bootstrap import bootstrap

    assert bootstrap().tasks.get("unsigned-task") is None
