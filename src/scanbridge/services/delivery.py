"""Delivery (the results step): assemble the results body from what the worker stored and post it.

Called when a job ends (on AWS by the Batch state-change Lambda; locally by the launcher). The
claim RUNNING -> DELIVERING is a conditional write, so a task's results are posted once even when
the event arrives twice.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from scanbridge.domain.errors import DeliveryError, NoPlatformCredentialsError, WorkerFailedError
from scanbridge.domain.results import ResultsPayload, ScanResult, failure_result
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.task import Task, utcnow
from scanbridge.ports import ArtifactStore, DeadLetterQueue, PlatformClient, SecretBox, TaskStore
from scanbridge.services.common import update_task
from scanbridge.services.processing import scan_result_key

log = logging.getLogger(__name__)

NO_RETRY = frozenset({400, 401, 403, 404, 405, 409, 410, 413, 422})


def posted_key(task_id: str) -> str:
    """Where the exact body posted to the platform is kept."""
    return f"tasks/{task_id}/posted.json"


def case_results(task: Task, scans: list[ScanResult]) -> dict[str, Any]:
    """caseResults: counts across the task's scans and the model used."""
    ok = [s for s in scans if not (s.results or {}).get("error")]
    failed = len(scans) - len(ok)
    summary = {"Scans analysed": str(len(ok)), "Scans failed": str(failed), "Model": task.model or ""}
    areas = [float(s.results["tissue_area_mm2"]) for s in ok
             if s.results and s.results.get("tissue_area_mm2") is not None]
    out: dict[str, Any] = {"model": task.model, "scans_analysed": len(ok), "scans_failed": failed}
    if areas:
        summary["Total tissue area"] = f"{sum(areas):.3f} mm²"
        out["tissue_area_mm2"] = round(sum(areas), 6)

    def total(key: str) -> int | None:
        values = [int(s.results[key]) for s in ok if s.results and s.results.get(key) is not None]
        return sum(values) if values else None

    nuclei, positive, negative = total("nuclei_count"), total("positive_count"), total("negative_count")
    if nuclei is not None:
        out["nuclei_count"] = nuclei
        summary["Nuclei"] = f"{nuclei:,}"
        if areas and sum(areas) > 0:
            out["nuclei_density_per_mm2"] = round(nuclei / sum(areas), 2)
    if positive is not None and negative is not None:
        pct = 100.0 * positive / (positive + negative) if positive + negative else None
        out.update(positive_count=positive, negative_count=negative,
                   positivity_percent=round(pct, 3) if pct is not None else None)
        summary["Nuclear positivity (DAB)"] = f"{pct:.1f} %" if pct is not None else "n/a (no nuclei)"
    out["report"] = {"summary": summary}
    return out


