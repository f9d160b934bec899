"""The OpenAPI document's own parts: the webhook body's schema and every operation's error answers."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from scanbridge.domain.webhook import WebhookPayload
from scanbridge.entrypoints.http.deps import live_principal
from scanbridge.entrypoints.http.security import admin, principal


def _inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline_refs(v, defs) for v in schema]
    return schema


def _keys_by_name(schema: Any) -> Any:
    """pydantic writes a dict's key pattern as `patternProperties` (other keys then go unchecked): state it
    as `propertyNames` + `additionalProperties`, which is what the server enforces."""
    if isinstance(schema, list):
        return [_keys_by_name(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _keys_by_name(v) for k, v in schema.items()}
    patterns = out.get("patternProperties")
    if isinstance(patterns, dict) and len(patterns) == 1:
        (pattern, values), = patterns.items()
        del out["patternProperties"]
        out["propertyNames"] = {**out.get("propertyNames", {}), "pattern": pattern}
        out["additionalProperties"] = values
    return out


def _numbers_as_strings(schema: Any, key: str = "") -> Any:
    """The webhook reads numbers as strings (`coerce_numbers_to_str`): string values admit numbers too."""
    if isinstance(schema, list):
        return [_numbers_as_strings(v) for v in schema]
    if not isinstance(schema, dict) or key == "propertyNames":
        return schema
    out = {k: _numbers_as_strings(v, k) for k, v in schema.items()}
    if out.get("type") == "string":
        out["type"] = ["string", "number"]
    return out


def webhook_schema(max_scans: int = 50) -> dict[str, Any]:
    """The webhook body's JSON schema, self-contained, for the OpenAPI document: it admits what the
    server accepts (ids by ID_PATTERN, at least one scan, at most `max_scans` per map)."""
    raw = WebhookPayload.model_json_schema()
    inlined: dict[str, Any] = _numbers_as_strings(_keys_by_name(_inline_refs(raw, raw.get("$defs", {}))))
    for name in ("scans", "scan_urls"):
        inlined["properties"][name]["maxProperties"] = max_scans
    for name in ("scans", "scan_urls", "stains"):  # null reads as empty
        inlined["properties"][name]["type"] = ["object", "null"]
    return inlined


#: the uniform error body, `{"error": {"code", "message", "details"}}`
ERROR_SCHEMA: dict[str, Any] = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "string", "description": "stable error code (docs/error-codes.md)"},
        "message": {"type": "string"}, "details": {"type": "object"}}}}}
_ERROR_TEXT = {400: "A malformed (multipart) body", 401: "No or wrong credentials (API key, admin token, webhook signature)",
               403: "Valid credentials, not for this (or admin routes closed)",
               404: "No such task, scan, model or file (or another tenant's)",
               409: "The task's state or another task conflicts (TASK_ID_CONFLICT, TASK_PAYLOAD_MISMATCH, ...)",
               413: "The body or the task is too large", 421: "Host not a loopback name (open local mode)",
               422: "The request breaks the contract (VALIDATION_ERROR and more specific codes)"}
#: operations that answer 409 besides the admin model writes
_CONFLICTS = {("POST", "/webhook"), ("POST", "/tasks/{task_id}/cancel"), ("POST", "/tasks/{task_id}/redeliver")}


def _auth_kinds(dependant: Any) -> set[str]:
    """Which of the credential dependencies (`principal`, `admin`, the live one) a route uses."""
    kinds: set[str] = set()
    for dep in dependant.dependencies:
        if dep.call is admin:
            kinds.add("admin")
        elif dep.call in (principal, live_principal):
            kinds.add("tenant")
        kinds |= _auth_kinds(dep)
    return kinds


def error_statuses(method: str, path: str, dependant: Any) -> set[int]:
    """The error statuses an operation can answer, from what it depends on (one rule for every route)."""
    statuses = {421, 422}
    kinds = _auth_kinds(dependant)
    if kinds:
        statuses.add(401)
    if "admin" in kinds:
        statuses |= {403, 409}
    if "{" in path:
        statuses.add(404)
    if method in ("POST", "PUT", "PATCH"):
        statuses |= {400, 413}  # 400: a malformed multipart body (Starlette's form parser)
    if (method, path) in _CONFLICTS:
        statuses.add(409)
    if path == "/webhook":
        statuses.add(401)
    return statuses


def document_errors(app: FastAPI, spec: dict[str, Any]) -> dict[str, Any]:
    """Declare every operation's error answers, each with the error envelope (FastAPI declares none but 422,
    and that one with its own body, which the handlers in errors.py replace)."""
    from fastapi import routing

    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    # the routes as get_openapi sees them (included routers' routes with their prefixes)
    for route in routing.iter_route_contexts(app.routes):
        if not isinstance(route.original_route, routing.APIRoute):
            continue
        path = route.path_format or ""
        for method in route.methods or ():
            op = spec["paths"].get(path, {}).get(method.lower())
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            for status in sorted(error_statuses(method, path, route.dependant)):
                responses[str(status)] = {"description": _ERROR_TEXT[status],
                                          "content": {"application/json": {"schema": ref}}}
    for name in ("HTTPValidationError", "ValidationError"):
        spec["components"]["schemas"].pop(name, None)
    return spec
