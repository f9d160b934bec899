"""Delivery (the results step): assemble the results body from what the worker stored and post it.

Called when a job ends (on AWS by the Batch state-change Lambda; locally by the launcher). The
claim RUNNING -> DELIVERING is a conditional write, so a task's results are posted once even when
the event arrives twice.

Like Stripe / GitHub / Standard Webhooks senders: every POST of one task's results carries the same
delivery id (`Idempotency-Key`, `webhook-id`); a first burst of `attempts` tries (short backoff) is
followed by a schedule (exponential backoff with jitter, capped at `max_backoff_s`) until
`retry_window_s` after the first try. The schedule lives on the task record (`delivery.next_attempt_at`),
so it survives restarts: `deliver_due()` (the reaper locally, the scheduled results Lambda on AWS) picks
due tasks. Each try first claims the task with a conditional write that moves `next_attempt_at` past
the try's timeout (a lease), so two pollers never post at once and a results step that died mid-try
is retried once its lease ends. Each try waits twice as long for an answer as the one before (up to
`max_timeout_s`), so a platform that answers in 40 s gets the body again with the same id and ends
COMPLETED. Locally the tries run on the service's own threads (`on_job_finished_later`), never in a
worker slot.

Without a platform (`platform_configured=False`: no SCANBRIDGE_PLATFORM_URL) nothing is posted: the body
is stored as the results (readable at GET /tasks/{id}/results) and the task ends COMPLETED (FAILED when
every scan failed) with `delivery.skipped = "no platform configured"`, not DELIVERY_FAILED.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from scanbridge.domain.errors import DeliveryError, NoPlatformCredentialsError, WorkerFailedError
from scanbridge.domain.feature_spool import stored_result_head
from scanbridge.domain.results import JsonBody, ResultsPayload, ScanResult, failure_result
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.storage_keys import posted_key, scan_result_key
from scanbridge.domain.task import Task, utcnow
from scanbridge.ports import ArtifactStore, DeadLetterQueue, PlatformClient, SecretBox, TaskStore
from scanbridge.services.common import update_task

log = logging.getLogger(__name__)

NO_RETRY = frozenset({400, 401, 403, 404, 405, 409, 410, 413, 422})
NO_PLATFORM = "no platform configured"  # delivery.skipped when SCANBRIDGE_PLATFORM_URL is not set
LEASE_GRACE_S = 30.0  # a claimed try's lease: its timeout plus this
UNLEASED_STALE_S = 300.0  # a DELIVERING task without a lease (claimed by an older release) is due after this


def delivery_id_for(task_id: str) -> str:
    """The stable delivery id of a task's results (the same for every retry, every process, every restart)."""
    return f"msg_{uuid.uuid5(uuid.NAMESPACE_URL, f'scanbridge:results:{task_id}').hex}"


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


class _DaemonPool:
    """A few daemon threads running queued calls. Not a ThreadPoolExecutor: its threads are joined at
    exit, and a try in flight may wait minutes for an answer; a stop mid-try is covered by its lease."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        self.closed = False
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue `fn`; RuntimeError once closed."""
        if self.closed:
            raise RuntimeError("the delivery pool is closed")
        self._queue.put(fn)

    def _work(self) -> None:
        while (fn := self._queue.get()) is not None:
            try:
                fn()
            except Exception:
                log.exception("background delivery failed")

    def close(self) -> None:
        """Let the threads end once the calls already queued have run."""
        self.closed = True
        for _ in self._threads:
            self._queue.put(None)


