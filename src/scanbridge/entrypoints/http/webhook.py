"""`POST /webhook`: the platform's task, acknowledged with 202 (redeliveries answer the same task)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from scanbridge.domain.errors import ValidationError
from scanbridge.entrypoints.http.deps import Intake, SettingsDep
from scanbridge.entrypoints.http.openapi import webhook_schema
from scanbridge.entrypoints.http.security import verify_webhook
from scanbridge.entrypoints.webhook_common import check_body_size, parse_webhook


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused (422) as soon as it is known to exceed `limit`: never read whole into memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_body_size(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValidationError(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def webhook_router(max_scans: int) -> APIRouter:
    """The webhook route; its OpenAPI body schema states `max_scans` (SCANBRIDGE_MAX_SCANS_PER_TASK)."""
    router = APIRouter()

    @router.post("/webhook", status_code=202, tags=["platform"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": webhook_schema(max_scans)}}}})
    async def webhook(request: Request, settings: SettingsDep, intake: Intake) -> JSONResponse:
        """Accept a platform task: 202 with {task_id, status}; redeliveries return the same task."""
        raw = await _read_capped(request, settings.max_body_bytes)
        verify_webhook(settings, raw, dict(request.headers))
        payload = parse_webhook(raw)
        # boto3 calls block: run them in the thread pool so one slow write never stalls other requests
        accepted = await run_in_threadpool(intake.accept, payload)
        return JSONResponse({"task_id": accepted.task.task_id, "status": str(accepted.task.status),
                             "created": accepted.created}, status_code=202)

    return router
