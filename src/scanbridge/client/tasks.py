"""Tasks as a client sees them: the webhook body for some scans, following a task live, reading its results."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from scanbridge.client.bridge import BridgeClient, ClientError

#: the statuses a task ends in (domain/status.py TERMINAL; tests/unit/test_client.py keeps them equal)
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "DELIVERY_FAILED"})


def is_url(value: str) -> bool:
    """Whether `value` is an http(s) URL rather than a local path."""
    return value.startswith(("http://", "https://"))


def scan_ids(inputs: list[str]) -> list[str]:
    """One readable, unique scan id per input (file stem or the URL's last path segment)."""
    ids: list[str] = []
    for value in inputs:
        stem = Path(urlsplit(value).path).stem if is_url(value) else Path(value).stem
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:64] or "scan"
        name, n = base, 2
        while name in ids:
            name, n = f"{base}-{n}", n + 1
        ids.append(name)
    return ids


def build_webhook(scans: dict[str, str], *, model: str = "", task_id: str = "", company_id: str = "local",
                  case_id: str | None = None) -> dict[str, Any]:
    """A webhook body in the platform's shape for `scans` (scan id -> URL)."""
    return {"task_id": task_id or f"cli-{uuid.uuid4()}", "company_id": company_id, "case_id": case_id,
            "scans": scans, "model_name": model}


def summarize_results(body: dict[str, Any]) -> dict[str, Any]:
    """The readable part of a results body: caseResults and each scan's status, error and summary."""
    scans = []
    for scan in body.get("scanResults") or []:
        results = scan.get("results") or {}
        report = results.get("report") or {}
        scans.append({"scan_id": scan.get("scanId"), "qc_fail_reasons": scan.get("qcFailReasons") or [],
                      "summary": report.get("summary") or {},
                      "features": len((scan.get("geojson") or {}).get("features") or [])})
    return {"case_results": body.get("caseResults") or {}, "scans": scans}


def describe_delivery(task: dict[str, Any]) -> str:
    """One readable phrase for a task's results delivery (its `delivery` record), as the dashboard words it."""
    d = task.get("delivery") or {}
    if d.get("skipped"):
        return f"skipped: {d['skipped']}"
    if d.get("delivered_at"):
        return f"delivered (HTTP {d.get('status_code')}, {d.get('attempts')} attempt(s))"
    if d.get("last_error"):
        return f"not delivered: {d['last_error']}"
    return "not attempted"


def downloaded(task: dict[str, Any]) -> bool:
    """Every scan of `task` has left PENDING/DOWNLOADING (a local file server is no longer needed)."""
    return task["status"] in TERMINAL or all(
        s["status"] not in ("PENDING", "DOWNLOADING") for s in task["scans"].values())


def follow(client: BridgeClient, task_id: str, *, timeout_s: float, out: Callable[[str], None],
           until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Print the task's events as they come; returns the task once it ended (or `until` said stop)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            for event in client.events(task_id, timeout_s=max(1.0, deadline - time.monotonic())):
                out(describe(event))
                if until is not None and until(client.task(task_id)):
                    return client.task(task_id)
        except (httpx.HTTPError, ClientError) as exc:  # a dropped stream: read the task and go on
            out(f"(event stream interrupted: {exc}; resuming)")
            time.sleep(0.5)
        task = client.task(task_id)
        if task["status"] in TERMINAL:
            return task
    return client.task(task_id)


def describe(event: dict[str, Any]) -> str:
    """One readable line for a live event."""
    if event["type"] == "status":
        p = event["progress"]
        eta = f", ETA {p['eta_s']:.0f} s" if p.get("eta_s") else ""
        return f"[{p['percent']:5.1f}%] task {event['status']}{eta}"
    if event["type"] == "scan":
        tiles = f" {event['tiles_done']}/{event['tiles_total']} tiles" if event.get("tiles_total") else ""
        err = f" {event['error_code']}" if event.get("error_code") else ""
        return (f"[{event['task_progress']['percent']:5.1f}%] scan {event['scan_id']}: {event['status']} "
                f"{event['step']} {event['percent']:.0f}%{tiles}{err}")
    return f"({event['type']})"
