"""What every HTTP entry point shares, free of any web framework: the error table and body, the webhook
signature check and the webhook body parser. The FastAPI app and the lean webhook Lambda both use it.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic

from scanbridge.config import Settings
from scanbridge.domain import errors as e
from scanbridge.domain.webhook import WebhookPayload

#: the one table from error type to HTTP status (first match wins; anything else is a 500)
STATUS: list[tuple[type[e.ScanbridgeError], int]] = [
    (e.ValidationError, 422),
    (e.NotFoundError, 404),
    (e.ConflictError, 409),
    (e.AuthError, 401),
    (e.ForbiddenError, 403),
]


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """`{"error": {"code", "message", "details"}}`, everywhere."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


def status_for(exc: e.ScanbridgeError) -> int:
    """The HTTP status of a scanbridge error."""
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def verify_webhook(settings: Settings, body: bytes, headers: dict[str, str]) -> None:
    """Check the Standard Webhooks signature when SCANBRIDGE_WEBHOOK_SECRET is set (5-minute tolerance)."""
    if not settings.webhook_secret:
        return
    from standardwebhooks.webhooks import Webhook

    try:
        Webhook(settings.webhook_secret).verify(body, headers, json_parse=False)
    except Exception as exc:  # the library raises its own error, ValueError or binascii errors on junk
        raise e.WebhookSignatureError("the webhook signature is missing, invalid or too old") from exc


def check_body_size(size: int, limit: int) -> None:
    """Refuse (422) a body over the cap."""
    if size > limit:
        raise e.ValidationError(f"the body is {size} bytes; the limit is {limit}")


def parse_webhook(raw: bytes) -> WebhookPayload:
    """The webhook body as a WebhookPayload; a uniform ValidationError (422) for anything else."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise e.ValidationError(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise e.ValidationError("the body must be a JSON object")
    try:
        return WebhookPayload.model_validate(data)
    except pydantic.ValidationError as exc:
        details = {"errors": [{"loc": list(err["loc"]), "msg": err["msg"]} for err in exc.errors()]}
        raise e.ValidationError("the webhook does not follow the platform contract", details=details) from exc
