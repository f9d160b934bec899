#!/usr/bin/env bash
# Every benchmark of issue #9: slides at 100 MP and 400 MP (25 % tissue), then the API.
# Usage: bench/run_all.sh [OUT_DIR]     (results land in OUT_DIR, default /tmp/scanbridge-bench-results)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-/tmp/scanbridge-bench-results}"
mkdir -p "$out"
python "$here/slide_bench.py" --out "$out/slides" --sizes 10000 20000 --tissue 0.25 --keep > "$out/slides.json"
python "$here/api_bench.py" --clients 20 --requests 2000 --json > "$out/api_closed_loop.json"
python "$here/api_bench.py" --clients 20 --requests 2000 --rate 200 --imports 1 --json > "$out/api_200rps.json"
python - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
slides = json.loads((out / "slides.json").read_text())
for r in slides["reports"]:
    print(f"{r['megapixels']:>5.0f} MP  decode {r['decode_only_s']:.2f}s  model {r['model_only_s']:.2f}s  "
          f"pipeline {r['pipeline_s']:.2f}s  naive {r['naive_s']:.2f}s  tiles {r['tiles_processed']}/{r['tiles_total']}  "
          f"peak RSS {r['peak_rss_mb']:.0f} MiB  ({r['provider']})")
for name, check in slides["targets"].items():
    print(f"  {'ok  ' if check['ok'] else 'MISS'} {name}: {check['value']} (target {check['target']})")
for name in ("api_closed_loop", "api_200rps"):
    a = json.loads((out / f"{name}.json").read_text())
    print(f"{name}: ack p50 {a['ack_p50_ms']} ms  p99 {a['ack_p99_ms']} ms  ({a['requests']} webhooks, "
          f"{a['clients']} clients)  import {a['import_ms_best']} ms best / {a['import_ms_median']} median")
PY
