"""What the local stack's state journal (adapters/local/journal.py) costs on the acknowledgement path.

    python bench/state_journal.py [--puts 400] [--webhooks 400] [--rounds 2] [--json]

Two measures per SCANBRIDGE_LOCAL_STATE mode (memory, journal, journal-fsync), in alternating rounds:
`put_ms_*`: sequential conditional `create`s (the webhook's one write, ~2 kB task) from one client on a
moto server started as `scanbridge serve` starts it; `ack_ms_*`: `bench/api_bench.py --url` against a
real `scanbridge serve` in that mode (20 clients, bounded). Also the journal's size after the webhooks.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from scanbridge.adapters.aws.dynamodb import DynamoTaskStore
from scanbridge.adapters.aws.provision import provision
from scanbridge.config import Settings
from scanbridge.devtools.stack import ServeProcess
from scanbridge.domain.task import Task
from scanbridge.entrypoints.local_stack import MotoProcess

MODES = ("memory", "journal", "journal-fsync")


def puts(mode: str, n: int) -> dict[str, float]:
    """p50 / p90 of `n` sequential conditional creates on a moto server in `mode`."""
    with tempfile.TemporaryDirectory() as d:
        moto = MotoProcess(None if mode == "memory" else Path(d) / "state", fsync=mode == "journal-fsync")
        try:
            session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                            region_name="us-east-1")
            c = {name: session.client(name, endpoint_url=moto.url) for name in ("dynamodb", "s3", "kms")}
            provision(Settings(), c["dynamodb"], c["s3"], c["kms"])
            store = DynamoTaskStore(c["dynamodb"], Settings().table_name)
            times = []
            for i in range(n):
                task = Task(task_id=f"bench-{i}", extra={"pad": "x" * 1500})
                t0 = time.perf_counter()
                store.create(task)
                times.append((time.perf_counter() - t0) * 1000)
        finally:
            moto.stop()
    times.sort()
    return {"p50": round(statistics.median(times), 2), "p90": round(times[int(len(times) * 0.9)], 2)}


def acks(mode: str, n: int) -> dict[str, Any]:
    """api_bench through a real `scanbridge serve` in `mode`, plus the journal's size afterwards."""
    with tempfile.TemporaryDirectory() as d:
        serve = ServeProcess(Path(d), {"SCANBRIDGE_LOCAL_STATE": mode, "SCANBRIDGE_DATA_DIR": f"{d}/data",
                                       "SCANBRIDGE_MAX_WORKERS": "1"})
        try:
            out = subprocess.run([sys.executable, str(Path(__file__).with_name("api_bench.py")), "--url", serve.url,
                                  "--requests", str(n), "--clients", "20", "--imports", "1", "--json"],
                                 capture_output=True, text=True, timeout=600, check=True)
            report = json.loads(out.stdout)
            journal = sum(p.stat().st_size for p in Path(d, "data", "state").glob("journal-*.bin"))
        finally:
            serve.stop(signal.SIGINT)
    return {"p50": report.get("ack_p50_ms"), "p99": report.get("ack_p99_ms"), "journal_bytes": journal}


def main() -> None:
    """Run the rounds and print one line per measure (or one JSON object)."""
    p = argparse.ArgumentParser()
    p.add_argument("--puts", type=int, default=400)
    p.add_argument("--webhooks", type=int, default=400)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results: dict[str, list[Any]] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            results.setdefault(f"put_ms_{mode}", []).append(puts(mode, min(args.puts, 5000)))
            results.setdefault(f"ack_ms_{mode}", []).append(acks(mode, min(args.webhooks, 5000)))
            if not args.json:
                print(mode, results[f"put_ms_{mode}"][-1], results[f"ack_ms_{mode}"][-1], flush=True)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
