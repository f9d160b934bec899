"""What the service adds over the bench: one task per model through `scanbridge serve`, against `pipeline_s`.

    python bench/service_overhead.py [--slide PATH] [--side 10000] [--models tissue nuclei] [--json]

For each model it runs `scanbridge dev bench SLIDE --model M --json --no-naive` (a fresh process) for
`pipeline_s`, then sends one webhook for the same slide to a real `scanbridge serve` (moto, local
launcher, one worker subprocess per task) with a loopback platform serving the slide, and times the
webhook -> results POST. The worker's own phase timings (`scan analysed`: download_s, qc_s, analyse_s,
artifacts_s) come from its log under the stack's data dir. Prints one JSON object. Loopback only; every
wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.devtools.stack import serve_subprocess


def make_slide(folder: Path, side: int) -> Path:
    """A synthetic 25 %-tissue Aperio slide of side x side pixels (0.25 µm/px)."""
    path = folder / f"slide_{side}.svs"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "scanbridge.entrypoints.cli", "dev", "make-slide", str(path),
                        "--width", str(side), "--height", str(side), "--tissue-fraction", "0.25", "--seed", "3"],
                       check=True, stdout=sys.stderr)
    return path


def bench_pipeline(slide: Path, model: str) -> dict[str, Any]:
    """`scanbridge dev bench --json --no-naive` in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "scanbridge.entrypoints.cli", "dev", "bench", str(slide),
                          "--model", model, "--json", "--no-naive", "--cpu"],
                         check=True, capture_output=True, text=True, timeout=1800)
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def worker_phases(data_dir: Path, task_id: str) -> dict[str, Any]:
    """The worker's `scan analysed` record for the task (its phase timings), from the local job logs."""
    for log in sorted((data_dir / "logs").glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if task_id in line and "scan analysed" in line:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                return {k: rec[k] for k in ("download_s", "qc_s", "analyse_s", "artifacts_s") if k in rec}
    return {}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", type=Path, default=None, help="an existing slide (default: generate one)")
    p.add_argument("--side", type=int, default=10000, help="side of the generated slide in pixels")
    p.add_argument("--models", nargs="+", default=["tissue", "nuclei"])
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each result POST")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="scanbridge-overhead-"))
    slide = args.slide or make_slide(tmp, args.side)
    benches = {m: bench_pipeline(slide, m) for m in args.models}
    rows: dict[str, Any] = {}
    data_dir = tmp / "data"
    with FakePlatform(files={"slide": slide}) as platform:
        env = {"SCANBRIDGE_PLATFORM_URL": platform.base_url, "SCANBRIDGE_ALLOWED_SCAN_HOSTS": platform.netloc,
               "SCANBRIDGE_DATA_DIR": str(data_dir), "SCANBRIDGE_LOG_LEVEL": "INFO"}
        with serve_subprocess(tmp, env, stop_timeout_s=30) as url:
            for i, model in enumerate(args.models):
                task_id = f"overhead-{model}-{i}"
                body = {"task_id": task_id, "company_id": "bench", "jwt_token": "bench.jwt.token",
                        "model_id": model, "scans": {"s1": platform.url_for("slide")}}
                t0 = time.monotonic()
                resp = httpx.post(f"{url}/webhook", json=body, timeout=30)
                resp.raise_for_status()
                posts = platform.wait_for_posts(i + 1, timeout_s=args.timeout)
                task_s = time.monotonic() - t0
                status = None
                for _ in range(50):  # the record turns COMPLETED just after the POST's answer; bounded wait
                    status = httpx.get(f"{url}/tasks/{task_id}", timeout=10).json().get("status")
                    if status in ("COMPLETED", "FAILED", "DELIVERY_FAILED", "CANCELLED"):
                        break
                    time.sleep(0.1)
                phases = worker_phases(data_dir, task_id)
                pipeline_s = float(benches[model]["pipeline_s"])
                rows[model] = {"task_s": round(task_s, 2), "bench_pipeline_s": pipeline_s,
                               "overhead_s": round(task_s - pipeline_s - float(phases.get("download_s", 0.0)), 2),
                               "worker_phases_s": phases, "status": status, "posts": len(posts),
                               "tiles": benches[model]["tiles_processed"]}
    print(json.dumps({"slide": str(slide), "models": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
