"""The worker's last log line says what its run came to and what happens next, not a bare status."""

from __future__ import annotations

from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.task import ScanState, Task
from scanbridge.entrypoints.worker import outcome


def _task(status: TaskStatus = TaskStatus.RUNNING, **scans: tuple[ScanStatus, str | None]) -> Task:
    return Task(task_id="t1", status=status, scans={
        sid: ScanState(scan_id=sid, urls=["https://x"], status=st, error_code=code) for sid, (st, code) in scans.items()})


def test_a_finished_run_counts_its_scans_and_names_the_next_step() -> None:
    # GIVEN a task whose three scans ended: two analysed, one corrupt
    task = _task(a=(ScanStatus.SUCCEEDED, None), b=(ScanStatus.SUCCEEDED, None), c=(ScanStatus.FAILED, "SCAN_CORRUPT"))
    # WHEN described / THEN the counts, the failure's code and the delivery step come next (not "RUNNING")
    assert outcome(task) == "2 of 3 scan(s) analysed, 1 failed (SCAN_CORRUPT); results delivery next"


def test_an_array_child_says_other_scans_are_still_open() -> None:
    # GIVEN a Batch array child that ran scan b while a is still running elsewhere
    task = _task(a=(ScanStatus.RUNNING, None), b=(ScanStatus.FAILED, "SCAN_TOO_LARGE"))
    # WHEN described for its own scan / THEN its own count, and that the task is not done
    assert outcome(task, ["b"]) == "0 of 1 scan(s) analysed, 1 failed (SCAN_TOO_LARGE); other scans of the task are still open"


def test_a_task_failed_before_any_scan_and_one_already_over() -> None:
    # GIVEN a task failed as a whole before any download, and one already delivered / cancelled
    failed = _task(a=(ScanStatus.FAILED, "NO_PLATFORM_CREDENTIALS")).model_copy(
        update={"error_code": "NO_PLATFORM_CREDENTIALS", "error_message": "no key"})
    # THEN each says so in words
    assert outcome(failed).startswith("the task failed before any scan (NO_PLATFORM_CREDENTIALS: no key)")
    assert outcome(_task(TaskStatus.COMPLETED)) == "nothing to do, the task is already COMPLETED"
    assert outcome(_task(TaskStatus.CANCELLED)).startswith("the task was cancelled")
