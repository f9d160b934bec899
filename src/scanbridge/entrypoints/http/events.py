"""A task's live events: Server-Sent Events and a WebSocket, one event per change, ending after the terminal status.

The events come from polling the TaskStore (every 0.3 s, for at most `timeout` seconds) and diffing
snapshots (`domain.progress.changes`), so they work the same over memory, moto or DynamoDB. Browsers'
EventSource and WebSocket cannot set headers: these routes also take the API key as `?api_key=`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from scanbridge.domain.errors import ScanbridgeError, TaskNotFoundError
from scanbridge.domain.progress import changes
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task
from scanbridge.entrypoints.http.deps import LiveTenant, Queries, live_principal
from scanbridge.entrypoints.http.errors import error_body, status_for
from scanbridge.services.queries import QueryService

POLL_S = 0.3
DEFAULT_TIMEOUT_S = 900.0
MAX_TIMEOUT_S = 3600.0
KEEPALIVE_S = 15.0

router = APIRouter(tags=["live"])


def _poll_s(conn: HTTPConnection) -> float:
    """How often the store is polled (`app.state.live_poll_s`: POLL_S, lower in tests)."""
    return float(conn.app.state.live_poll_s)


#: a QUEUED task's ETA must move by this much (s) for a new `queue` event when its position did not change
QUEUE_ETA_STEP_S = 5.0


def _queue_moved(last: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether a QUEUED task's place changed enough to tell the client (position, or the ETA by 5 s)."""
    if last is None or last["position"] != now["position"] or (last["eta_s"] is None) != (now["eta_s"] is None):
        return True
    return now["eta_s"] is not None and abs(float(now["eta_s"]) - float(last["eta_s"])) >= QUEUE_ETA_STEP_S


async def task_events(queries: QueryService, task_id: str, scope: str | None, *, poll_s: float,
                      timeout_s: float) -> AsyncIterator[dict[str, Any] | None]:
    """Every change of the task, in order, ending after its terminal status (or a `timeout` event).

    Yields None on a poll that found no change (a tick: time to send a keep-alive or notice a gone client).
    While the task is QUEUED its status event carries `queue` (position, ahead, eta_s, basis), and a `queue`
    event follows whenever that place moves (position, or the ETA by QUEUE_ETA_STEP_S).
    """
    previous: Task | None = None
    last_queue: dict[str, Any] | None = None
    seq = 0
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            current = await run_in_threadpool(queries.task, task_id, scope)
        except TaskNotFoundError:
            yield {"seq": seq + 1, "type": "gone", "task_id": task_id}
            return
        events = changes(previous, current)
        queue = await run_in_threadpool(queries.queue_info, current)
        if queue is not None:
            queued = [e for e in events if e["type"] == "status" and e["status"] == str(TaskStatus.QUEUED)]
            if queued:  # the QUEUED status event carries where the task waits
                queued[0]["queue"] = last_queue = queue
            elif _queue_moved(last_queue, queue):  # then a `queue` event each time that moves
                events.append({"type": "queue", "task_id": task_id, "status": str(current.status),
                               "queue": queue, "updated_at": current.updated_at})
                last_queue = queue
        for event in events:
            seq += 1
            yield {"seq": seq, **event}
        if not events:
            yield None
        previous = current
        if current.status.is_terminal:
            return
        if time.monotonic() >= deadline:
            yield {"seq": seq + 1, "type": "timeout", "task_id": task_id, "status": str(current.status),
                   "after_s": timeout_s}
            return
        await asyncio.sleep(poll_s)


def _sse(event: dict[str, Any]) -> str:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


@router.get("/tasks/{task_id}/events", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "status, scan, then the terminal status"}})
async def task_events_sse(task_id: str, request: Request, caller: LiveTenant, queries: Queries,
                          timeout: Annotated[float, Query(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S
                          ) -> StreamingResponse:
    """Server-Sent Events: one event per change (status, scan step/percent), ending with the terminal status."""
    await run_in_threadpool(queries.task, task_id, caller.scope)  # 404 before the stream starts
    poll_s = _poll_s(request)

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {int(max(poll_s, 1.0) * 1000)}\n\n"
        last = time.monotonic()
        async for event in task_events(queries, task_id, caller.scope, poll_s=poll_s, timeout_s=timeout):
            if event is not None:
                yield _sse(event)
                last = time.monotonic()
            elif await request.is_disconnected():
                return
            elif time.monotonic() - last >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last = time.monotonic()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.websocket("/ws/tasks/{task_id}")
async def task_events_ws(websocket: WebSocket, task_id: str, queries: Queries,
                         timeout: Annotated[float, Query(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S) -> None:
    """The same events as JSON messages; the socket closes after the terminal status (code 1000)."""
    await websocket.accept()
    try:
        caller = live_principal(websocket)
        await run_in_threadpool(queries.task, task_id, caller.scope)
    except ScanbridgeError as exc:  # browsers never see a refused handshake's status: say it in a message
        await websocket.send_json({"type": "error", **error_body(exc.code, exc.message, exc.details)})
        await websocket.close(code=4000 + status_for(exc))
        return
    try:
        async for event in task_events(queries, task_id, caller.scope, poll_s=_poll_s(websocket),
                                       timeout_s=timeout):
            if event is not None:
                await websocket.send_json(event)
    except (WebSocketDisconnect, RuntimeError):
        return  # the client went away
    await websocket.close(code=1000)
