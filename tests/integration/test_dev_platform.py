"""`scanbridge dev platform`: the contract checks, and the whole loop against the real local stack (e2e)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from scanbridge.devtools import synth
from scanbridge.devtools.local_platform import FakePlatform, ReceivedPost
from scanbridge.devtools.platform_cli import check_results, main, scan_ids_for, webhook_body
from scanbridge.entrypoints.local_stack import free_port
from tests.conftest import fixture_path


def _post(body: object, auth: str | None = "Bearer k") -> ReceivedPost:
    return ReceivedPost(path="/api/v3/external/results/t-1", task_id="t-1", authorization=auth,
                        content_type="application/json", body=body, at=time.time())


def test_webhook_body_has_the_debug_request_shape() -> None:
    # GIVEN a served file / WHEN the webhook body is built
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}) as fake:
        body = webhook_body(fake, ["boxes"], task_id="t-1", model="", company_id="c", case_id="k", expires_s=60)
    # THEN it has the platform's keys, presigned-style URLs with an expiry, and no jwt_token
    assert list(body) == ["company_id", "scans", "scan_urls", "stains", "case_id", "task_id", "model_name"]
    assert "X-Amz-Expires=60" in body["scans"]["boxes"] and body["scan_urls"]["boxes"] == [body["scans"]["boxes"]]
    assert scan_ids_for([Path("a/x.svs"), Path("b/x.svs")]) == {"x": Path("a/x.svs"), "x-2": Path("b/x.svs")}


def test_check_results_names_each_contract_break() -> None:
    # GIVEN a results POST with a feature outside the slide, a missing scan and no Bearer
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [500, 10]},
               "properties": {"annotation_type": "x"}}
    body = {"caseResults": {}, "scanResults": [{"scanId": "a", "geojson": {"type": "FeatureCollection",
                                                                           "features": [feature]}}]}
    # WHEN checked against two scans of 300x250
    problems = check_results(_post(body, auth=None), task_id="t-1", dims={"a": (300, 250), "b": (300, 250)})
    # THEN each break is named; a good body has none
    text = " | ".join(problems)
    assert "Bearer" in text and "outside the 300x250 slide" in text and "scan b: 0 results" in text
    good = {"caseResults": {}, "scanResults": [{"scanId": "a"}, {"scanId": "b"}]}
    assert check_results(_post(good), task_id="t-1", dims={"a": (300, 250), "b": None}, bearer="k") == []


def test_no_results_before_the_timeout_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN nobody sends the webhook / WHEN the platform waits 0.3 s / THEN it prints the body and exits 2
    assert main(["--port", "0", "--timeout", "0.3", str(fixture_path("boxes.tiff"))]) == 2
    out = capsys.readouterr().out
    assert '"task_id"' in out and "SCANBRIDGE_ALLOWED_SCAN_HOSTS=127.0.0.1:" in out and "no results" in out


@pytest.mark.e2e
def test_whole_loop_against_the_local_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.e2e.test_local_stack import start_stack

    # GIVEN the real `scanbridge serve`, pointed at the port the dev platform will use, with an API key,
    # a public URL and the company's QC reasons; and a good scan plus a blank one
    blank = tmp_path / "blank.svs"
    synth.make_slide(blank, 1024, 1024, blank=True)
    port = free_port()
    env = {"SCANBRIDGE_PLATFORM_API_KEY": "local-dev-key", "SCANBRIDGE_PUBLIC_URL": "http://127.0.0.1:8000",
           "SCANBRIDGE_QC_FAIL_REASONS": json.dumps({"NO_TISSUE": "no tissue"})}
    with start_stack(FakePlatform(port=port), tmp_path, env) as url:
        # WHEN `scanbridge dev platform --send` serves them, sends the webhook and waits for the results
        code = main(["--port", str(port), "--send", f"{url}/webhook", "--task-id", "dev-1", "--api-key",
                     "local-dev-key", "--timeout", "90", str(fixture_path("boxes.tiff")), str(blank)])
    out = capsys.readouterr().out
    # THEN the results follow the contract, with the API key as Bearer, and the report says so
    assert code == 0, out
    assert "contract: OK" in out and "Authorization: Bearer <13 chars>" in out
    # AND it ends with the bridge's own status, read once the bridge recorded the platform's answer
    assert out.rstrip().splitlines()[-1] == "bridge: task dev-1 COMPLETED", out[-500:]
    # AND the blank scan carries the company's reason, the good one its tissue, both the task's link
    assert "qcFailReasons: no tissue" in out and "tissue" in out
    assert "external_url: http://127.0.0.1:8000/tasks/dev-1" in out
    assert "local-dev-key" not in out.replace("--api-key", "")
