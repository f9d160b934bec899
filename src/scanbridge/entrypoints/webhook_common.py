"""What every HTTP entry point shares, free of any web framework: the error table and body, the webhook
signature check and the webhook body parser. The FastAPI app and the lean webhook Lambda both use it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic

from scanbridge.config import Settings
from scanbridge.domain import errors as e
from scanbridge.domain.webhook import WebhookPayload

#: the one table from error type to HTTP status (first match wins; anything else is a 500)
STATUS: list[tuple[type[e.ScanbridgeError], int]] = [
    (e.PayloadTooLargeError, 413),
    (e.ValidationError, 422),
    (e.NotFoundError, 404),
    (e.ConflictError, 409),
    (e.AuthError, 401),
    (e.ForbiddenError, 403),
    (e.HostNotAllowedError, 421),
    (e.RouteNotAvailableError, 501),
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


#: the deepest JSON a webhook may nest (the platform's own bodies nest 3 deep; DynamoDB stops at 32)
MAX_WEBHOOK_DEPTH = 16
#: the deepest JSON any other route takes (GeoJSON MultiPolygons nest 6 deep)
MAX_JSON_DEPTH = 64
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def json_too_deep(raw: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than `limit`, found without parsing it.

    Linear and at C speed (no recursion, so 100k levels cannot blow the stack): escapes, then strings, are
    cut out, only the brackets are kept, and each pass drops the innermost pairs; what is left after
    `limit` passes is deeper. Unbalanced text is left for the parser to refuse.
    """
    text = _STRING.sub(b"", _ESCAPE.sub(b"", raw)).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = text.replace(b"()", b"")
        if len(shorter) == len(text):
            return False  # empty, or unbalanced: not deep, and not JSON either
        text = shorter
    return b"()" in text


def check_json_depth(raw: bytes, limit: int) -> None:
    """Refuse (422) JSON nested deeper than `limit`."""
    if json_too_deep(raw, limit):
        raise e.ValidationError(f"the JSON body nests deeper than {limit} levels")


def check_body_size(size: int, limit: int) -> None:
    """Refuse (422, as documented) a body over the cap."""
    if size > limit:
        raise e.ValidationError(f"the body is {size} bytes; the limit is {limit}")


def parse_webhook(raw: bytes) -> WebhookPayload:
    """The webhook body as a WebhookPayload; a uniform ValidationError (422) for anything else.

    Bounded before parsing: depth (MAX_WEBHOOK_DEPTH); each field's size is capped by WebhookPayload.
    """
    check_json_depth(raw, MAX_WEBHOOK_DEPTH)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise e.ValidationError(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise e.ValidationError("the body must be a JSON object")
    try:
        return WebhookPayload.model_validate(data)
    except pydantic.ValidationError as exc:
        details = {"errors": [{"loc": list(err["loc"]), "msg": err["msg"]} for err in exc.errors()]}
        raise e.ValidationError("the webhook does not follow the platform contract", details=details) from exc
