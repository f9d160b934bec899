"""The results POST streams each stored result.json as it is: the platform gets the same body as before."""

from __future__ import annotations

import json
from typing import Any

import httpx

from scanbridge.adapters.local.memory import FernetSecretBox, MemoryArtifactStore, MemoryTaskStore
from scanbridge.adapters.platform_http import HttpPlatformClient, results_url
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.feature_spool import (
    FeatureSpool,
    StreamedScanResult,
    result_json_bytes,
    stored_result_head,
)
from scanbridge.domain.results import ResultsPayload, ScanResult, failure_result
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.storage_keys import posted_key, scan_result_key
from scanbridge.domain.task import ScanState, Task
from scanbridge.services.delivery import DeliveryService, case_results


def _nucleus(i: int) -> dict[str, Any]:
    x, y = 10.0 + i, 20.0 + i / 3
    return {"type": "Feature", "id": f"id-{i}", "bbox": [x, y, x + 4, y + 4],
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 4, y], [x + 4, y + 4], [x, y]]]},
            "properties": {"annotation_type": "nucleus", "objectType": "detection",
                           "classification": {"name": "Nucleus", "color": [63, 81, 181]},
                           "measurements": {"Area µm^2": 2.5 + i, "Solidity": 0.9}}}


def _task(secrets: FernetSecretBox) -> Task:
    scans = {"s1": ScanState(scan_id="s1", urls=["https://x/1"], status=ScanStatus.SUCCEEDED),
             "s2": ScanState(scan_id="s2", urls=["https://x/2"], status=ScanStatus.SUCCEEDED),
             "s3": ScanState(scan_id="s3", urls=["https://x/3"], status=ScanStatus.FAILED,
                             error_code="SCAN_CORRUPT", error_message="bad")}
    return Task(task_id="t-stream", company_id="c1", model="nuclei", status=TaskStatus.RUNNING,
                token_ciphertext=secrets.encrypt("jwt.a.b", {"task_id": "t-stream"}), scans=scans)


def _stored(artifacts: MemoryArtifactStore) -> None:
    """s1: a streamed object result (5,000 features in a spool, stored as the worker stores it); s2: a result
    laid out otherwise (geojson before results, as another writer could); s3: none (the scan failed)."""
    spool = FeatureSpool(max_memory=4096)  # most of it on disk, as for a large scan
    for i in range(5000):
        spool.append(_nucleus(i))
    results = {"nuclei_count": 5000, "tissue_area_mm2": 1.25, "positive_count": None,
               "report": {"summary": {"Nuclei": "5,000"}, "rois": None}}
    s1 = StreamedScanResult.from_spool("s1", results, spool)
    artifacts.put(scan_result_key("t-stream", "s1"), result_json_bytes(s1), "application/json")
    s2 = {"geojson": {"type": "FeatureCollection", "features": [_nucleus(1)]}, "scanId": "s2",
          "results": {"nuclei_count": 1, "tissue_area_mm2": 0.5}}
    artifacts.put(scan_result_key("t-stream", "s2"), json.dumps(s2).encode(), "application/json")


def _parsed_body(task: Task, artifacts: MemoryArtifactStore) -> dict[str, Any]:
    """The body as it was built before streaming: every stored result parsed whole, then dumped."""
    scans: list[ScanResult] = []
    for sid, scan in task.scans.items():
        raw = artifacts.get(scan_result_key(task.task_id, sid))
        if raw is not None and scan.status == ScanStatus.SUCCEEDED:
            scans.append(ScanResult.model_validate(json.loads(raw)))
        else:
            scans.append(failure_result(sid, scan.error_code or "", scan.error_message or ""))
    return ResultsPayload(caseResults=case_results(task, scans), scanResults=scans).to_body()


def test_the_platform_gets_the_stored_results_as_text_with_a_content_length() -> None:
    # GIVEN a task whose scans' results were stored (one streamed, one laid out otherwise, one failed)
    tasks, artifacts, secrets = MemoryTaskStore(), MemoryArtifactStore(), FernetSecretBox()
    task = _task(secrets)
    tasks.create(task)
    _stored(artifacts)
    expected = _parsed_body(task, artifacts)
    with FakePlatform() as platform:
        delivery = DeliveryService(tasks, artifacts, secrets, HttpPlatformClient(platform.base_url, 5.0),
                                   attempts=1)
        # WHEN its results are delivered
        done = delivery.on_job_finished("t-stream", True)
    # THEN the platform received the same document the parsed results give (caseResults included), sent
    # with its Content-Length, not chunked; the kept copy is the posted text
    (post,) = platform.posts
    assert done.status == TaskStatus.COMPLETED
    assert post.body == expected and len(post.body["scanResults"][0]["geojson"]["features"]) == 5000
    assert post.body["caseResults"]["nuclei_count"] == 5001 and post.content_type == "application/json"
    kept = artifacts.get(posted_key("t-stream"))
    assert kept is not None and post.content_length == str(len(kept)) and post.transfer_encoding is None
    assert json.loads(kept) == expected
    # AND the stored streamed result's text is posted as it is (its features were never parsed)
    s1 = artifacts.get(scan_result_key("t-stream", "s1"))
    assert s1 is not None and s1 in kept


def test_a_stored_result_head_is_read_up_to_its_features() -> None:
    # GIVEN a result as the worker stores it, and one laid out otherwise
    spool = FeatureSpool()
    spool.append(_nucleus(0))
    raw = result_json_bytes(StreamedScanResult.from_spool("s1", {"nuclei_count": 1}, spool))
    other = json.dumps({"geojson": {"type": "FeatureCollection", "features": []}, "scanId": "s2",
                        "results": {}}).encode()
    # WHEN their heads are read
    head = stored_result_head(raw)
    # THEN the worker's gives its id and results without its features; the other is left to a full parse
    assert head is not None and (head.scanId, head.results, head.geojson) == ("s1", {"nuclei_count": 1}, None)
    assert stored_result_head(other) is None
    assert stored_result_head(b'{"scanId": "s3", "results": {"error": {"code": "X"}}, "qcFailReasons": ["q"]}') \
        == ScanResult(scanId="s3", results={"error": {"code": "X"}}, qcFailReasons=["q"])


def test_the_fake_platform_reads_a_chunked_body_too() -> None:
    # GIVEN the fake platform and a body sent as an iterator of unknown length (httpx: chunked)
    body = {"caseResults": {"n": 1}, "scanResults": [{"scanId": "s1", "results": {"x": "y" * 70_000}}]}
    text = json.dumps(body).encode()
    parts = [text[i:i + 4096] for i in range(0, len(text), 4096)]
    with FakePlatform() as platform, httpx.Client() as client:
        # WHEN it is posted
        resp = client.post(results_url(platform.base_url, "t1"), content=iter(parts),
                           headers={"Content-Type": "application/json"})
    # THEN it arrived whole, chunked
    (post,) = platform.posts
    assert resp.status_code == 200 and post.transfer_encoding == "chunked" and post.body == body
