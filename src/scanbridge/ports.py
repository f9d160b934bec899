"""The ports: what services need from the outside world. Each has a real and an in-memory adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from scanbridge.domain.models import ModelSpec
from scanbridge.domain.results import JsonBody, QcFinding, ScanResult
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task

if TYPE_CHECKING:  # numpy and the readers are not in the API Lambda's layer: annotations only
    import numpy as np

    from scanbridge.imaging.scan import OpenedScan


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
    """Bytes by key: results JSON, overlays, masks (S3; locally moto or memory; run-scan's output: a folder)."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key`, replacing what was there."""

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str = "application/octet-stream") -> None:
        """Store what is left to read of the binary file `fileobj` under `key`, read in chunks (the
        artifacts: a file written beside the data, never one bytes object); the caller closes the file."""

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
    """Starts the worker for a task (AWS Batch; locally a subprocess) and owns its workers' lifetime.

    Batch runs its own workers and has its own events: there the lifecycle calls are no-ops and the
    questions are answered "not known" (None, False). The local launcher answers all of them.

    >>> job = launcher.submit(task.task_id, scans=2, job_id=task.job_id)
    >>> launcher.queue_position(job)   # 3 while two jobs wait before it, 0 once started; None on Batch
    """

    def submit(self, task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        """Start processing `task_id` (`scans` of them, in parallel where the launcher can); returns the job id.

        `job_id` is the id the caller already stored with the task: a launcher that lets its caller name
        the job (the local one) uses it, so the caller has nothing more to write; one whose backend names
        jobs (Batch) returns its own. Never passes the task token.
        """

    def cancel(self, job_id: str, reason: str) -> None:
        """Stop a job if it still runs."""

    # --- lifecycle (`scanbridge serve` and the MCP local stack start and stop it) ---

    def warm_up(self, count: int) -> int:
        """Start spare workers ahead of the tasks (SCANBRIDGE_WARM_WORKERS); returns how many pools run."""

    def clean_work_except(self, keep: set[str]) -> int:
        """At start: remove the download folders of every task but `keep`; returns how many."""

    def shutdown(self) -> list[str]:
        """Stop every worker (not retried); returns the ids of the tasks whose worker it stopped."""

    # --- what the queries and the reaper may learn from it ---

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start, 0 once the job is not waiting; None when the launcher has no queue
        of its own to tell (Batch: the queries then count the QUEUED tasks)."""

    def queue_eta_s(self, job_id: str) -> float | None:
        """Seconds until a waiting job should start; None when unknown."""

    def last_seen(self, job_id: str) -> float | None:
        """Epoch seconds of the launcher's own latest sign of life of the job, None when unknown."""

    def is_alive(self, job_id: str) -> bool:
        """Whether a process of the job exists (False when the launcher cannot tell)."""

    def kill(self, job_id: str, reason: str, *, retry: bool) -> bool:
        """Kill the job's process (stopped ones too); `retry`: start it again when attempts are left.
        Returns whether there was a process to kill."""


@dataclass(frozen=True)
class PlatformResponse:
    """What the platform answered to a results POST."""

    status_code: int
    body: str


class PlatformClient(Protocol):
    """Posts results to the platform."""

    def post_results(self, task_id: str, body: JsonBody, bearer: str, *, delivery_id: str = "",
                     timeout_s: float | None = None) -> PlatformResponse:
        """POST the results body, its JSON text as it is (`delivery_id`: the same Idempotency-Key / webhook-id
        on every retry); raises DeliveryError on connection errors and timeouts (`timeout_s`: this attempt's
        read timeout)."""


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


# --- the worker's steps (services/processing.py) ----------------------------------------------


class Fetcher(Protocol):
    """Downloads a scan's files (imaging.fetch.SafeFetcher)."""

    def fetch_all(self, urls: list[str], dest_dir: Path) -> list[Path]:
        """Every file, in order."""


class ScanOpener(Protocol):
    """Opens a downloaded scan once for the worker's steps (imaging.scan.OpenedScan.open); raises ScanErrors.

    >>> with opener(paths) as scan:  # QC, the analysis and the artifacts share its reader and tissue mask
    ...     qc(scan); analyzer("scan-1", scan, "tissue", progress); writer("task-1", "scan-1", scan, result)
    """

    def __call__(self, paths: list[Path]) -> OpenedScan:
        """The open scan (closed by leaving its `with` block)."""


class ScanAnalyzer(Protocol):
    """Runs one model over one open scan."""

    def __call__(self, scan_id: str, scan: OpenedScan, model_name: str,
                 progress: Callable[[int, int], None], *, checkpoint: Any = None) -> tuple[ScanResult, dict[str, Any]]:
        """The scan's result and its reader metadata (resuming from `checkpoint`, an inference.resume
        CheckpointStore, when one is given)."""


class QcOutcome(Protocol):
    """What a quality-control run found (imaging.qc.QcReport fits)."""

    @property
    def failures(self) -> list[QcFinding]:
        """The failed checks."""

    def to_json(self) -> dict[str, Any]:
        """Every check, JSON-ready (stored as results.qc)."""


class ScanQc(Protocol):
    """Runs the quality checks on an open scan (imaging.qc.run_qc); raises ScanErrors."""

    def __call__(self, scan: OpenedScan) -> QcOutcome:
        """The checks' outcome."""


class ArtifactWriter(Protocol):
    """Stores a succeeded scan's artifacts from the open scan (services.artifacts.ScanArtifactWriter);
    never raises."""

    def __call__(self, task_id: str, scan_id: str, scan: OpenedScan, result: ScanResult) -> dict[str, Any]:
        """Extra entries for the scan's metadata.json (the scan's tissue figure, the DICOM source's key
        attributes)."""


# --- the model registry (services/models.py) and where the worker's models come from ----------


class ModelRegistry(Protocol):
    """Where uploaded models live (DynamoDB + S3; in memory locally).

    >>> registry.put_onnx("my-model", "2", data); registry.put_spec(spec, {"sha256": ...})
    >>> registry.get_spec("my-model").version   # '2'
    """

    def list_specs(self) -> list[ModelSpec]:
        """Every registered spec, by name."""

    def get_spec(self, name: str) -> ModelSpec | None:
        """The registered spec of `name`, or None."""

    def file_info(self, name: str) -> dict[str, Any] | None:
        """Facts recorded with the spec (sha256, size_bytes, onnx_key, updated_at...), or None."""

    def put_spec(self, spec: ModelSpec, info: dict[str, Any]) -> None:
        """Store `spec` (replacing any) with facts about its file."""

    def delete_spec(self, name: str) -> bool:
        """Remove the spec; False when there was none."""

    def put_onnx(self, name: str, version: str, data: bytes) -> str:
        """Store the ONNX file; returns its key."""

    def get_onnx(self, name: str, version: str) -> bytes | None:
        """The ONNX file, or None."""

    def delete_onnx(self, name: str) -> int:
        """Remove every version of the model's files; returns how many."""


class ModelSource(Protocol):
    """Where registered (non built-in) models come from: services.models.ModelService fits."""

    def spec(self, name: str) -> ModelSpec:
        """The spec of `name`; raises ModelNotFoundError."""

    def onnx_bytes(self, name: str, version: str) -> bytes:
        """The ONNX file of `name` at `version`; raises ModelNotFoundError."""


# --- where a scan's checkpoints live ------------------------------------------------------------


class CheckpointStore(Protocol):
    """Where one scan's checkpoint parts live (services.checkpoints.ArtifactCheckpoints fits)."""

    interval_s: float

    def parts(self, fingerprint: str) -> list[dict[str, np.ndarray]]:
        """Every stored part of `fingerprint`, in the order they were saved."""

    def save(self, fingerprint: str, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Store part number `index`."""


# --- the MCP tools' backend and the local launcher's workers ------------------------------------


class McpBackend(Protocol):
    """What the MCP tools need (entrypoints/mcp_server.py): a bridge over HTTP (the client SDK's BridgeClient)
    or the services of an in-process container (ContainerBackend)."""

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Accept a webhook body; {task_id, status, created}."""

    def task(self, task_id: str) -> dict[str, Any]:
        """The task's public view."""

    def tasks(self, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        """{tasks, next_cursor}."""

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel; the task's public view."""

    def scan_metadata(self, task_id: str, scan_id: str) -> dict[str, Any]:
        """What the reader found in a scan."""

    def results(self, task_id: str) -> dict[str, Any]:
        """The results body posted to the platform."""

    def models(self) -> dict[str, Any]:
        """{models: [spec...]}."""


class WorkerProcess(Protocol):
    """A worker the launcher waits for: a `subprocess.Popen` or a warm server's `ForkedWorker`."""

    pid: int

    def poll(self) -> int | None:
        """The exit code, None while it runs."""

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (subprocess.TimeoutExpired past `timeout`); the exit code."""
