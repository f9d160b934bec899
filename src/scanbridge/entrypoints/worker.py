"""The worker: `scanbridge worker --task-id ID` (Batch container or local subprocess)."""

from __future__ import annotations

import argparse
import logging
import sys

from scanbridge.bootstrap import bootstrap, build_processing
from scanbridge.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Process one task's scans; exit 0 when every scan has a stored result (success or coded failure)."""
    parser = argparse.ArgumentParser(prog="scanbridge worker")
    parser.add_argument("--task-id", required=True)
    args = parser.parse_args(argv)
    container = bootstrap()
    setup_logging("scanbridge-worker", container.settings.log_level)
    from scanbridge.services.reaper import Heartbeat

    with Heartbeat(container.tasks, args.task_id, container.settings.heartbeat_interval_s):
        task = build_processing(container).run(args.task_id)
    logging.getLogger("scanbridge.worker").info("worker finished task %s: %s", task.task_id, task.status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
