"""Fixed cost per task: tiny tasks through `scanbridge serve` with fresh workers and with warm spares, side by side.

    python bench/warm_workers.py [--slide ../shared/fixtures/small.svs] [--tasks 5] [--warm 0 1] [--settle 8] [--gap 1]

For each SCANBRIDGE_WARM_WORKERS value it starts a real `scanbridge serve` (moto, local launcher) with a
loopback platform serving the slide, waits `--settle` seconds (spares import the stack), then sends
`--tasks` webhooks one after the other, each timed from the webhook to the results POST. Prints one JSON
object: per setting the times (s), their median and max. Loopback only; every wait is bounded. Each
setting's folder (serve's data and logs) is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.devtools.stack import serve_subprocess

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "small.svs"


def run(slide: Path, warm: int, tasks: int, settle_s: float, timeout_s: float, gap_s: float) -> dict[str, Any]:
    """`tasks` sequential tiny tasks through one serve with SCANBRIDGE_WARM_WORKERS=warm."""
    tmp = Path(tempfile.mkdtemp(prefix=f"scanbridge-warm{warm}-"))
    try:
        return _run(tmp, slide, warm, tasks, settle_s, timeout_s, gap_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(tmp: Path, slide: Path, warm: int, tasks: int, settle_s: float, timeout_s: float,
         gap_s: float) -> dict[str, Any]:
    times: list[float] = []
    with FakePlatform(files={"slide": slide}) as platform, httpx.Client(timeout=30) as http:
        env = {"SCANBRIDGE_PLATFORM_URL": platform.base_url, "SCANBRIDGE_ALLOWED_SCAN_HOSTS": platform.netloc,
               "SCANBRIDGE_DATA_DIR": str(tmp / "data"), "SCANBRIDGE_WARM_WORKERS": str(warm),
               "SCANBRIDGE_LOG_LEVEL": "INFO"}
        with serve_subprocess(tmp, env, stop_timeout_s=30) as url:
            time.sleep(settle_s)
            for i in range(tasks):
                body = {"task_id": f"warm{warm}-{i}", "company_id": "bench", "jwt_token": "bench.jwt.token",
                        "scans": {"s1": platform.url_for("slide")}}
                t0 = time.monotonic()
                http.post(f"{url}/webhook", json=body).raise_for_status()
                platform.wait_for_posts(i + 1, timeout_s=timeout_s)
                times.append(round(time.monotonic() - t0, 2))
                time.sleep(gap_s)  # between two webhooks (a taken spare's replacement warms up meanwhile)
    return {"task_s": times, "median_s": round(statistics.median(times), 2), "max_s": max(times)}


def main(argv: list[str] | None = None) -> int:
    """Run every setting and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", type=Path, default=FIXTURE)
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--warm", type=int, nargs="+", default=[0, 1])
    p.add_argument("--settle", type=float, default=8.0, help="seconds between serve's start and the first webhook")
    p.add_argument("--gap", type=float, default=1.0, help="seconds between a results POST and the next webhook")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each results POST")
    args = p.parse_args(argv)
    rows = {f"warm_workers={w}": run(args.slide, w, args.tasks, args.settle, args.timeout, args.gap) for w in args.warm}
    print(json.dumps({"slide": str(args.slide), **rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
