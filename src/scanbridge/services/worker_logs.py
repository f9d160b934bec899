"""The worker's own log lines of one task, read from the local worker log files.

Local mode only, and deliberately not a port: the local launcher writes each worker's stdout/stderr
(JSON lines, one per record, `task_id` as a key) to `{data_dir}/logs/{job_id}.log`; this reader filters
those lines by task. On AWS the worker's lines go to CloudWatch Logs (the Batch job's log stream), and
this reader says so instead of answering with lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scanbridge.domain.task import Task

#: files scanned when the task's own job log is missing (newest first)
MAX_FILES = 200
MAX_LINE_CHARS = 20_000


def read_task_logs(task: Task, log_dir: Path, *, launcher: str, limit: int = 1000,
                   level: str | None = None) -> dict[str, Any]:
    """The task's worker log lines (oldest first, at most `limit`, the newest kept) and where they came from."""
    if launcher != "local":
        return {"task_id": task.task_id, "source": "cloudwatch", "lines": [], "truncated": False,
                "note": "on AWS the worker logs to CloudWatch Logs (the Batch job's stream, "
                        f"job id {task.job_id or 'unknown'}); this API does not read CloudWatch"}
    files = _candidate_files(task, log_dir)
    lines: list[dict[str, Any]] = []
    for path in files:
        lines.extend(_matching(path, task.task_id, level))
    lines.sort(key=lambda r: str(r.get("timestamp", "")))
    truncated = len(lines) > limit
    return {"task_id": task.task_id, "source": "local-files", "files": [p.name for p in files],
            "lines": lines[-limit:] if truncated else lines, "truncated": truncated}


def _candidate_files(task: Task, log_dir: Path) -> list[Path]:
    """The task's own job log when it exists, else the newest logs of the folder."""
    if not log_dir.is_dir():
        return []
    if task.job_id:
        own = log_dir / f"{Path(task.job_id).name}.log"
        if own.is_file():
            return [own]
    logs = sorted(log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    return logs[:MAX_FILES]


def _matching(path: Path, task_id: str, level: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                raw = raw.strip()
                if not raw.startswith("{") or len(raw) > MAX_LINE_CHARS:
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(record, dict) or record.get("task_id") != task_id:
                    continue
                if level and str(record.get("level", "")).upper() != level.upper():
                    continue
                out.append(record)
    except OSError:
        return []
    return out
