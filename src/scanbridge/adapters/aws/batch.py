"""JobLauncher on AWS Batch: the job gets the task_id and nothing secret."""

from __future__ import annotations

import re
from typing import Any

from scanbridge.adapters.no_local_processes import NoLocalProcesses


def job_name(task_id: str) -> str:
    """A Batch-legal job name (letters, digits, - and _; 128 chars) for a task."""
    return ("scanbridge-" + re.sub(r"[^A-Za-z0-9_-]", "_", task_id))[:128]



class BatchJobLauncher(NoLocalProcesses):
    """SubmitJob on the GPU queue with `task_id` as the only parameter.

    Batch owns its workers: the lifecycle calls are no-ops, and what it knows of a job (queue, liveness)
    reaches the bridge through its state-change events, not through this launcher.
    """

    def __init__(self, client: Any, job_queue: str, job_definition: str) -> None:
        self._batch = client
        self._queue = job_queue
        self._definition = job_definition

    def submit(self, task_id: str, scans: int = 1, *, job_id: str | None = None) -> str:
        """Submit the worker job (an array job, one child per scan, when there are several); returns its id.

        Batch names its jobs: a `job_id` proposed by the caller is not used.
        """
        args: dict[str, Any] = {"jobName": job_name(task_id), "jobQueue": self._queue,
                                "jobDefinition": self._definition, "parameters": {"task_id": task_id}}
        if scans > 1:
            args["arrayProperties"] = {"size": min(scans, 10_000)}
        out = self._batch.submit_job(**args)
        return str(out["jobId"])

    def cancel(self, job_id: str, reason: str) -> None:
        """Terminate the job (works in every state)."""
        self._batch.terminate_job(jobId=job_id, reason=reason[:255])
