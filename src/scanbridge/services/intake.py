"""Intake: accept a platform webhook, store the task once (idempotent on task_id), start one job."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from scanbridge.domain.errors import (
    PayloadTooLargeError,
    TaskIdConflictError,
    TaskPayloadMismatchError,
    ValidationError,
)
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.task import ScanState, Task, new_job_id
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.ports import JobLauncher, SecretBox, TaskStore
from scanbridge.services.common import update_task

log = logging.getLogger(__name__)

#: the largest task record stored (JSON bytes): one DynamoDB item holds 400 KB, names and overhead included
MAX_TASK_BYTES = 300_000


def token_expiry(token: str) -> int | None:
    """The `exp` claim of a JWT, read without verifying (we cannot: the platform signs it)."""
    import jwt  # imported here: it pulls in cryptography, which the API's cold start need not pay for

    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return int(exp) if isinstance(exp, (int, float)) else None


def check_same_task(stored: Task, fresh: Task, *, model_requested: bool = True) -> None:
    """Refuse a redelivery that is not the stored task again (the payload is compared, as Powertools'
    idempotency and Stripe's idempotency keys do): another company (409 TASK_ID_CONFLICT), or other
    scans, case or model (409 TASK_PAYLOAD_MISMATCH). Fresh URLs and a later token are what a
    redelivery may change; the model is compared when the redelivery names one (a default may move).
    """
    if stored.company_id != fresh.company_id:
        raise TaskIdConflictError("this task_id belongs to another company's task; nothing was changed",
                                  details={"task_id": stored.task_id})
    differs = [name for name, a, b in (("scans", sorted(stored.scans), sorted(fresh.scans)),
                                       ("case_id", stored.case_id, fresh.case_id),
                                       ("model", stored.model if model_requested else None,
                                        fresh.model if model_requested else None)) if a != b]
    if differs:
        raise TaskPayloadMismatchError(
            "a redelivery of this task_id differs from the stored task in " + ", ".join(differs)
            + "; nothing was changed (send a new task_id for a new task)",
            details={"task_id": stored.task_id, "fields": differs})


@dataclass(frozen=True)
class Accepted:
    """The outcome of a webhook: the task and whether this call created it."""

    task: Task
    created: bool


class IntakeService:
    """Turns a webhook into exactly one stored task and one job.

    >>> intake.accept(WebhookPayload.model_validate(body))  # Accepted(task=..., created=True)
    """

    def __init__(self, tasks: TaskStore, launcher: JobLauncher, secrets: SecretBox, *,
                 default_model: str, max_scans: int = 50,
                 model_for_stain: Callable[[str | None], str] | None = None) -> None:
        self._tasks = tasks
        self._launcher = launcher
        self._secrets = secrets
        self._default_model = default_model
        self._max_scans = max_scans
        self._model_for_stain = model_for_stain

    def accept(self, payload: WebhookPayload) -> Accepted:
        """Store the task if new, then make sure it has a job; duplicates return the stored task."""
        files = payload.scan_files()
        if len(files) > self._max_scans:
            raise ValidationError(f"the webhook has {len(files)} scans; the limit is {self._max_scans}")
        token = payload.jwt_token or None
        task = Task(
            task_id=payload.task_id,
            company_id=payload.company_id,
            case_id=payload.case_id,
            model=payload.requested_model() or self._default_for(payload),
            scans={sid: ScanState(scan_id=sid, urls=urls,
                                  stain=payload.stains[sid].model_dump() if sid in payload.stains else None)
                   for sid, urls in files.items()},
            extra=payload.extra_fields(),
            token_ciphertext=self._secrets.encrypt(token, {"task_id": payload.task_id}) if token else None,
            token_exp=token_expiry(token) if token else None,
            status=TaskStatus.QUEUED,
            attempts=1,
            job_id=new_job_id(),
        )
        size = len(task.model_dump_json())
        if size > MAX_TASK_BYTES:
            raise PayloadTooLargeError(f"the task would take {size} bytes to store; the limit is {MAX_TASK_BYTES}",
                                       details={"size": size, "limit": MAX_TASK_BYTES})
        # The caller whose conditional create wins submits the job: one task, one job, however many
        # redeliveries race. Stored as QUEUED and with its job's id at once, so that with a launcher that
        # takes the id (the local one) the conditional create is the acknowledgement's only write.
        if self._tasks.create(task):
            return Accepted(task=self._submit(task), created=True)
        log.info("duplicate webhook for an existing task", extra={"task_id": payload.task_id})
        self._refresh(task, model_requested=payload.requested_model() is not None)  # refuses (409) another tenant's reuse of the id and a changed payload
        return Accepted(task=self._ensure_job(payload.task_id), created=False)

    def _default_for(self, payload: WebhookPayload) -> str:
        """The default model for the task's stain (the first scan's that has one), else the default."""
        if self._model_for_stain is None:
            return self._default_model
        stain = next((payload.stains[sid].value for sid in payload.scan_files() if sid in payload.stains), None)
        return self._model_for_stain(stain)

    def _refresh(self, fresh: Task, *, model_requested: bool) -> None:
        """A redelivery carries freshly signed URLs (and maybe a fresh token): keep them for unfinished work."""

        def change(task: Task) -> Task | None:
            check_same_task(task, fresh, model_requested=model_requested)
            if task.status.is_terminal:
                return None
            scans = dict(task.scans)
            changed = False
            for sid, scan in fresh.scans.items():
                old = scans.get(sid)
                if old and old.status == ScanStatus.PENDING and old.urls != scan.urls:
                    scans[sid] = old.model_copy(update={"urls": scan.urls})
                    changed = True
            updates: dict[str, object] = {"scans": scans}
            if fresh.token_ciphertext and fresh.token_exp and fresh.token_exp > (task.token_exp or 0):
                updates.update(token_ciphertext=fresh.token_ciphertext, token_exp=fresh.token_exp)
                changed = True
            return task.model_copy(update=updates) if changed else None

        update_task(self._tasks, fresh.task_id, change)

    def _ensure_job(self, task_id: str) -> Task:
        """A task left RECEIVED by a failed submission: claim RECEIVED -> QUEUED (one caller wins), submit."""
        claimed: list[bool] = []

        def claim(task: Task) -> Task | None:
            claimed.clear()
            if task.status != TaskStatus.RECEIVED:
                return None
            claimed.append(True)
            return task.moved_to(TaskStatus.QUEUED, attempts=task.attempts + 1, job_id=new_job_id())

        task = update_task(self._tasks, task_id, claim)
        if not claimed:
            return task
        return self._submit(task)

    def _submit(self, task: Task) -> Task:
        """Submit the job of a stored QUEUED task (under the job id stored with it); back to RECEIVED if that fails.

        A launcher that names its own jobs (Batch) returns another id: that one is recorded (one more write).
        """
        task_id = task.task_id
        try:
            job_id = self._launcher.submit(task_id, scans=len(task.scans), job_id=task.job_id)
        except Exception:
            log.exception("job submission failed; the task goes back to RECEIVED for the next delivery")
            update_task(self._tasks, task_id,
                        lambda t: t.model_copy(update={"status": TaskStatus.RECEIVED, "job_id": None}))
            raise
        if job_id == task.job_id:
            return task
        with_job = task.model_copy(update={"job_id": job_id})
        if self._tasks.replace(with_job, expected_version=task.version):  # the usual case: one write
            return with_job.model_copy(update={"version": task.version + 1})
        return update_task(self._tasks, task_id, lambda t: t.model_copy(update={"job_id": job_id}))
