"""Peak RSS of `analyze_scan` in fresh processes, as the worker runs it, on a small and a large slide.

    python bench/peak_rss.py SMALL LARGE [--models nuclei ihc-positivity tissue] [--runs 3] [--compare-src SRC] [--json]

Each run is a fresh process (`ModelLoader(prefer_gpu=False)`, glibc tuned as the worker's, `OpenedScan`,
`analyze_scan` with the default reader threads) that samples `/proc/self/status` and glibc's `mallinfo2`
every 10 ms and reports VmHWM, with the sample at the peak: its phase (`tiles`: `run_objects`;
`result`: `objects_result`), the heaps' in-use and free bytes, the mapped blocks (onnxruntime's arena and
every block of 1 MiB or more: the tile outputs in flight) and the reader's tile cache. The two slides and,
with `--compare-src SRC` (another checkout's `src`), the two code trees alternate run by run, so that the
machine's load falls on both alike. Prints, per model and tree, the peaks, the growth of the medians from
the small slide to the large one and the worst pairing (the small slide's lowest against the large one's
highest); the figures in docs/performance.md ("Flat memory for object models") come from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def child(slide: Path, model_name: str) -> dict[str, Any]:
    """One run in this (fresh) process."""
    import ctypes
    import threading
    import time

    from scanbridge.imaging.scan import OpenedScan
    from scanbridge.inference import analyze, objects
    from scanbridge.inference import device as dev
    from scanbridge.inference.heap import tune_malloc
    from scanbridge.inference.runner import ModelLoader

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    phase, samples, stop, held = ["load"], [], threading.Event(), [None]

    def status() -> dict[str, int]:
        with open("/proc/self/status") as fh:
            return {k: int(v.split()[0]) >> 10 for k, _, v in (line.partition(":") for line in fh)
                    if k in ("VmRSS", "VmHWM")}

    def sample() -> None:
        while not stop.is_set():
            mi = libc.mallinfo2()
            tiles = getattr(held[0], "tiles", None)
            samples.append({**status(), "phase": phase[0], "in_use": mi.uordblks >> 20, "free": mi.fordblks >> 20,
                            "mapped": mi.hblkhd >> 20, "mapped_blocks": mi.hblks,
                            "cache": (tiles._cache_bytes >> 20) if tiles is not None else 0})
            time.sleep(0.01)

    def phased(name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            before, phase[0] = phase[0], name
            try:
                return fn(*args, **kwargs)
            finally:
                phase[0] = before
        return run

    analyze.run_objects = phased("tiles", objects.run_objects)  # type: ignore[attr-defined]
    analyze.objects_result = phased("result", objects.objects_result)  # type: ignore[attr-defined]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    tune_malloc()
    model = ModelLoader(prefer_gpu=False).load(model_name)
    with OpenedScan.open([slide]) as scan:
        held[0] = scan.reader
        phase[0] = "analyze"
        t0 = time.perf_counter()
        analyze.analyze_scan(slide.stem, scan, model, readers=dev.default_reader_threads())
        wall = time.perf_counter() - t0
        time.sleep(0.05)
    stop.set()
    thread.join()
    peak = max(samples, key=lambda s: s["VmRSS"])
    return {"hwm_mb": status()["VmHWM"], "wall_s": round(wall, 2), "at_peak": peak}


def _run(src: Path, slide: Path, model: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--child", str(slide), model], env=env, capture_output=True,
                         text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Alternate the runs, print the peaks and their growth."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slides", nargs="*", type=Path, metavar="SLIDE")
    parser.add_argument("--models", nargs="+", default=["nuclei", "ihc-positivity", "tissue"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare-src", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("SLIDE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1])))
        return 0
    if len(args.slides) != 2:
        parser.error("give two slides: the small one, then the large one")
    small, large = args.slides
    trees = {"this": SRC, **({"compare": args.compare_src.resolve()} if args.compare_src else {})}
    runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for model in args.models:
        for _ in range(args.runs):
            for slide in (small, large):
                for name, src in trees.items():
                    got = _run(src, slide, model)
                    runs.setdefault(model, {}).setdefault(name, {}).setdefault(slide.name, []).append(got)
                    if not args.json:
                        print(model, name, slide.name, got["hwm_mb"], got["at_peak"], flush=True)
    summary = {}
    for model, by_tree in runs.items():
        for name, by_slide in by_tree.items():
            a = [r["hwm_mb"] for r in by_slide[small.name]]
            b = [r["hwm_mb"] for r in by_slide[large.name]]
            summary[f"{model}/{name}"] = {"small_mb": a, "large_mb": b,
                                          "median_growth": round(statistics.median(b) / statistics.median(a) - 1, 4),
                                          "worst_growth": round(max(b) / min(a) - 1, 4)}
    print(json.dumps({"summary": summary, "runs": runs} if args.json else summary, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
