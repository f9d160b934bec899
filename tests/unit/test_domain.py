"""The pure domain: webhook parsing, the state machine, the results body and its GeoJSON rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from scanbridge.domain.errors import InvalidTransitionError
from scanbridge.domain.results import ResultsPayload, failure_result, geojson_problems
from scanbridge.domain.status import TaskStatus, can_transition, check_transition
from scanbridge.domain.webhook import WebhookPayload
from tests.conftest import SAMPLE_WEBHOOK


def test_platform_sample_request_is_accepted_as_is() -> None:
    # GIVEN the platform's own sample request (no jwt_token, model_name "")
    # WHEN it is parsed
    payload = WebhookPayload.model_validate(SAMPLE_WEBHOOK)
    # THEN its scan is found, no model is requested (the default applies) and there is no token
    assert payload.scan_files() == {"8823846": [SAMPLE_WEBHOOK["scans"]["8823846"]]}
    assert payload.requested_model() is None
    assert payload.jwt_token is None


def test_scan_urls_win_over_scans_and_unknown_fields_are_kept() -> None:
    # GIVEN a webhook with both maps for one scan, an extra scan in `scans`, and fields we do not know
    body = {"task_id": "t", "company_id": 42, "scans": {"a": "https://x/a0", "b": "https://x/b"},
            "scan_urls": {"a": ["https://x/a0", "https://x/a1"]}, "priority": "high", "nested": {"k": 1}}
    # WHEN it is parsed
    payload = WebhookPayload.model_validate(body)
    # THEN scan_urls is preferred, the scans-only scan is still there, and extras are kept verbatim
    assert payload.scan_files() == {"a": ["https://x/a0", "https://x/a1"], "b": ["https://x/b"]}
    assert payload.company_id == "42"
    assert payload.extra_fields() == {"priority": "high", "nested": {"k": 1}}


@pytest.mark.parametrize(("model_id", "model_name", "expected"), [
    (None, "", None), ("", "  ", None), ("nuclei", "", "nuclei"), (None, "tissue", "tissue"), ("a", "b", "a")])
def test_model_choice(model_id: str | None, model_name: str | None, expected: str | None) -> None:
    # GIVEN a webhook naming (or not) a model / WHEN asked / THEN model_id wins, empty means default
    payload = WebhookPayload.model_validate({"task_id": "t", "scans": {"s": "https://x"},
                                             "model_id": model_id, "model_name": model_name})
    assert payload.requested_model() == expected


@pytest.mark.parametrize("body", [
    {"task_id": "t"}, {"task_id": "", "scans": {"s": "https://x"}}, {"task_id": "t", "scan_urls": {"s": []}},
    {"scans": {"s": "https://x"}}])
def test_webhooks_without_task_or_scans_are_refused(body: dict[str, object]) -> None:
    # GIVEN a body with no task id or no scan file / WHEN parsed / THEN it is a validation error
    with pytest.raises(ValidationError):
        WebhookPayload.model_validate(body)


def test_token_is_not_in_the_repr() -> None:
    # GIVEN a webhook with a token / WHEN it is printed / THEN the token does not appear
    payload = WebhookPayload.model_validate({"task_id": "t", "scans": {"s": "https://x"}, "jwt_token": "SECRET.JWT"})
    assert "SECRET.JWT" not in repr(payload)


def test_state_machine() -> None:
    # GIVEN the lifecycle / THEN work moves forward, terminal states are final (but redelivery after a failed delivery)
    assert can_transition(TaskStatus.RECEIVED, TaskStatus.QUEUED)
    assert can_transition(TaskStatus.RUNNING, TaskStatus.DELIVERING)
    assert can_transition(TaskStatus.DELIVERY_FAILED, TaskStatus.DELIVERING)
    assert not can_transition(TaskStatus.COMPLETED, TaskStatus.RUNNING)
    assert not can_transition(TaskStatus.CANCELLED, TaskStatus.QUEUED)
    with pytest.raises(InvalidTransitionError) as err:
        check_transition(TaskStatus.FAILED, TaskStatus.COMPLETED)
    assert err.value.code == "INVALID_TRANSITION"


def test_failure_result_explains_itself_in_the_summary() -> None:
    # GIVEN a failed scan / WHEN its result is built / THEN the platform's UI will show the reason and code
    result = failure_result("s1", "SCAN_CORRUPT", "cannot decode")
    body = ResultsPayload(scanResults=[result]).to_body()
    summary = body["scanResults"][0]["results"]["report"]["summary"]
    assert summary["Reason"] == "cannot decode" and summary["Error code"] == "SCAN_CORRUPT"
    assert "qcFailReasons" not in body["scanResults"][0]
    assert body["scanResults"][0]["geojson"] == {"type": "FeatureCollection", "features": []}


def test_geojson_problems_finds_each_broken_rule() -> None:
    # GIVEN features that break one rule each
    poly = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]}
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": poly, "properties": {"annotation_type": "tissue"}},
        {"type": "Feature", "geometry": poly, "properties": {}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 1]]]},
         "properties": {"annotation_type": "x"}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[5, 5], [500, 5]]},
         "properties": {"annotation_type": "mitosis"}},
        {"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": [poly]},
         "properties": {"annotation_type": "heatmap"}},
    ]}
    # WHEN checked against a 100x100 slide
    problems = geojson_problems(fc, 100, 100)
    # THEN exactly the four broken features are named
    assert [p.split(":")[0] for p in problems] == ["feature 1", "feature 2", "feature 3", "feature 4"]


def test_geojson_problems_check_every_ring_of_a_multipolygon() -> None:
    # GIVEN a MultiPolygon whose second polygon's ring is not closed
    closed = [[[0, 0], [10, 0], [10, 10], [0, 0]]]
    open_ring = [[[20, 20], [30, 20], [30, 30], [20, 21]]]
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"annotation_type": "tissue"},
         "geometry": {"type": "MultiPolygon", "coordinates": [closed, open_ring]}}]}
    # WHEN checked / THEN the open ring is named (only Polygon rings were checked before)
    assert geojson_problems(fc, 100, 100) == ["feature 0: a ring is not closed"]
