"""The worker: `scanbridge worker --task-id ID` (Batch container or local subprocess)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Collection

from scanbridge.bootstrap import Container, bootstrap, build_processing
from scanbridge.domain.errors import DeviceUnavailableError
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.task import Task
from scanbridge.heap import freeze_heap, gc_paused
from scanbridge.logs import setup_logging


def outcome(task: Task, only_scans: Collection[str] | None = None) -> str:
    """What the worker's run came to, in words: its scans' ends and what happens to the task next."""
    if task.status == TaskStatus.CANCELLED:
        return "the task was cancelled; nothing more is analysed"
    if task.status.is_terminal or task.status == TaskStatus.DELIVERING:
        return f"nothing to do, the task is already {task.status}"
    if task.error_code:
        return f"the task failed before any scan ({task.error_code}: {task.error_message}); results delivery next"
    mine = [s for sid, s in task.scans.items() if only_scans is None or sid in only_scans]
    ok = sum(s.status == ScanStatus.SUCCEEDED for s in mine)
    codes = Counter(s.error_code or "?" for s in mine if s.status == ScanStatus.FAILED)
    text = f"{ok} of {len(mine)} scan(s) analysed"
    if codes:
        text += f", {sum(codes.values())} failed ({', '.join(f'{c} x{n}' if n > 1 else c for c, n in codes.items())})"
    if any(s.status not in (ScanStatus.SUCCEEDED, ScanStatus.FAILED) for s in task.scans.values()):
        return text + "; other scans of the task are still open"
    return text + "; results delivery next"


def main(argv: list[str] | None = None) -> int:
    """Process one task's scans; exit 0 when every scan has a stored result (success or coded failure),
    1 when the device it was told to use does not work (DEVICE_UNAVAILABLE: every scan failed with that
    code before any download, so the results step tells the platform; the Batch job ends FAILED).
    `--warm`: import the stack first, then take the task from stdin (`warm_main`)."""
    parser = argparse.ArgumentParser(prog="scanbridge worker")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--task-id")
    group.add_argument("--warm", action="store_true",
                       help="local warm pool: import everything, then read one JSON line {task_id, log} from stdin")
    parser.add_argument("--title-room", default="", help=argparse.SUPPRESS)  # --warm: room for set_cmdline
    parser.add_argument("--scan-index", type=int, default=None,
                        help="process only this scan (sorted by id); Batch array children get AWS_BATCH_JOB_ARRAY_INDEX")
    args = parser.parse_args(argv)
    if args.warm:
        return warm_main()
    started = time.monotonic()
    with gc_paused():  # the start-up's imports (scanbridge/heap.py); run_task builds the processing again (~0.1 ms)
        container = bootstrap()
        build_processing(container)
    freeze_heap()
    return run_task(args.task_id, args.scan_index, container, started)


def warm_main() -> int:
    """The local launcher's warm-worker server (adapters/local/forkserver.py): build the container and
    import the readers, onnxruntime and the artifact writers once, then fork one process per task read
    from stdin (`{"task_id": ..., "log": PATH}`). Nothing here starts a thread or a connection: every
    forked worker starts from the same clean state. Returns at EOF once its workers have ended."""
    from scanbridge.adapters.local.forkserver import serve_forks

    with gc_paused():  # the start-up's imports (scanbridge/heap.py)
        container = bootstrap()
        build_processing(container)  # imports the readers, numpy and onnxruntime (the worker's start-up cost)
        prepare()
    freeze_heap()  # each fork's collections walk only what its task makes

    def run(order: dict[str, object]) -> int:
        return run_task(str(order["task_id"]), None, container, time.monotonic())

    return serve_forks(run)


def prepare() -> None:
    """What a first scan would pay in the warm server instead (best effort, no threads): the artifact
    modules' lazy imports, highdicom's DICOM standard tables (~1.2 s together here), the built-in
    models' ONNX bytes (~30 ms a task for `tissue`: onnx's checker) and the synthetic DICOM source's
    blank 4096² frame (96 MiB to make, a few hundred bytes kept)."""
    try:
        import highdicom
        from highdicom import _standard_utils

        import scanbridge.exports.crops
        import scanbridge.exports.dicom
        import scanbridge.exports.overlay
        import scanbridge.exports.raster
        import scanbridge.imaging.readers
        import scanbridge.services.artifacts  # noqa: F401
        from scanbridge.exports.dicom import SOURCE_TILE, blank_frame
        from scanbridge.inference.zoo import builtin_model_bytes, builtin_names

        for name in builtin_names():
            builtin_model_bytes(name)
        blank_frame(SOURCE_TILE, SOURCE_TILE)
        for table in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
            getattr(_standard_utils, table, lambda: None)()
        del highdicom
    except Exception as exc:  # noqa: BLE001 - only a warm-up: the task imports the same for real
        print(f"warm-up skipped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def run_task(task_id: str, scan_index: int | None, container: Container, started: float) -> int:
    """The worker's run of `task_id` with a built container (`main`'s exit codes)."""
    setup_logging("scanbridge-worker", container.settings.log_level, container.settings.log_format)
    log = logging.getLogger("scanbridge.worker")
    log.info("worker started", extra={"task_id": task_id})
    from scanbridge.services.reaper import Heartbeat

    with Heartbeat(container.tasks, task_id, container.settings.heartbeat_interval_s):
        index = scan_index
        if index is None and os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "").isdigit():
            index = int(os.environ["AWS_BATCH_JOB_ARRAY_INDEX"])
        only = None
        if index is not None:
            stored = container.tasks.get(task_id)
            ids = sorted(stored.scans) if stored else []
            only = [ids[index]] if 0 <= index < len(ids) else []
        task = build_processing(container).run(task_id, only_scans=only)
    log.info("worker finished task %s: %s", task.task_id, outcome(task, only),
             extra={"task_id": task.task_id, "status": str(task.status),
                    "worker_s": round(time.monotonic() - started, 3)})
    if task.error_code == DeviceUnavailableError.code:
        log.error("worker could not use its device: %s", task.error_message, extra={"task_id": task.task_id})
        print(f"scanbridge worker: {task.error_code}: {task.error_message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
