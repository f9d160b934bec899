"""The ports: what services need from the outside world. Each has a real and an in-memory adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from scanbridge.domain.models import ModelSpec
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task


@dataclass(frozen=True)
class TaskPage:
    """One page of a task listing and the cursor of the next (None at the end)."""

    tasks: list[Task]
    next_cursor: str | None


class TaskStore(Protocol):
    """Durable task records with optimistic concurrency on `Task.version`.

    >>> store.create(task)          # False when task_id exists already
    >>> store.replace(changed, expected_version=task.version)  # False when someone wrote first
    """

    def create(self, task: Task) -> bool:
        """Store a new task; False (and nothing written) when its task_id exists."""

    def get(self, task_id: str) -> Task | None:
        """The task, or None."""

    def replace(self, task: Task, expected_version: int) -> bool:
        """Write `task` (with version expected_version+1) only if the stored version matches."""

    def list(self, *, status: TaskStatus | None = None, company_id: str | None = None,
             limit: int = 50, cursor: str | None = None) -> TaskPage:
        """Tasks, newest first, filtered by status and/or company."""


class ArtifactStore(Protocol):
    """Bytes by key: results JSON, overlays, masks (S3; locally moto or memory)."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key`, replacing what was there."""

    def get(self, key: str) -> bytes | None:
        """The bytes under `key`, or None."""

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix`."""

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A download link for `key`."""


class SecretBox(Protocol):
    """Encrypts secrets at rest (KMS; locally moto KMS or an in-process key)."""

    def encrypt(self, plaintext: str, context: dict[str, str]) -> str:
        """Ciphertext (text) bound to `context`."""

    def decrypt(self, ciphertext: str, context: dict[str, str]) -> str:
        """The plaintext; fails when `context` differs from encryption."""


class JobLauncher(Protocol):
    """Starts the worker for a task (AWS Batch; locally a subprocess)."""

    def submit(self, task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        """Start processing `task_id` (`scans` of them, in parallel where the launcher can); returns the job id.

        `job_id` is the id the caller already stored with the task: a launcher that lets its caller name
        the job (the local one) uses it, so the caller has nothing more to write; one whose backend names
        jobs (Batch) returns its own. Never passes the task token.
        """

    def cancel(self, job_id: str, reason: str) -> None:
        """Stop a job if it still runs."""


@dataclass(frozen=True)
class PlatformResponse:
    """What the platform answered to a results POST."""

    status_code: int
    body: str


class PlatformClient(Protocol):
    """Posts results to the platform."""

    def post_results(self, task_id: str, body: dict[str, Any], bearer: str, *, delivery_id: str = "",
                     timeout_s: float | None = None) -> PlatformResponse:
        """POST the results body (`delivery_id`: the same Idempotency-Key / webhook-id on every retry);
        raises DeliveryError on connection errors and timeouts (`timeout_s`: this attempt's read timeout)."""


class ModelCatalog(Protocol):
    """Which models exist and their specs (the API side: no onnxruntime here)."""

    def names(self) -> list[str]:
        """Every model name."""

    def spec(self, name: str) -> ModelSpec:
        """The spec of `name`; raises ModelNotFoundError."""


class DeadLetterQueue(Protocol):
    """Where undeliverable results are parked for an operator (SQS; locally moto SQS or memory)."""

    def send(self, message: dict[str, Any]) -> None:
        """Park one message (never the token or the results body: those stay in the stores)."""
