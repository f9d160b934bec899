"""The package as deployed (issue #14): the layer `sam build` makes answers every file of events/, in a fresh
interpreter that sees only the function's folder, the layer and boto3, against moto provisioned from
template.yaml; and the worker runs as the job definition says, then the results function posts.

Each event belongs to one scenario (a fresh moto account, cold Lambda containers); every file of events/
must be in one, with the answer the in-process tests expect.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from tests.conftest import EVENTS, REPO
from tests.deploy.conftest import PLATFORM_API_KEY, Deployment, function_for_event

CONSOLE_SCRIPT = Path(__file__).with_name("console_script.py")
TASK = "dGFzazoxODU4MzU="  # the platform's sample task (api_webhook.json, webhook_post.json, results_*.json)
TWO_SCAN_TASK = "dGFzazoxODU4MzY="  # webhook_two_scans.json, results_array_*.json
Check = Callable[[Deployment, dict[str, Any]], None]


def _body(resp: dict[str, Any]) -> Any:
    raw = resp.get("body") or ""
    return json.loads(base64.b64decode(raw) if resp.get("isBase64Encoded") else raw)


def _status(expected: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def check(resp: dict[str, Any]) -> dict[str, Any]:
        assert resp["statusCode"] == expected, resp
        return resp
    return check


def _accepted(created: bool, task_id: str = TASK) -> Check:
    def check(_d: Deployment, resp: dict[str, Any]) -> None:
        body = _body(_status(202)(resp))
        assert body == {"task_id": task_id, "status": "QUEUED", "created": created}
    return check


def _health(_d: Deployment, resp: dict[str, Any]) -> None:
    body = _body(_status(200)(resp))
    assert body["status"] == "ok" and "tissue" in body["models"] and body["launcher"] == "batch"


def _task_queued(_d: Deployment, resp: dict[str, Any]) -> None:
    body = _body(_status(200)(resp))
    assert body["task_id"] == TASK and body["status"] == "QUEUED" and body["model"] == "tissue"


def _task_listed(_d: Deployment, resp: dict[str, Any]) -> None:
    body = _body(_status(200)(resp))
    assert [t["task_id"] for t in body["tasks"]] == [TASK]


def _models(_d: Deployment, resp: dict[str, Any]) -> None:
    names = {m["name"] for m in _body(_status(200)(resp))["models"]}
    assert {"tissue", "nuclei", "ihc-positivity"} <= names


def _model_tissue(_d: Deployment, resp: dict[str, Any]) -> None:
    body = _body(_status(200)(resp))
    assert (body.get("spec") or body)["name"] == "tissue"


def _capabilities(_d: Deployment, resp: dict[str, Any]) -> None:
    body = _body(_status(200)(resp))
    assert set(body["unavailable_routes"]) == {"infer", "evaluate", "mcp", "model_upload"}
    assert body["endpoints"]["infer"]["available"] is False and "scanbridge serve" in body["endpoints"]["infer"]["runs_on"]
    assert body["endpoints"]["task"]["available"] is True and body["launcher"] == "batch"


def _failed_and_told(task_id: str, scans: int) -> Check:
    def check(d: Deployment, resp: dict[str, Any]) -> None:
        assert resp == {"task_id": task_id, "status": "FAILED"}
        posts = [p for p in d.platform.wait_for_posts(1, timeout_s=10) if p.task_id == task_id]
        assert len(posts) == 1 and posts[0].authorization == f"Bearer {PLATFORM_API_KEY}"
        results = posts[0].body["scanResults"]
        assert len(results) == scans
        assert {r["results"]["report"]["summary"]["Error code"] for r in results} == {"WORKER_FAILED"}
    return check


def _array_job_submitted(d: Deployment, resp: dict[str, Any]) -> None:
    _accepted(True, TWO_SCAN_TASK)(d, resp)
    batch = d.client("batch")
    jobs = batch.list_jobs(jobQueue=d.refs["GpuJobQueue"], filters=[{"name": "JOB_NAME", "values": ["*"]}])
    described = batch.describe_jobs(jobs=[j["jobId"] for j in jobs["jobSummaryList"]])["jobs"]
    parents = [j for j in described if j["parameters"] == {"task_id": TWO_SCAN_TASK}
               and ":" not in j["jobId"]]  # moto lists the children (<parent id>:<index>) too
    assert len(parents) == 1 and parents[0]["arrayProperties"]["size"] == 2


def _ignored(_d: Deployment, resp: dict[str, Any]) -> None:
    assert "ignored" in resp


def _nothing_due(_d: Deployment, resp: dict[str, Any]) -> None:
    assert resp == {"retried": []}  # every delivery above was taken at once


#: scenario -> the events replayed in it, in order, each with what it must answer
INTAKE: list[tuple[str, Check]] = [
    ("webhook_post.json", _accepted(True)),
    ("api_webhook.json", _accepted(False)),
    ("api_health.json", _health),
    ("api_get_task.json", _task_queued),
    ("api_list_tasks.json", _task_listed),
    ("api_list_models.json", _models),
    ("api_describe_model.json", _model_tissue),
    ("api_config_available.json", _capabilities),
    ("results_failed.json", _failed_and_told(TASK, 1)),
    ("webhook_two_scans.json", _array_job_submitted),
    ("results_array_child.json", _ignored),
    ("results_array_parent.json", _failed_and_told(TWO_SCAN_TASK, 2)),
    ("results_retry_due.json", _nothing_due),  # the delivery retry schedule's event
]
if not (EVENTS / "results_retry_due.json").exists():  # added by the delivery-schedule work, landing beside this
    INTAKE = [(name, check) for name, check in INTAKE if name != "results_retry_due.json"]
#: replayed by test_the_worker_runs_as_batch_runs_it after the worker has run
AFTER_WORKER = ["results_succeeded.json", "api_get_results.json", "api_list_artifacts.json",
                "api_get_artifact.json", "api_export_geojson.json", "api_scan_metadata.json"]


def test_every_event_file_is_replayed_and_names_a_function(deployment: Deployment) -> None:
    # GIVEN events/ and the functions of template.yaml
    files = {p.name for p in EVENTS.glob("*.json")}
    replayed = [name for name, _ in INTAKE] + AFTER_WORKER
    # THEN every file is replayed exactly once, by a function that template.yaml builds
    assert sorted(replayed) == sorted(files), "give each events/ file a scenario in tests/deploy/test_deployed.py"
    folders = {p.parent.name for p in (Path(__file__).parents[2] / "functions").glob("*/app.py")}
    assert {function_for_event(name) for name in files} == folders


def test_the_built_layer_answers_every_intake_event(deployment: Deployment) -> None:
    # GIVEN a fresh account provisioned from template.yaml and cold Lambda containers on the built layer
    deployment.fresh()
    # WHEN every event of the scenario is replayed against its function
    for name, check in INTAKE:
        resp = deployment.replay(name)
        # THEN no import error, no 5xx, and the answer the in-process tests expect
        if "statusCode" in resp:
            assert resp["statusCode"] < 500, (name, resp)
        check(deployment, resp)
    # AND the API Lambda imported nothing of the worker (the layer has no numpy or onnxruntime)
    api = deployment.function("api")
    assert not api.modules & {"numpy", "onnxruntime", "openslide", "pydicom", "moto", "mcp", "uvicorn"}
    # AND no cold start compiled a file of the layer: it ships its bytecode (Lambda's /opt is read-only)
    for folder in {function_for_event(name) for name, _ in INTAKE}:
        assert [f for f in deployment.function(folder).compiled if f.startswith(str(deployment.layer))] == [], folder


def _webhook_for_the_slide(deployment: Deployment) -> tuple[dict[str, Any], str]:
    """webhook_post.json pointing at the loopback platform's slide, with a task JWT (as the platform sends)."""
    event = json.loads((EVENTS / "webhook_post.json").read_text())
    body = json.loads(event["body"])
    url = deployment.platform.url_for("slide")
    body["scans"] = {"8823846": url}
    body["scan_urls"] = {"8823846": [url]}
    token = jwt.encode({"sub": "task", "exp": int(time.time()) + 3600}, "platform-signing-key", algorithm="HS256")
    body["jwt_token"] = token
    event["body"] = json.dumps(body)
    return event, token


