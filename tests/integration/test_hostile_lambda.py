"""The hostile webhook bodies through the lean webhook Lambda (moto DynamoDB, KMS, Batch) (issue #16): coded
4xx in the envelope, nothing stored, no 5xx (the same guards as the FastAPI route, webhook_common.py)."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.test_handlers import _event, _load_function, deployed  # noqa: F401  (fixture)


def test_the_webhook_lambda_refuses_hostile_bodies(deployed: dict[str, Any]) -> None:  # noqa: F811
    webhook = _load_function("webhook")
    event = _event("api_webhook.json")
    sample = json.loads(event["body"])
    assert webhook.handler(event, None)["statusCode"] == 202
    # GIVEN bodies that nest too deep, are too large for one item, carry bad ids, or reuse another tenant's id
    cases = {
        "[" * 100_000 + "]" * 100_000: 422,
        json.dumps({**sample, "task_id": "big", "x": ["y" * 150_000] * 3}): 413,
        json.dumps({**sample, "task_id": "big2", "jwt_token": "j" * 900_000}): 422,
        json.dumps({**sample, "task_id": ".."}): 422,
        json.dumps({**sample, "task_id": "a/b"}): 422,
        json.dumps({**sample, "company_id": "another", "jwt_token": "x.y.z"}): 409,
    }
    from scanbridge.bootstrap import bootstrap

    before = bootstrap().tasks.get(sample["task_id"])
    for body, status in cases.items():
        # WHEN each arrives / THEN the coded status in the envelope
        resp = webhook.handler(dict(event, body=body), None)
        assert resp["statusCode"] == status, (body[:60], resp["body"][:200])
        assert set(json.loads(resp["body"])["error"]) == {"code", "message", "details"}
    # AND nothing new was stored, and the first tenant's task is as it was
    tasks = bootstrap().tasks
    assert tasks.get("big") is None and tasks.get("big2") is None and tasks.get(sample["task_id"]) == before