class DeliveryService:
    """Posts a finished task's results with its JWT (or the platform API key) and records the outcome.

    >>> delivery.on_job_finished("task-1", succeeded=True)  # Task COMPLETED after a 2xx
    """

    def __init__(self, tasks: TaskStore, artifacts: ArtifactStore, secrets: SecretBox, platform: PlatformClient,
                 *, api_key: str = "", attempts: int = 5, backoff_s: float = 1.0,
                 dead_letters: DeadLetterQueue | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._tasks = tasks
        self._artifacts = artifacts
        self._secrets = secrets
        self._platform = platform
        self._api_key = api_key
        self._attempts = max(1, attempts)
        self._backoff = backoff_s
        self._sleep = sleep
        self._dead_letters = dead_letters

    def on_job_finished(self, task_id: str, succeeded: bool, reason: str | None = None) -> Task:
        """The job ended: fail scans left without a result, claim the delivery, post."""
        claimed: list[bool] = []

        def claim(task: Task) -> Task | None:
            claimed.clear()
            if task.status.is_terminal or task.status == TaskStatus.DELIVERING:
                return None
            scans = dict(task.scans)
            for sid, scan in scans.items():
                if scan.status not in (ScanStatus.SUCCEEDED, ScanStatus.FAILED):
                    err = WorkerFailedError(reason or "the worker ended before finishing this scan")
                    scans[sid] = scan.model_copy(update={"status": ScanStatus.FAILED, "error_code": err.code,
                                                         "error_message": err.message, "finished_at": utcnow()})
            claimed.append(True)
            changes: dict[str, Any] = {"scans": scans}
            if not succeeded and not task.error_code and all(s.error_code == WorkerFailedError.code
                                                             for s in scans.values()):
                changes.update(error_code=WorkerFailedError.code, error_message=reason or "the worker failed")
            return task.moved_to(TaskStatus.DELIVERING, **changes)

        task = update_task(self._tasks, task_id, claim)
        if not claimed:
            log.info("task already delivered or being delivered", extra={"task_id": task_id})
            return task
        return self.deliver(task)

    def build_body(self, task: Task) -> ResultsPayload:
        """The results body: each scan's stored result, or a result that explains its failure."""
        scans: list[ScanResult] = []
        for sid, scan in task.scans.items():
            raw = self._artifacts.get(scan_result_key(task.task_id, sid))
            stored = ScanResult.model_validate(json.loads(raw)) if raw is not None else None
            stored_code = ((stored.results or {}).get("error") or {}).get("code") if stored else None
            if stored is not None and (scan.status == ScanStatus.SUCCEEDED or
                                       scan.status == ScanStatus.FAILED and stored_code == scan.error_code):
                scans.append(stored)  # a failure stored by the worker keeps its qcFailReasons and QC report
            else:
                scans.append(failure_result(sid, scan.error_code or WorkerFailedError.code,
                                            scan.error_message or "the scan was not analysed"))
        return ResultsPayload(caseResults=case_results(task, scans), scanResults=scans)

    def _bearer(self, task: Task) -> str:
        if task.token_ciphertext:
            return self._secrets.decrypt(task.token_ciphertext, {"task_id": task.task_id})
        if self._api_key:
            return self._api_key
        raise NoPlatformCredentialsError("the webhook had no jwt_token and SCANBRIDGE_PLATFORM_API_KEY is not set")

    def deliver(self, task: Task) -> Task:
        """POST the body with retries (5xx, timeouts, connection errors) and record what happened."""
        body = self.build_body(task).to_body()
        try:
            bearer = self._bearer(task)
        except NoPlatformCredentialsError as exc:
            return self._finish(task.task_id, TaskStatus.FAILED, error=(exc.code, exc.message),
                                delivery={"last_error": exc.message})
        started = time.monotonic()
        last_error = ""
        status_code: int | None = None
        excerpt: str | None = None
        attempt = 0
        for attempt in range(1, self._attempts + 1):
            try:
                resp = self._platform.post_results(task.task_id, body, bearer)
                status_code, excerpt = resp.status_code, resp.body[:500]
                if 200 <= resp.status_code < 300:
                    self._artifacts.put(posted_key(task.task_id), json.dumps(body).encode(), "application/json")
                    log.info("results delivered", extra={"task_id": task.task_id, "status_code": status_code,
                                                         "attempts": attempt})
                    final = TaskStatus.FAILED if self._all_failed(task) else TaskStatus.COMPLETED
                    return self._finish(task.task_id, final, delivery={
                        "status_code": status_code, "attempts": attempt, "delivered_at": utcnow(),
                        "response_excerpt": excerpt, "duration_s": round(time.monotonic() - started, 3)})
                last_error = f"platform answered {resp.status_code}"
                if resp.status_code in NO_RETRY or 400 <= resp.status_code < 500 and resp.status_code != 429:
                    break
            except DeliveryError as exc:
                last_error, status_code = exc.message, exc.status_code
                if not exc.retryable:
                    break
            if attempt < self._attempts:
                delay = self._backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
                log.warning("delivery attempt %d failed (%s); retrying in %.2fs", attempt, last_error, delay,
                            extra={"task_id": task.task_id})
                self._sleep(delay)
        log.error("results could not be delivered: %s", last_error, extra={"task_id": task.task_id})
        if self._dead_letters is not None and task.status != TaskStatus.CANCELLED:
            self._dead_letters.send({"task_id": task.task_id, "company_id": task.company_id,
                                     "reason": "DELIVERY_FAILED", "status_code": status_code,
                                     "last_error": last_error, "attempts": attempt, "at": utcnow()})
        return self._finish(task.task_id, TaskStatus.DELIVERY_FAILED, error=(DeliveryError.code, last_error),
                            delivery={"status_code": status_code, "attempts": attempt, "last_error": last_error,
                                      "response_excerpt": excerpt,
                                      "duration_s": round(time.monotonic() - started, 3)})

    def redeliver(self, task_id: str) -> Task:
        """Post again a task whose delivery failed (DELIVERY_FAILED -> DELIVERING; one caller wins)."""
        from scanbridge.domain.errors import ConflictError

        claimed: list[bool] = []

        def claim(task: Task) -> Task | None:
            claimed.clear()
            if task.status != TaskStatus.DELIVERY_FAILED:
                return None
            claimed.append(True)
            return task.moved_to(TaskStatus.DELIVERING)

        task = update_task(self._tasks, task_id, claim)
        if not claimed:
            raise ConflictError(f"task {task_id!r} is {task.status}; only DELIVERY_FAILED tasks are redelivered",
                                details={"status": str(task.status)})
        return self.deliver(task)

    @staticmethod
    def _all_failed(task: Task) -> bool:
        return bool(task.error_code) or all(s.status == ScanStatus.FAILED for s in task.scans.values())

    def _finish(self, task_id: str, status: TaskStatus, *, delivery: dict[str, Any],
                error: tuple[str, str] | None = None) -> Task:
        def change(t: Task) -> Task:
            updates: dict[str, Any] = {"delivery": t.delivery.model_copy(update=delivery)}
            if t.status == TaskStatus.CANCELLED:
                return t.model_copy(update={**updates, "updated_at": utcnow()})
            if error and not t.error_code:
                updates.update(error_code=error[0], error_message=error[1])
            if status == TaskStatus.FAILED and not t.error_code and not error:
                first = next((s for s in t.scans.values() if s.error_code), None)
                if first:
                    updates.update(error_code=first.error_code, error_message=first.error_message)
            return t.moved_to(status, **updates)

        return update_task(self._tasks, task_id, change)