def _cuda_usable() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_the_worker_runs_as_batch_runs_it_and_the_results_function_posts(deployment: Deployment,
                                                                         worker_site: Path) -> None:
    # GIVEN a fresh account and the platform's webhook for a real slide, accepted by the webhook function
    deployment.fresh()
    event, token = _webhook_for_the_slide(deployment)
    assert _body(deployment.replay("webhook_post.json", event))["created"] is True
    # WHEN the job definition's command runs with the environment the job definition gives it, in an
    # interpreter that sees only what `pip install ".[worker]"` installs (the worker image) and the package
    command = deployment.job_command(TASK)
    env = {**deployment.aws_env(), **deployment.job_env(),
           "SCANBRIDGE_DATA_DIR": str(deployment.work / "worker")}  # the image's ENV (batch/Dockerfile)
    if env.get("SCANBRIDGE_DEVICE") == "cuda" and not _cuda_usable():
        env["SCANBRIDGE_DEVICE"] = "cpu"  # the one departure from the job's environment: no GPU on this machine
    assert command[:2] == ["scanbridge", "worker"]
    started = time.monotonic()
    script = [sys.executable, "-S", "-I", str(CONSOLE_SCRIPT), str(worker_site), str(REPO / "src"), *command]
    proc = subprocess.run(script, check=False, env=env, cwd=deployment.work, capture_output=True, text=True,
                          timeout=240)
    worker_s = time.monotonic() - started
    # THEN the worker exits 0 having downloaded the slide once from the platform
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(deployment.platform.downloads) >= 1
    # WHEN Batch's SUCCEEDED event reaches the results function (built layer, fresh interpreter)
    out = deployment.replay("results_succeeded.json")
    # THEN the task is COMPLETED and the platform got one POST for it, with the task's JWT
    assert out == {"task_id": TASK, "status": "COMPLETED"}
    posts = deployment.platform.wait_for_posts(1, timeout_s=10)
    assert [p.task_id for p in posts] == [TASK]
    post = posts[0]
    assert post.authorization == f"Bearer {token}"
    scan = post.body["scanResults"][0]
    assert scan["scanId"] == "8823846" and scan["geojson"]["features"], scan.get("results")
    assert post.body["caseResults"]
    # AND the REST events read what the worker stored and the platform got
    results = _body(_status(200)(deployment.replay("api_get_results.json")))
    assert results == post.body
    artifacts = _body(_status(200)(deployment.replay("api_list_artifacts.json")))
    assert "overlay.png" in {a["file"] for a in artifacts["artifacts"]}
    png = _status(200)(deployment.replay("api_get_artifact.json"))
    assert png["headers"]["content-type"] == "image/png"
    assert base64.b64decode(png["body"]).startswith(b"\x89PNG")
    exported = _body(_status(200)(deployment.replay("api_export_geojson.json")))
    assert exported["type"] == "FeatureCollection" and len(exported["features"]) == len(scan["geojson"]["features"])
    meta = _body(_status(200)(deployment.replay("api_scan_metadata.json")))
    assert (meta.get("width"), meta.get("height")) == (1920, 1440) or meta.get("dimensions") == [1920, 1440], meta
    # AND a second SUCCEEDED event (EventBridge delivers at least once) posts nothing more
    assert deployment.replay("results_succeeded.json") == {"task_id": TASK, "status": "COMPLETED"}
    time.sleep(0.2)
    assert len(deployment.platform.posts) == 1
    print(f"worker as Batch runs it: {worker_s:.1f} s")


