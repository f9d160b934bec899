"""In-memory TaskStore, ArtifactStore, SecretBox, DeadLetterQueue and JobLauncher: the same contracts, no AWS."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cryptography.fernet import Fernet

from scanbridge.adapters.no_local_processes import NoLocalProcesses
from scanbridge.domain.errors import ValidationError
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task
from scanbridge.ports import TaskPage


class MemoryTaskStore:
    """Tasks in a dict, with the same optimistic versioning as DynamoDB."""

    def __init__(self) -> None:
        self._tasks: dict[str, str] = {}
        self._lock = threading.Lock()

    def create(self, task: Task) -> bool:
        """Store a new task; False when its task_id exists."""
        with self._lock:
            if task.task_id in self._tasks:
                return False
            self._tasks[task.task_id] = task.model_dump_json()
            return True

    def get(self, task_id: str) -> Task | None:
        """The task, or None."""
        with self._lock:
            doc = self._tasks.get(task_id)
        return Task.model_validate_json(doc) if doc else None

    def replace(self, task: Task, expected_version: int) -> bool:
        """Write `task` if the stored version is `expected_version`."""
        with self._lock:
            doc = self._tasks.get(task.task_id)
            if doc is None or Task.model_validate_json(doc).version != expected_version:
                return False
            self._tasks[task.task_id] = task.model_copy(update={"version": expected_version + 1}).model_dump_json()
            return True

    def list(self, *, status: TaskStatus | None = None, company_id: str | None = None,
             limit: int = 50, cursor: str | None = None) -> TaskPage:
        """Tasks newest first, filtered; the cursor is an offset."""
        with self._lock:
            tasks = [Task.model_validate_json(d) for d in self._tasks.values()]
        tasks = [t for t in tasks if (status is None or t.status == status)
                 and (company_id is None or t.company_id == company_id)]
        tasks.sort(key=lambda t: (t.created_at, t.task_id), reverse=True)
        try:
            start = int(base64.urlsafe_b64decode(cursor.encode())) if cursor else 0
        except ValueError as exc:
            raise ValidationError("invalid cursor") from exc
        page = tasks[start:start + limit]
        nxt = start + limit
        return TaskPage(page, base64.urlsafe_b64encode(str(nxt).encode()).decode() if nxt < len(tasks) else None)


class MemoryArtifactStore:
    """Artifacts in a dict."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key`."""
        with self._lock:
            self._objects[key] = (bytes(data), content_type)

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str = "application/octet-stream") -> None:
        """Store the rest of `fileobj` under `key` (in memory: that is where this store keeps everything)."""
        self.put(key, fileobj.read(), content_type)

    def get(self, key: str) -> bytes | None:
        """The bytes, or None."""
        with self._lock:
            item = self._objects.get(key)
        return item[0] if item else None

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix`."""
        with self._lock:
            return sorted(k for k in self._objects if k.startswith(prefix))

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A memory:// pseudo-URL (nothing can download it)."""
        return f"memory://{key}"


class FernetSecretBox:
    """Authenticated encryption with a per-process key; the context is bound as associated data."""

    def __init__(self, key: bytes | None = None) -> None:
        self._fernet = Fernet(key or Fernet.generate_key())

    def encrypt(self, plaintext: str, context: dict[str, str]) -> str:
        """Ciphertext that only decrypts with the same context."""
        envelope = json.dumps({"c": context, "p": plaintext}, sort_keys=True).encode()
        return self._fernet.encrypt(envelope).decode()

    def decrypt(self, ciphertext: str, context: dict[str, str]) -> str:
        """The plaintext; ValueError when the context differs."""
        envelope = json.loads(self._fernet.decrypt(ciphertext.encode()))
        if envelope["c"] != context:
            raise ValueError("encryption context mismatch")
        return str(envelope["p"])


class MemoryDeadLetterQueue:
    """Parked messages in a list (and, when given a folder, one JSON file each so they survive the process)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self._folder = folder
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        """Park one message."""
        with self._lock:
            self.messages.append(dict(message))
            if self._folder is not None:
                self._folder.mkdir(parents=True, exist_ok=True)
                name = f"{len(self.messages):06d}-{message.get('task_id', 'message')}.json"
                (self._folder / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)).write_text(
                    json.dumps(message, sort_keys=True))


class MemoryJobLauncher(NoLocalProcesses):
    """A JobLauncher that records what was submitted and runs nothing: for tests, and for `scanbridge mhs`,
    whose own process is the worker. It names its jobs itself (like Batch: `job_id_for(task_id, n)`, by
    default `job-<n>`); its lifecycle calls are no-ops and it knows no queue or process (None, False).
    """

    def __init__(self, job_id_for: Callable[[str, int], str] | None = None) -> None:
        self.submitted: list[str] = []
        self.scans: list[int] = []
        self.cancelled: list[str] = []
        self._job_id_for = job_id_for or (lambda _task_id, n: f"job-{n}")
        self._lock = threading.Lock()

    def submit(self, task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        """Record the submission; returns this launcher's own job id."""
        with self._lock:
            self.submitted.append(task_id)
            self.scans.append(scans)
            return self._job_id_for(task_id, len(self.submitted))

    def cancel(self, job_id: str, reason: str) -> None:
        """Record the cancellation."""
        with self._lock:
            self.cancelled.append(job_id)
