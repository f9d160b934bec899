"""The worker's artifact step alone, on one kept object result: time, peak Python allocations and peak RSS.

    python bench/artifact_step.py SLIDE [--model nuclei] [--cache DIR] [--reps 2] [--compare-src SRC] [--warm] [--json]

The first run analyses SLIDE once (a fresh process, `analyze_scan` as the worker runs it) and keeps the
result in `--cache` (default: beside the slide): its head (`scanId`, `results`) and its features as the
spool holds them (JSON text, one per line). Each measurement is then a fresh process that opens the
slide (overview and tissue mask made before the clock starts, as the worker has them by then), loads the
features into a FeatureSpool, and runs `ScanArtifactWriter` into a MemoryArtifactStore:

- `streamed`: the result as the worker has it (a StreamedScanResult over the spool);
- `in_memory`: the same result with its FeatureCollection built as dicts inside the step (what the
  artifact step did before it read the spool);
- with `--compare-src SRC` (another checkout's `src`), also `streamed@SRC`: the streamed result through
  that checkout's code (e.g. the commit before), in the same run.

With `--warm` each child first runs the warm worker server's `prepare()` (imports, highdicom's tables,
the synthetic source's blank frame), as a task forked from it has; without, it is a worker's first scan.

The variants alternate, `--reps` rounds. Each child runs the step twice: once for its wall and CPU time
(the process's, all threads) and peak RSS (VmHWM reset just before), once under tracemalloc for its peak of Python allocations (numpy's
included; Pillow's and highdicom's C buffers are not). Prints one JSON object (`--json`) or a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from importlib import import_module
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def prepare(slide: Path, model_name: str, cache: Path) -> dict[str, Any]:
    """Analyse the slide once and keep its result (head + features) in `cache`; return the head."""
    from scanbridge.domain.feature_spool import StreamedScanResult
    from scanbridge.imaging.scan import OpenedScan
    from scanbridge.inference.analyze import analyze_scan
    from scanbridge.inference.runner import ModelLoader

    head_path, features_path = cache / "head.json", cache / "features.jsonl"
    if head_path.exists() and features_path.exists():
        head: dict[str, Any] = json.loads(head_path.read_text())
        return head
    cache.mkdir(parents=True, exist_ok=True)
    model = ModelLoader(prefer_gpu=False).load(model_name)
    with OpenedScan.open([slide]) as scan:
        result = analyze_scan(slide.stem, scan, model).result
    if not isinstance(result, StreamedScanResult) or result.spool is None:
        raise SystemExit(f"{model_name} did not give a streamed object result")
    with features_path.open("w") as fh:
        for feature in result.spool:
            fh.write(json.dumps(feature) + "\n")
    head = {"scanId": result.scanId, "results": result.results, "features": len(result.spool)}
    head_path.write_text(json.dumps(head))
    return head


def measure(slide: Path, cache: Path, variant: str, warm: bool = False) -> dict[str, Any]:
    """One variant of the artifact step in this process (run by `main` in a fresh child)."""
    if warm:  # what a task forked from the warm worker server has made before it starts
        from scanbridge.entrypoints.worker import prepare

        prepare()
    from scanbridge.adapters.local.memory import MemoryArtifactStore
    from scanbridge.devtools.bench import PeakRss
    from scanbridge.domain.feature_spool import FeatureSpool, StreamedScanResult
    from scanbridge.domain.results import ScanResult
    from scanbridge.imaging.scan import OpenedScan
    from scanbridge.services.artifacts import ScanArtifactWriter

    head = json.loads((cache / "head.json").read_text())
    spool = FeatureSpool()
    with (cache / "features.jsonl").open() as fh:
        for line in fh:
            spool.append(json.loads(line))
    streamed = StreamedScanResult.from_spool(head["scanId"], head["results"], spool)

    def step() -> tuple[MemoryArtifactStore, int]:
        result: ScanResult = streamed
        if variant == "in_memory":  # the FeatureCollection as dicts, built in the step as it was before
            result = ScanResult(scanId=head["scanId"], results=head["results"],
                                geojson={"type": "FeatureCollection", "features": list(spool)})
        store = MemoryArtifactStore()
        ScanArtifactWriter(store)("bench", head["scanId"], scan, result)
        return store, sum(len(store.get(k) or b"") for k in store.list(""))

    with OpenedScan.open([slide]) as scan:
        scan.thumbnail(1024)  # the overview and the tissue mask, as the worker has them before the step
        _ = scan.tissue
        rss = PeakRss()
        rss.reset()
        start_rss = rss.start or 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        store, total = step()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak_rss = rss.mb()
        files = sorted(k.rsplit("/", 1)[-1] for k in store.list(""))
        del store
        if not warm:  # as the first run: a first scan makes the synthetic source's blank frame too
            getattr(getattr(import_module("scanbridge.exports.dicom"), "blank_frame", None), "cache_clear", lambda: None)()
        tracemalloc.start()
        step()
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {"variant": variant, "features": len(spool), "step_s": round(wall, 3), "step_cpu_s": round(cpu, 3),
            "peak_rss_mb": round(peak_rss, 1), "start_rss_mb": round(start_rss, 1),
            "step_rss_mb": round(peak_rss - start_rss, 1), "traced_peak_mb": round(traced_peak / 2**20, 2),
            "artifact_bytes": total, "files": files}


def _child(slide: Path, cache: Path, variant: str, src: str | None, warm: bool) -> dict[str, Any]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run([sys.executable, str(HERE / "artifact_step.py"), str(slide), "--cache", str(cache),
                          "--child", variant, *(["--warm"] if warm else [])], check=False, capture_output=True, text=True, env=env,
                         timeout=1800)
    if out.returncode:
        raise SystemExit(f"{variant} ({src or 'this checkout'}) failed:\n{out.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--cache", type=Path, default=None, help="where the kept result lives")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--compare-src", default=None, help="another checkout's src to run `streamed` through")
    parser.add_argument("--warm", action="store_true",
                        help="each child first runs the warm worker server's prepare() (as a forked task has)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cache = args.cache or args.slide.with_suffix(f".{args.model}-result")
    if args.child:
        print(json.dumps(measure(args.slide, cache, args.child, args.warm)))
        return 0
    head = prepare(args.slide, args.model, cache)
    variants: list[tuple[str, str | None]] = [("streamed", None), ("in_memory", None)]
    if args.compare_src:
        variants.append((f"streamed@{args.compare_src}", args.compare_src))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    for _ in range(max(1, args.reps)):
        for name, src in variants:
            runs[name].append(_child(args.slide, cache, name.split("@")[0], src, args.warm))
    summary = {name: {key: statistics.median(r[key] for r in reps)
                      for key in ("step_s", "step_cpu_s", "step_rss_mb", "peak_rss_mb", "traced_peak_mb")}
               for name, reps in runs.items()}
    report = {"slide": str(args.slide), "model": args.model, "features": head["features"], "warm": args.warm,
              "median": summary, "runs": runs}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.slide.name}, {args.model}: {head['features']} features")
    for name, row in summary.items():
        print(f"  {name:40} step {row['step_s']:7.2f} s (CPU {row['step_cpu_s']:6.2f} s)  RSS +{row['step_rss_mb']:7.1f} MiB "
              f"(peak {row['peak_rss_mb']:7.1f})  traced peak {row['traced_peak_mb']:7.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