def test_an_unknown_key_gets_401_and_inference_says_where_it_runs(deployment: Deployment) -> None:
    # GIVEN the sample task accepted under the events' tenant
    deployment.fresh()
    deployment.replay("webhook_post.json")
    # WHEN another tenant's key (unknown here) reads it / THEN 401, never a 5xx
    event = json.loads((EVENTS / "api_get_task.json").read_text())
    event["headers"]["authorization"] = "Bearer not-a-key"
    resp = deployment.replay("api_get_task.json", event)
    assert resp["statusCode"] == 401 and _body(resp)["error"]["code"] == "UNAUTHORIZED"
    # AND the synchronous inference route says where it runs (501 ROUTE_NOT_AVAILABLE), the admin's too
    infer = json.loads((EVENTS / "api_get_task.json").read_text())
    infer["rawPath"] = infer["requestContext"]["http"]["path"] = "/v1/infer/tissue"
    infer["requestContext"]["http"]["method"] = "POST"
    infer["headers"]["content-type"] = "multipart/form-data; boundary=x"
    infer["body"] = "--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\nPNG\r\n--x--\r\n"
    resp = deployment.replay("api_infer.json", infer)
    assert resp["statusCode"] == 501 and _body(resp)["error"]["code"] == "ROUTE_NOT_AVAILABLE"
    assert "scanbridge serve" in _body(resp)["error"]["details"]["runs_on"]