class DeliveryService:
    """Posts a finished task's results with its JWT (or the platform API key) and records the outcome.

    >>> delivery.on_job_finished("task-1", succeeded=True)  # Task COMPLETED after a 2xx
    >>> delivery.deliver_due()  # retries whose time has come (the reaper / a scheduled Lambda calls it)
    """

    def __init__(self, tasks: TaskStore, artifacts: ArtifactStore, secrets: SecretBox, platform: PlatformClient,
                 *, api_key: str = "", attempts: int = 5, backoff_s: float = 1.0,
                 dead_letters: DeadLetterQueue | None = None,
                 sleep: Callable[[float], None] = time.sleep, timeout_s: float = 30.0, max_timeout_s: float = 300.0,
                 retry_window_s: float = 0.0, max_backoff_s: float = 300.0, clock: Callable[[], float] = time.time,
                 background_workers: int = 16, platform_configured: bool = True) -> None:
        self._tasks = tasks
        self._platform_configured = platform_configured
        self._artifacts = artifacts
        self._secrets = secrets
        self._platform = platform
        self._api_key = api_key
        self._attempts = max(1, attempts)
        self._backoff = backoff_s
        self._sleep = sleep
        self._dead_letters = dead_letters
        self._timeout = timeout_s
        self._max_timeout = max(timeout_s, max_timeout_s)
        self._window = max(0.0, retry_window_s)
        self._max_backoff = max_backoff_s
        self._clock = clock
        self._workers = max(1, background_workers)
        self._pool: _DaemonPool | None = None
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    # --- entry points ------------------------------------------------------------------------

    def on_job_finished(self, task_id: str, succeeded: bool, reason: str | None = None) -> Task:
        """The job ended: fail scans left without a result, claim the delivery, post (a burst of tries)."""
        task, claimed = self._claim_job_end(task_id, succeeded, reason)
        if not claimed:
            log.info("task already delivered or being delivered", extra={"task_id": task_id})
            return task
        return self._burst(task_id)

    def on_job_finished_later(self, task_id: str, succeeded: bool, reason: str | None = None) -> Task:
        """`on_job_finished` whose tries run on the service's own threads (the caller, a worker slot, is freed)."""
        task, claimed = self._claim_job_end(task_id, succeeded, reason)
        if claimed:
            self._in_background(task_id, burst=True)
        return task

    def deliver_due(self, *, wait: bool = False, limit: int = 500, after_restart: bool = False) -> list[str]:
        """Start one try for every DELIVERING task whose next try is due (or whose claim's lease ran out).

        Returns their ids. `wait=True` (a Lambda) waits for the tries; otherwise they run in the background.
        `after_restart=True` (the local stack starting, when no other process can hold a lease) tries every
        DELIVERING task now: the leases are the dead process's.
        """
        now = self._clock()
        due: list[str] = []
        cursor: str | None = None
        while len(due) < limit:
            page = self._tasks.list(status=TaskStatus.DELIVERING, limit=100, cursor=cursor)
            due.extend(t.task_id for t in page.tasks if after_restart or self._is_due(t, now))
            cursor = page.next_cursor
            if cursor is None:
                break
        due = due[:limit]
        if due:
            log.info("%d deliveries due", len(due))
        if wait:
            with ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="delivery-due") as pool:
                list(pool.map(lambda tid: self._round_quietly(tid, after_restart), due))
        else:
            for task_id in due:
                self._in_background(task_id, burst=False, force=after_restart)
        return due

    def deliver(self, task: Task) -> Task:
        """POST the body now: a DELIVERING task goes through the tries (and the schedule); a CANCELLED one
        gets a burst of tries only (its status is final)."""
        if task.status == TaskStatus.DELIVERING:
            return self._burst(task.task_id)
        return self._post_final(task)

    def redeliver(self, task_id: str) -> Task:
        """Post again a task whose delivery failed (DELIVERY_FAILED -> DELIVERING, a fresh retry window), or
        one waiting for its next scheduled try (DELIVERING: tried now)."""
        from scanbridge.domain.errors import ConflictError

        claimed: list[bool] = []
        current = self._tasks.get(task_id)
        if current is not None and current.status == TaskStatus.DELIVERING:
            return self._burst(task_id, force=True)

        def claim(task: Task) -> Task | None:
            claimed.clear()
            if task.status != TaskStatus.DELIVERY_FAILED:
                return None
            claimed.append(True)
            changes: dict[str, Any] = {"delivery": task.delivery.model_copy(update={
                "first_attempt_at": self._clock(), "next_attempt_at": None,
                "delivery_id": task.delivery.delivery_id or delivery_id_for(task.task_id)})}
            if task.error_code == DeliveryError.code:
                changes.update(error_code=None, error_message=None)
            return task.moved_to(TaskStatus.DELIVERING, **changes)

        task = update_task(self._tasks, task_id, claim)
        if not claimed:
            raise ConflictError(f"task {task_id!r} is {task.status}; only DELIVERY_FAILED or DELIVERING tasks are "
                                "redelivered",
                                details={"status": str(task.status)})
        return self._burst(task_id)

    def close(self) -> None:
        """Stop the background threads (tries in flight finish; their leases cover a stop mid-try)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # --- the body ----------------------------------------------------------------------------

    def build_body(self, task: Task) -> ResultsPayload:
        """The results body as models (each stored result parsed whole): `results_body(task).parsed()`."""
        return ResultsPayload.model_validate(self.results_body(task).parsed())

    def results_body(self, task: Task) -> JsonBody:
        """The results body, as posted: each scan's stored result (its text as the worker wrote it: the
        features are never parsed; only its head is read, for caseResults), or a result that explains its
        failure. The same JSON as `ResultsPayload(...).to_body()` of the parsed results."""
        heads: list[ScanResult] = []
        texts: list[bytes] = []
        for sid, scan in task.scans.items():
            raw = self._artifacts.get(scan_result_key(task.task_id, sid))
            head = text = None
            if raw is not None:
                head = stored_result_head(raw)
                text = raw
                if head is None:  # laid out otherwise: parsed whole, written as to_body writes it
                    stored = ScanResult.model_validate(json.loads(raw))
                    head, text = stored, json.dumps(stored.model_dump(mode="json", exclude_none=True)).encode()
            stored_code = ((head.results or {}).get("error") or {}).get("code") if head else None
            if head is not None and text is not None and (
                    scan.status == ScanStatus.SUCCEEDED or
                    (scan.status == ScanStatus.FAILED and stored_code == scan.error_code)):
                heads.append(head)  # a failure stored by the worker keeps its qcFailReasons and QC report
                texts.append(text)
            else:
                failed = failure_result(sid, scan.error_code or WorkerFailedError.code,
                                        scan.error_message or "the scan was not analysed")
                heads.append(failed)
                texts.append(json.dumps(failed.model_dump(mode="json", exclude_none=True)).encode())
        case = ResultsPayload(caseResults=case_results(task, heads)).to_body()["caseResults"]
        chunks = [b'{"caseResults": ', json.dumps(case).encode(), b', "scanResults": [']
        for i, text in enumerate(texts):
            chunks.extend((b", ", text) if i else (text,))
        chunks.append(b"]}")
        return JsonBody(tuple(chunks))

    def _bearer(self, task: Task) -> str:
        if task.token_ciphertext:
            return self._secrets.decrypt(task.token_ciphertext, {"task_id": task.task_id})
        if self._api_key:
            return self._api_key
        raise NoPlatformCredentialsError("the webhook had no jwt_token and SCANBRIDGE_PLATFORM_API_KEY is not set")

    # --- tries -------------------------------------------------------------------------------

    def _claim_job_end(self, task_id: str, succeeded: bool, reason: str | None) -> tuple[Task, bool]:
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
            changes: dict[str, Any] = {"scans": scans, "delivery": task.delivery.model_copy(update={
                "delivery_id": task.delivery.delivery_id or delivery_id_for(task_id),
                "first_attempt_at": self._clock(), "next_attempt_at": None})}
            if not succeeded and not task.error_code and all(s.error_code == WorkerFailedError.code
                                                             for s in scans.values()):
                changes.update(error_code=WorkerFailedError.code, error_message=reason or "the worker failed")
            return task.moved_to(TaskStatus.DELIVERING, **changes)

        task = update_task(self._tasks, task_id, claim)
        return task, bool(claimed)

    def _is_due(self, task: Task, now: float) -> bool:
        if task.status != TaskStatus.DELIVERING:
            return False
        if task.delivery.next_attempt_at is not None:
            return task.delivery.next_attempt_at <= now
        if task.delivery.first_attempt_at is not None:
            return True  # claimed, never tried
        try:  # claimed by a release without leases: due once it has been quiet for a while
            updated = datetime.fromisoformat(task.updated_at).timestamp()
        except ValueError:
            return True
        return now - updated > UNLEASED_STALE_S

    def _timeout_for(self, attempt: int) -> float:
        return float(min(self._max_timeout, self._timeout * 2 ** max(0, attempt - 1)))

    def _delay_after(self, attempt: int) -> float:
        """Exponential backoff with jitter: about backoff_s * 2^(attempt-1), capped at max_backoff_s."""
        base = min(self._max_backoff, self._backoff * 2 ** max(0, attempt - 1))
        return float(min(self._max_backoff, base * (0.5 + random.random())))

    def _claim_try(self, task_id: str, after: int | None = None, force: bool = False) -> Task | None:
        """Claim the next try (a lease past its timeout) when it is due (or `force`: any DELIVERING task), or,
        in a burst, right after our own try number `after` (nobody tried since); None when it is not ours."""
        now = self._clock()
        won: list[bool] = []

        def claim(task: Task) -> Task | None:
            won.clear()
            if force:
                if task.status != TaskStatus.DELIVERING:
                    return None
            elif after is not None:
                if task.status != TaskStatus.DELIVERING or task.delivery.attempts != after:
                    return None
            elif not self._is_due(task, now):
                return None
            attempt = task.delivery.attempts + 1
            won.append(True)
            return task.model_copy(update={"updated_at": utcnow(), "delivery": task.delivery.model_copy(update={
                "attempts": attempt, "next_attempt_at": now + self._timeout_for(attempt) + LEASE_GRACE_S,
                "first_attempt_at": task.delivery.first_attempt_at or now,
                "delivery_id": task.delivery.delivery_id or delivery_id_for(task_id)})})

        task = update_task(self._tasks, task_id, claim)
        return task if won else None

    def _burst(self, task_id: str, *, force: bool = False) -> Task:
        """Up to `attempts` tries with a short backoff (the first even when not due, with `force`); then the
        schedule (or the end of the window) decides."""
        task: Task | None = None
        after: int | None = None
        for i in range(self._attempts):
            task, retry_in = self._try_once(task_id, last_of_burst=i == self._attempts - 1, after=after,
                                            force=force and i == 0)
            if retry_in is None:
                return task
            after = task.delivery.attempts
            self._sleep(retry_in)
        assert task is not None
        return task

    def _round_quietly(self, task_id: str, force: bool = False) -> None:
        try:
            self._try_once(task_id, last_of_burst=True, force=force)
        except Exception:
            log.exception("delivery try failed", extra={"task_id": task_id})

    def _in_background(self, task_id: str, *, burst: bool, force: bool = False, step: int = 0,
                       after: int | None = None) -> None:
        """One try on the service's threads; the burst's next try and the scheduled one wait on timers,
        never on a pool thread (a down platform with many tasks would otherwise queue them all)."""
        with self._lock:
            if task_id in self._busy:
                return
            self._busy.add(task_id)
            if self._pool is None:
                self._pool = _DaemonPool(self._workers, "delivery")
            pool = self._pool

        def run() -> None:
            try:
                last = not burst or step >= self._attempts - 1
                task, retry_in = self._try_once(task_id, last_of_burst=last, after=after, force=force)
            except Exception:
                log.exception("delivery failed", extra={"task_id": task_id})
                return
            finally:
                with self._lock:
                    self._busy.discard(task_id)
            if retry_in is not None:  # the burst goes on after its short pause
                self._later(retry_in, task_id, burst=True, step=step + 1, after=task.delivery.attempts)
            elif task.status == TaskStatus.DELIVERING and task.delivery.next_attempt_at is not None:
                self._later(task.delivery.next_attempt_at - self._clock(), task_id, burst=False)  # on time

        try:
            pool.submit(run)
        except RuntimeError:  # closed: the stored schedule (deliver_due) takes over
            with self._lock:
                self._busy.discard(task_id)

    def _later(self, delay_s: float, task_id: str, **kwargs: Any) -> None:
        """`_in_background(task_id, **kwargs)` after `delay_s`, while this process lives."""
        timer = threading.Timer(max(0.0, delay_s), self._in_background, (task_id,), kwargs)
        timer.daemon = True
        timer.start()

    def _try_once(self, task_id: str, *, last_of_burst: bool, after: int | None = None,
                  force: bool = False) -> tuple[Task, float | None]:
        """One claimed POST; returns the task and, when the burst goes on, the delay before its next try."""
        task = self._claim_try(task_id, after, force)
        if task is None:
            current = self._tasks.get(task_id)
            assert current is not None
            return current, None
        attempt = task.delivery.attempts
        body = self.results_body(task)
        if not self._platform_configured:
            return self._skip(task, body), None
        try:
            bearer = self._bearer(task)
        except NoPlatformCredentialsError as exc:
            return self._finish(task_id, TaskStatus.FAILED, error=(exc.code, exc.message),
                                delivery={"last_error": exc.message, "next_attempt_at": None}), None
        started = self._clock()
        status_code, excerpt, error, retryable = self._post(task, body, bearer, attempt)
        duration = round(self._clock() - started, 3)
        if error is None:
            self._artifacts.put(posted_key(task_id), body.to_bytes(), "application/json")
            log.info("results delivered", extra={"task_id": task_id, "status_code": status_code, "attempts": attempt})
            final = TaskStatus.FAILED if self._all_failed(task) else TaskStatus.COMPLETED
            return self._finish(task_id, final, delivered=True, delivery={
                "status_code": status_code, "attempts": attempt, "delivered_at": utcnow(), "last_error": None,
                "response_excerpt": excerpt, "duration_s": duration, "next_attempt_at": None}), None
        record = {"status_code": status_code, "attempts": attempt, "last_error": error,
                  "response_excerpt": excerpt, "duration_s": duration}
        now = self._clock()
        delay = self._delay_after(attempt)
        first = task.delivery.first_attempt_at or started
        in_window = now + delay <= first + self._window
        if retryable and (not last_of_burst or in_window):
            log.warning("delivery attempt %d failed (%s); next try in %.2fs", attempt, error, delay,
                        extra={"task_id": task_id})
            # in a burst the lease covers the pause and the next try; after it, the schedule is the next try
            lease = delay + (0.0 if last_of_burst else self._timeout_for(attempt + 1) + LEASE_GRACE_S)
            updated = self._record(task_id, {**record, "next_attempt_at": now + lease})
            return updated, (delay if not last_of_burst else None)
        log.error("results could not be delivered: %s", error, extra={"task_id": task_id})
        self._dead_letter(task, status_code, error, attempt)
        return self._finish(task_id, TaskStatus.DELIVERY_FAILED, error=(DeliveryError.code, error),
                            delivery={**record, "next_attempt_at": None}), None

    def _post(self, task: Task, body: JsonBody, bearer: str,
              attempt: int) -> tuple[int | None, str | None, str | None, bool]:
        """One POST: (status code, excerpt, error or None on 2xx, whether the error is worth retrying)."""
        try:
            resp = self._platform.post_results(task.task_id, body, bearer,
                                               delivery_id=task.delivery.delivery_id or delivery_id_for(task.task_id),
                                               timeout_s=self._timeout_for(attempt))
        except DeliveryError as exc:
            return exc.status_code, None, exc.message, exc.retryable
        excerpt = resp.body[:500]
        if 200 <= resp.status_code < 300:
            return resp.status_code, excerpt, None, False
        refused = resp.status_code in NO_RETRY or (400 <= resp.status_code < 500 and resp.status_code != 429)
        return resp.status_code, excerpt, f"platform answered {resp.status_code}", not refused

    def _post_final(self, task: Task) -> Task:
        """A burst of POSTs for a task whose status is already final (CANCELLED): recorded, never scheduled."""
        body = self.results_body(task)
        if not self._platform_configured:
            return self._skip(task, body)
        try:
            bearer = self._bearer(task)
        except NoPlatformCredentialsError as exc:
            return self._finish(task.task_id, TaskStatus.FAILED, error=(exc.code, exc.message),
                                delivery={"last_error": exc.message})
        task = task.model_copy(update={"delivery": task.delivery.model_copy(update={
            "delivery_id": task.delivery.delivery_id or delivery_id_for(task.task_id)})})
        record: dict[str, Any] = {}
        for attempt in range(1, self._attempts + 1):
            started = self._clock()
            status_code, excerpt, error, retryable = self._post(task, body, bearer, attempt)
            record = {"status_code": status_code, "attempts": attempt, "last_error": error, "response_excerpt": excerpt,
                      "duration_s": round(self._clock() - started, 3), "delivery_id": task.delivery.delivery_id}
            if error is None:
                self._artifacts.put(posted_key(task.task_id), body.to_bytes(), "application/json")
                return self._finish(task.task_id, TaskStatus.COMPLETED, delivered=True,
                                    delivery={**record, "delivered_at": utcnow()})
            if not retryable:
                break
            if attempt < self._attempts:
                self._sleep(self._delay_after(attempt))
        self._dead_letter(task, record.get("status_code"), str(record.get("last_error")), self._attempts)
        return self._finish(task.task_id, TaskStatus.DELIVERY_FAILED, error=(DeliveryError.code,
                                                                              str(record.get("last_error"))),
                            delivery=record)

    def _skip(self, task: Task, body: JsonBody) -> Task:
        """No platform to post to: keep the body as the task's results and end it without a POST."""
        self._artifacts.put(posted_key(task.task_id), body.to_bytes(), "application/json")
        log.info("results kept, not posted: %s (SCANBRIDGE_PLATFORM_URL is not set)", NO_PLATFORM,
                 extra={"task_id": task.task_id})
        final = TaskStatus.FAILED if self._all_failed(task) else TaskStatus.COMPLETED
        return self._finish(task.task_id, final, delivery={
            "skipped": NO_PLATFORM, "attempts": 0, "last_error": None, "next_attempt_at": None,
            "delivery_id": task.delivery.delivery_id or delivery_id_for(task.task_id)})

    def _dead_letter(self, task: Task, status_code: int | None, error: str, attempts: int) -> None:
        if self._dead_letters is not None and task.status != TaskStatus.CANCELLED:
            self._dead_letters.send({"task_id": task.task_id, "company_id": task.company_id,
                                     "reason": "DELIVERY_FAILED", "status_code": status_code,
                                     "last_error": error, "attempts": attempts, "at": utcnow()})

    def _record(self, task_id: str, delivery: dict[str, Any]) -> Task:
        def change(t: Task) -> Task | None:
            if t.status != TaskStatus.DELIVERING:
                return None
            return t.model_copy(update={"delivery": t.delivery.model_copy(update=delivery), "updated_at": utcnow()})

        return update_task(self._tasks, task_id, change)

    @staticmethod
    def _all_failed(task: Task) -> bool:
        own = task.error_code if task.error_code != DeliveryError.code else None
        return bool(own) or all(s.status == ScanStatus.FAILED for s in task.scans.values())

    def _finish(self, task_id: str, status: TaskStatus, *, delivery: dict[str, Any],
                error: tuple[str, str] | None = None, delivered: bool = False) -> Task:
        def change(t: Task) -> Task:
            updates: dict[str, Any] = {"delivery": t.delivery.model_copy(update=delivery)}
            if t.status == TaskStatus.CANCELLED:
                return t.model_copy(update={**updates, "updated_at": utcnow()})
            if delivered and t.error_code == DeliveryError.code:  # an earlier failed delivery is history now
                updates.update(error_code=None, error_message=None)
            elif error and not t.error_code:
                updates.update(error_code=error[0], error_message=error[1])
            if status == TaskStatus.FAILED and not t.error_code and not error:
                first = next((s for s in t.scans.values() if s.error_code), None)
                if first:
                    updates.update(error_code=first.error_code, error_message=first.error_message)
            return t.moved_to(status, **updates)

        return update_task(self._tasks, task_id, change)
