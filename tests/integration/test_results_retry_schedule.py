"""The results Lambda's retry schedule: template.yaml's ScheduleV2 event runs the deliveries that are due."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from scanbridge.config import get_settings
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.status import TaskStatus
from tests.conftest import EVENTS, REPO
from tests.integration.test_handlers import (  # noqa: F401 - deployed: the fixture
    _accept_with_token,
    _event,
    _load_function,
    deployed,
)
from tests.integration.test_template import CfnLoader


def test_the_template_schedules_the_retry_event_of_events_dir() -> None:
    # GIVEN template.yaml's results function / WHEN its events are read
    with open(REPO / "template.yaml", encoding="utf-8") as fh:
        template = yaml.load(fh, Loader=CfnLoader)
    events = template["Resources"]["ResultsFunction"]["Properties"]["Events"]
    schedules = [e["Properties"] for e in events.values() if e["Type"] == "ScheduleV2"]
    # THEN one schedule, every minute, whose input is the sample event the handler test replays
    assert len(schedules) == 1 and schedules[0]["ScheduleExpression"] == "rate(1 minute)"
    assert json.loads(schedules[0]["Input"]) == json.loads((EVENTS / "results_retry_due.json").read_text())


def test_a_delivery_that_failed_its_burst_is_retried_by_the_scheduled_event(
        deployed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - the fixture
    # GIVEN a platform that answers 503 twice, then 200, and a results step of two tries per burst
    with FakePlatform(responses=[503, 503]) as platform:
        monkeypatch.setenv("SCANBRIDGE_PLATFORM_URL", platform.base_url)
        monkeypatch.setenv("SCANBRIDGE_DELIVERY_ATTEMPTS", "2")
        get_settings.cache_clear()
        api, results = _load_function("api"), _load_function("results")
        _accept_with_token(api)
        tid = "dGFzazoxODU4MzU="
        # WHEN the job's state change arrives: both tries fail
        out = results.handler(_event("results_failed.json"), None)
        assert out["status"] == "DELIVERING" and len(platform.posts) == 2
        # AND the schedule's event arrives (the next try is due: backoff 0 in this deployment)
        retried = results.handler(_event("results_retry_due.json"), None)
        # THEN the due task was tried once more, and the platform got the results
        posts = platform.wait_for_posts(3, timeout_s=10)
        from scanbridge.bootstrap import bootstrap

        task = bootstrap().tasks.get(tid)
    assert retried == {"retried": [tid]} and len(posts) == 3
    assert task is not None and task.status == TaskStatus.FAILED and task.error_code == "WORKER_FAILED"
    assert task.delivery.status_code == 200 and task.delivery.attempts == 3
