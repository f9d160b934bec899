"""The JobLauncher lifecycle of a launcher that runs no process on this host (AWS Batch, the in-memory one)."""

from __future__ import annotations


class NoLocalProcesses:
    """Lifecycle answers for jobs that do not run here: nothing to start, clean, stop or kill; no queue or
    liveness known (the queries then count QUEUED tasks; the worker's heartbeats are in the task; the reaper
    fails a silent task itself)."""

    def warm_up(self, count: int) -> int:
        """Nothing to start."""
        return 0

    def clean_work_except(self, keep: set[str]) -> int:
        """Nothing downloaded on this host."""
        return 0

    def shutdown(self) -> list[str]:
        """Nothing of this process to stop (Batch jobs outlive it)."""
        return []

    def queue_position(self, job_id: str) -> int | None:
        """Not known here."""
        return None

    def queue_eta_s(self, job_id: str) -> float | None:
        """Not known here."""
        return None

    def last_seen(self, job_id: str) -> float | None:
        """Not known here."""
        return None

    def is_alive(self, job_id: str) -> bool:
        """Not known here: False (on AWS the Batch state-change event reports the job's end)."""
        return False

    def kill(self, job_id: str, reason: str, *, retry: bool) -> bool:
        """No process of this host to kill: False."""
        return False
