"""Load test of the local stack: N webhooks within T seconds -> all acknowledged, none lost, all finish.

    python bench/load_webhooks.py [--tasks 200] [--seconds 10] [--workers 2] [--finish-timeout 900] [--keep]

Starts `scanbridge serve` and a loopback platform (serving ../shared/fixtures/small.svs), sends the
webhooks from 20 client threads at a steady rate, then waits (bounded) until every task is terminal.
Prints one JSON object: acknowledgement percentiles, counts of tasks / downloads / results POSTs.
Only 127.0.0.1 is used; every loop is bounded. The load itself stays light, so that the stack under test
gets the cores: one kept HTTP client (a client per request costs ~30 ms of CPU), and the wait reads the
task listing once a second (`GET /tasks?company_id=load`, one page per 500 tasks) instead of asking for
each task. The run's folder (serve's data and logs) is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
TERMINAL = ("COMPLETED", "FAILED", "DELIVERY_FAILED", "CANCELLED")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--finish-timeout", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (serve's data and logs)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scanbridge-load-"))
    try:
        return run(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def finished(http: httpx.Client, url: str) -> dict[str, str]:
    """The load's terminal tasks and their statuses, from the listing (every page)."""
    done: dict[str, str] = {}
    cursor: str | None = None
    for _page in range(100):  # bounded: 500 tasks a page
        params: dict[str, str | int] = {"company_id": "load", "limit": 500, **({"cursor": cursor} if cursor else {})}
        page = http.get(f"{url}/tasks", params=params).json()
        done.update({t["task_id"]: t["status"] for t in page["tasks"] if t["status"] in TERMINAL})
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return done


def run(args: argparse.Namespace, tmp: Path) -> int:
    """The load against one `scanbridge serve` in `tmp`; prints the report."""
    with FakePlatform(files={"small": FIXTURE}) as platform, httpx.Client(timeout=30) as http:
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
                resp = http.post(f"{url}/webhook", json=body)
                return resp.status_code, (time.monotonic() - t0) * 1000

            with ThreadPoolExecutor(max_workers=20) as pool:
                answers = list(pool.map(send, range(args.tasks)))
            sent_s = time.monotonic() - start
            acks = sorted(ms for _, ms in answers)
            deadline = time.monotonic() + args.finish_timeout
            done = finished(http, url)
            while time.monotonic() < deadline and len(done) < args.tasks:
                time.sleep(1.0)
                done = finished(http, url)
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
