"""Processing (the worker): fetch each scan, open it once, run QC and the model, store its result.

Each scan is opened once (the injected `ScanOpener`): QC, the analysis and the artifacts share that
open scan, its overview and its tissue mask, and it is closed (a ZIP's folder removed) when they are done.

Every failure of one scan is caught, coded and stored as that scan's result; the task's other
scans still run. Task-level failures (expired token, unknown model) fail every scan before any
download. The worker never posts: the results step does, from what is stored here.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from scanbridge.domain.errors import (
    NoPlatformCredentialsError,
    ScanbridgeError,
    ScanStorageFullError,
    TaskCancelledError,
    TaskTokenExpiredError,
    is_disk_full,
)
from scanbridge.domain.feature_spool import result_json_bytes
from scanbridge.domain.results import (
    QcFinding,
    ScanResult,
    failure_result,
    qc_failure_result,
    with_qc_findings,
)
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.storage_keys import scan_metadata_key, scan_result_key
from scanbridge.domain.task import Progress, Task, utcnow
from scanbridge.ports import (
    ArtifactStore,
    ArtifactWriter,
    CheckpointStore,
    Fetcher,
    ScanAnalyzer,
    ScanOpener,
    ScanQc,
    TaskStore,
)
from scanbridge.services.common import update_task

if TYPE_CHECKING:
    from scanbridge.imaging.scan import OpenedScan

log = logging.getLogger(__name__)


class ProcessingService:
    """Runs a task's scans in the worker.

    >>> processing.run("task-1")  # Task with each scan SUCCEEDED or FAILED, results stored

    A full disk (SCAN_STORAGE_FULL) is transient: the scan's files are removed and the scan is tried
    again after each of `storage_retry_s`; only then does it fail, with that code.
    """

    storage_retry_s: tuple[float, ...] = (5.0, 30.0)

    def __init__(self, tasks: TaskStore, artifacts: ArtifactStore, fetcher: Fetcher, analyzer: ScanAnalyzer,
                 *, opener: ScanOpener, work_dir: Path, check_model: Callable[[str], None],
                 clock: Callable[[], float] = time.time, progress_interval_s: float = 1.0,
                 artifact_writer: ArtifactWriter | None = None,
                 qc: ScanQc | None = None, qc_blocks: Callable[[str], bool] = lambda _model: True,
                 qc_fail_reasons: dict[str, str] | None = None, has_api_key: bool = True,
                 public_url: str = "", scan_parallelism: int = 1,
                 checkpoints: Callable[[str, str], CheckpointStore] | None = None) -> None:
        self._tasks = tasks
        self._checkpoints = checkpoints  # (task_id, scan_id) -> CheckpointStore: a retried worker resumes
        self._parallel = scan_parallelism
        self._qc = qc
        self._qc_blocks = qc_blocks
        self._qc_map = dict(qc_fail_reasons or {})
        self._has_api_key = has_api_key
        self._public_url = public_url.rstrip("/")
        self._artifact_writer = artifact_writer
        self._artifacts = artifacts
        self._fetcher = fetcher
        self._open = opener
        self._analyzer = analyzer
        self._work_dir = work_dir
        self._check_model = check_model
        self._clock = clock
        self._interval = progress_interval_s

    def run(self, task_id: str, only_scans: Collection[str] | None = None) -> Task:
        """Process every scan of the task (or `only_scans`: one Batch array child) that has no result yet."""
        task = update_task(self._tasks, task_id, lambda t: None)
        if task.status.is_terminal or task.status == TaskStatus.DELIVERING:
            log.info("task already finished processing; nothing to do", extra={"task_id": task_id})
            return task
        try:
            if task.token_exp is not None and task.token_exp <= self._clock():
                raise TaskTokenExpiredError("the task token expired before processing started")
            self._check_model(task.model or "")
            if task.token_ciphertext is None and not self._has_api_key:
                raise NoPlatformCredentialsError(
                    "the webhook had no jwt_token and SCANBRIDGE_PLATFORM_API_KEY is not set: results cannot be posted")
        except ScanbridgeError as exc:
            return self._fail_all(task, exc)
        todo = [sid for sid in task.scans if only_scans is None or sid in only_scans]
        with ThreadPoolExecutor(max_workers=max(1, min(self._parallel, len(todo) or 1)),
                                thread_name_prefix="scan") as pool:
            list(pool.map(lambda sid: self._run_scan(task_id, sid), todo))
        return self._tasks.get(task_id) or task

    def _run_scan(self, task_id: str, scan_id: str) -> None:
        """One scan, unless the task was cancelled or the scan already finished (a retried worker)."""
        current = self._tasks.get(task_id)
        if current is None or current.status == TaskStatus.CANCELLED:
            log.info("task cancelled; stopping", extra={"task_id": task_id})
            return
        if current.scans[scan_id].status in (ScanStatus.SUCCEEDED, ScanStatus.FAILED):
            return  # a retried worker keeps what the last attempt finished
        for attempt in range(len(self.storage_retry_s) + 1):
            try:
                self._process_scan(current, scan_id)
                return
            except TaskCancelledError:
                log.info("task cancelled during a scan", extra={"task_id": task_id, "scan_id": scan_id})
                return
            except ScanStorageFullError as exc:  # transient: its files are gone, try again after a pause
                if attempt == len(self.storage_retry_s):
                    self._scan_failed(task_id, scan_id, exc.code,
                                      f"{exc.message} (transient: still full after {attempt + 1} attempts)")
                    return
                log.warning("disk full; scan retried in %s s", self.storage_retry_s[attempt],
                            extra={"task_id": task_id, "scan_id": scan_id})
                time.sleep(self.storage_retry_s[attempt])

    def _fail_all(self, task: Task, exc: ScanbridgeError) -> Task:
        for scan_id in task.scans:
            self._store_result(task.task_id, failure_result(scan_id, exc.code, exc.message, self._qc_map.get(exc.code)))

        def change(t: Task) -> Task:
            scans = {sid: s.model_copy(update={"status": ScanStatus.FAILED, "error_code": exc.code,
                                               "error_message": exc.message, "finished_at": utcnow()})
                     for sid, s in t.scans.items()}
            return t.model_copy(update={"error_code": exc.code, "error_message": exc.message, "scans": scans,
                                        "updated_at": utcnow()})

        log.warning("task failed before processing: %s", exc.code, extra={"task_id": task.task_id})
        return update_task(self._tasks, task.task_id, change)

    def _set_scan(self, task_id: str, scan_id: str, task_status: TaskStatus | None = None,
                  **changes: Any) -> Task:
        def change(t: Task) -> Task:
            if t.status == TaskStatus.CANCELLED:
                raise TaskCancelledError("the task was cancelled")
            scans = dict(t.scans)
            scans[scan_id] = scans[scan_id].model_copy(update=changes)
            if task_status and task_status != t.status:
                return t.moved_to(task_status, scans=scans)
            return t.model_copy(update={"scans": scans, "updated_at": utcnow()})

        return update_task(self._tasks, task_id, change)

    def _store_result(self, task_id: str, result: ScanResult) -> None:
        if self._public_url:
            link = f"{self._public_url}/tasks/{quote(task_id, safe='')}"
            result = result.model_copy(update={"results": {**(result.results or {}), "external_url": link}})
        body = result_json_bytes(result)  # a streamed result's features are copied as text, not built as dicts
        self._artifacts.put(scan_result_key(task_id, result.scanId), body, "application/json")

    def _process_scan(self, task: Task, scan_id: str) -> None:
        task_id = task.task_id
        scan = task.scans[scan_id]
        workdir = self._work_dir / _safe(task_id) / _safe(scan_id)
        started = self._clock()
        self._set_scan(task_id, scan_id, TaskStatus.DOWNLOADING, status=ScanStatus.DOWNLOADING,
                       started_at=utcnow(), progress=Progress(step="downloading", percent=0.0))
        try:
            paths = self._fetcher.fetch_all(list(scan.urls), workdir)
            timings = {"download_s": self._clock() - started}
            with self._open(paths) as opened:  # once: QC, the analysis and the artifacts share it
                self._analyse(task, scan_id, opened, started, timings)
        except (TaskCancelledError, ScanStorageFullError):
            raise  # _run_scan stops, or tries the scan again
        except OSError as exc:
            if not is_disk_full(exc):
                log.exception("unexpected error on a scan", extra={"task_id": task_id, "scan_id": scan_id})
                self._scan_failed(task_id, scan_id, "SCAN_PROCESSING_ERROR", f"unexpected {type(exc).__name__}")
                return
            raise ScanStorageFullError("no space left on the worker's disk") from exc
        except ScanbridgeError as exc:  # a coded failure (SCAN_*, INFERENCE_FAILED, ...) fails this scan only
            self._scan_failed(task_id, scan_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("unexpected error on a scan", extra={"task_id": task_id, "scan_id": scan_id})
            self._scan_failed(task_id, scan_id, "SCAN_PROCESSING_ERROR", f"unexpected {type(exc).__name__}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _analyse(self, task: Task, scan_id: str, opened: OpenedScan, started: float,
                 timings: dict[str, float]) -> None:
        """QC, the model and the artifacts on the open scan; its result and metadata stored."""
        task_id = task.task_id
        t_opened = self._clock()
        timings["open_s"] = t_opened - started - timings["download_s"]
        findings, qc_json = self._run_qc(task_id, scan_id, opened)
        t_qc = self._clock()
        timings["qc_s"] = t_qc - t_opened
        if findings and self._qc_blocks(task.model or ""):
            self._qc_failed(task_id, scan_id, findings, qc_json)
            return
        self._set_scan(task_id, scan_id, TaskStatus.RUNNING, status=ScanStatus.RUNNING,
                       progress=Progress(step="analysing", percent=5.0))
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = self._clock()
            if done < total and now - last[0] < self._interval:
                return
            last[0] = now
            elapsed = now - started
            eta = elapsed / done * (total - done) if done else None
            self._set_scan(task_id, scan_id, status=ScanStatus.RUNNING, progress=Progress(
                step="inference", percent=round(5.0 + 90.0 * done / max(total, 1), 1),
                tiles_done=done, tiles_total=total, eta_s=round(eta, 1) if eta is not None else None))

        resume = {"checkpoint": self._checkpoints(task_id, scan_id)} if self._checkpoints else {}
        result, metadata = self._analyzer(scan_id, opened, task.model or "", progress, **resume)
        t_analysed = self._clock()
        timings["analyse_s"] = t_analysed - t_qc
        if qc_json is not None:
            result = with_qc_findings(result, findings, self._qc_map, qc_json)
        metadata = {**metadata, **self._write_artifacts(task_id, scan_id, opened, result)}
        timings["artifacts_s"] = self._clock() - t_analysed
        self._artifacts.put(scan_metadata_key(task_id, scan_id), json.dumps(metadata).encode(),
                            "application/json")
        self._store_result(task_id, result)
        final = self._tasks.get(task_id)
        tiles = final.scans[scan_id].progress if final else Progress()
        self._set_scan(task_id, scan_id, status=ScanStatus.SUCCEEDED, finished_at=utcnow(),
                       progress=tiles.model_copy(update={"step": "done", "percent": 100.0, "eta_s": 0.0}))
        log.info("scan analysed", extra={"task_id": task_id, "scan_id": scan_id,
                                         **{k: round(v, 3) for k, v in timings.items()}})

    def _write_artifacts(self, task_id: str, scan_id: str, opened: OpenedScan, result: ScanResult) -> dict[str, Any]:
        if self._artifact_writer is None:
            return {}
        try:
            return self._artifact_writer(task_id, scan_id, opened, result) or {}
        except Exception:  # artifacts are extras: the scan's result stands without them
            log.exception("artifacts failed", extra={"task_id": task_id, "scan_id": scan_id})
            return {}

    def _run_qc(self, task_id: str, scan_id: str,
                opened: OpenedScan) -> tuple[list[QcFinding], dict[str, Any] | None]:
        """The quality checks' failures and report (none when QC is off); a ScanError fails the scan."""
        if self._qc is None:
            return [], None
        self._set_scan(task_id, scan_id, progress=Progress(step="quality control", percent=3.0))
        outcome = self._qc(opened)
        findings = list(outcome.failures)
        if findings:
            log.warning("quality control failed: %s", ", ".join(f.code for f in findings),
                        extra={"task_id": task_id, "scan_id": scan_id})
        return findings, outcome.to_json()

    def _qc_failed(self, task_id: str, scan_id: str, findings: list[QcFinding], qc_json: dict[str, Any] | None) -> None:
        first = findings[0]
        self._store_result(task_id, qc_failure_result(scan_id, findings, self._qc_map, qc_json))
        self._set_scan(task_id, scan_id, status=ScanStatus.FAILED, error_code=first.code, error_message=first.message,
                       finished_at=utcnow(), progress=Progress(step="failed", percent=100.0))

    def _scan_failed(self, task_id: str, scan_id: str, code: str, message: str) -> None:
        log.warning("scan failed: %s", code, extra={"task_id": task_id, "scan_id": scan_id})
        self._store_result(task_id, failure_result(scan_id, code, message, self._qc_map.get(code)))
        self._set_scan(task_id, scan_id, status=ScanStatus.FAILED, error_code=code, error_message=message,
                       finished_at=utcnow(), progress=Progress(step="failed", percent=100.0))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:100] or "_"
