"""Slide benchmark at two sizes: generate synthetic slides, run `scanbridge dev bench` on each, check targets.

    python bench/slide_bench.py [--out /tmp/scanbridge-bench] [--sizes 10000 20000] [--tissue 0.25]
                                [--model bench-conv] [--keep]

Each slide is a synthetic Aperio SVS (`scanbridge.devtools.synth.make_slide`, memory-flat, known tissue
fraction); each bench runs in a fresh `scanbridge dev bench ... --json` process so its peak RSS is its
own. Prints one JSON object: every report, and the issue #9 targets with pass/fail:

- pipeline_s <= 1.10 x (decode_only_s + model_only_s)                       (every size)
- naive_s / pipeline_s >= 3 on a slide with <= 30 % tissue                  (every size)
- tiles_processed / tiles_total within 10 % (relative) of the tissue share   (largest size; reported for all)
- peak RSS grows < 10 % from the smallest to the largest slide
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def make(out: Path, side: int, tissue: float, seed: int) -> tuple[Path, Path]:
    """Generate (or reuse) a side x side slide and its truth JSON."""
    slide, truth = out / f"slide_{side}.svs", out / f"slide_{side}.truth.json"
    if not (slide.exists() and truth.exists()):
        subprocess.run([sys.executable, "-m", "scanbridge.entrypoints.cli", "dev", "make-slide", str(slide),
                        "--width", str(side), "--height", str(side), "--tissue-fraction", str(tissue),
                        "--seed", str(seed), "--truth-json", str(truth)], check=True, stdout=sys.stderr)
    return slide, truth


def run_bench(slide: Path, truth: Path, model: str, extra: list[str]) -> dict[str, Any]:
    """One `scanbridge dev bench --json` in a fresh process."""
    cmd = [sys.executable, "-m", "scanbridge.entrypoints.cli", "dev", "bench", str(slide), "--model", model,
           "--json", "--truth", str(truth), *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=3600)
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def targets(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets over the reports (smallest slide first)."""
    checks: dict[str, Any] = {}
    for r in reports:
        mp = f"{r['megapixels']:.0f}MP"
        checks[f"pipeline_vs_sum@{mp}"] = {"value": r["pipeline_vs_sum"], "target": "<= 1.10",
                                           "ok": r["pipeline_vs_sum"] <= 1.10}
        checks[f"naive_vs_pipeline@{mp}"] = {"value": r["naive_vs_pipeline"], "target": ">= 3",
                                             "ok": (r["naive_vs_pipeline"] or 0) >= 3}
        expected = r["tissue_fraction"] * r["tiles_total"]
        rel = (r["tiles_processed"] - expected) / max(expected, 1e-9)
        checks[f"tiles_vs_tissue@{mp}"] = {"value": round(rel, 3), "target": "|rel| <= 0.10",
                                           "share": r["tile_share"], "tissue": round(r["tissue_fraction"], 4),
                                           "ok": abs(rel) <= 0.10}
    small, large = reports[0], reports[-1]
    growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1.0
    checks["peak_rss_growth"] = {"value": round(growth, 3), "target": "< 0.10", "ok": growth < 0.10,
                                 "mb": [small["peak_rss_mb"], large["peak_rss_mb"]]}
    return checks


def main(argv: list[str] | None = None) -> int:
    """Generate, bench, check; print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/scanbridge-bench"))
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000], help="slide sides in pixels")
    p.add_argument("--tissue", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--model", default="bench-conv")
    p.add_argument("--keep", action="store_true", help="keep the generated slides")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: passed to `scanbridge dev bench`")
    args = p.parse_args(argv)
    extra = [a for a in args.bench_args if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    reports = []
    try:
        for side in sorted(args.sizes):
            t0 = time.perf_counter()
            slide, truth = make(args.out, side, args.tissue, args.seed)
            print(f"generated {slide} in {time.perf_counter() - t0:.1f}s; benchmarking ...", file=sys.stderr)
            reports.append(run_bench(slide, truth, args.model, extra))
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps({"reports": reports, "targets": targets(reports)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
