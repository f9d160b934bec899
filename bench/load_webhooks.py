"""Load test of the local stack: N webhooks within T seconds -> all acknowledged, none lost, all finish.

    python bench/load_webhooks.py [--tasks 200] [--seconds 10] [--workers 2] [--finish-timeout 900]

Starts `scanbridge serve` and a loopback platform (serving ../shared/fixtures/small.svs), sends the
webhooks from 20 client threads at a steady rate, then waits (bounded) until every task is terminal.
Prints one JSON object: acknowledgement percentiles, counts of tasks / downloads / results POSTs.
Only 127.0.0.1 is used; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.devtools.stack import serve_subprocess

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "small.svs"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--finish-timeout", type=float, default=900.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scanbridge-load-"))
    with FakePlatform(files={"small": FIXTURE}) as platform:
        env = {"SCANBRIDGE_PLATFORM_URL": platform.base_url, "SCANBRIDGE_ALLOWED_SCAN_HOSTS": platform.netloc,
               "SCANBRIDGE_DATA_DIR": str(tmp / "data"), "SCANBRIDGE_MAX_WORKERS": str(args.workers),
               "SCANBRIDGE_LOG_LEVEL": "WARNING"}
        with serve_subprocess(tmp, env, stop_timeout_s=30) as url:
            interval = args.seconds / args.tasks
            start = time.monotonic()

            def send(i: int) -> tuple[int, float]:
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                body = {"task_id": f"load-{i}", "company_id": "load", "jwt_token": "load.test.token",
                        "scans": {"s": platform.url_for("small")}}
                t0 = time.monotonic()
                resp = httpx.post(f"{url}/webhook", json=body, timeout=30)
                return resp.status_code, (time.monotonic() - t0) * 1000

            with ThreadPoolExecutor(max_workers=20) as pool:
                answers = list(pool.map(send, range(args.tasks)))
            sent_s = time.monotonic() - start
            acks = sorted(ms for _, ms in answers)
            deadline = time.monotonic() + args.finish_timeout
            done: dict[str, str] = {}
            while time.monotonic() < deadline and len(done) < args.tasks:
                for i in range(args.tasks):
                    tid = f"load-{i}"
                    if tid in done:
                        continue
                    status = httpx.get(f"{url}/tasks/{tid}", timeout=10).json().get("status")
                    if status in ("COMPLETED", "FAILED", "DELIVERY_FAILED", "CANCELLED"):
                        done[tid] = status
                time.sleep(1.0)
            finished_s = time.monotonic() - start
        posted = {p.task_id for p in platform.posts}
        print(json.dumps({
            "tasks": args.tasks, "sent_in_s": round(sent_s, 2),
            "acknowledged_202": sum(1 for code, _ in answers if code == 202),
            "ack_p50_ms": round(statistics.median(acks), 1), "ack_p99_ms": round(acks[int(0.99 * (len(acks) - 1))], 1),
            "finished": len(done), "completed": sum(1 for s in done.values() if s == "COMPLETED"),
            "results_posts": len(platform.posts), "distinct_tasks_posted": len(posted),
            "downloads": len(platform.downloads), "all_finished_in_s": round(finished_s, 1),
            "workers": args.workers,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
