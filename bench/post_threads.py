"""How an object model's run scales with its post-processing threads, measured side by side.

    python bench/post_threads.py SLIDE [--model nuclei] [--threads 1 2 4 8] [--rounds 2] [--device auto]

`run_objects` (reading, inference, the objects' post-processing: what `analyze_scan` does between the tissue
mask and the result body) on one slide, once per thread count per round, the counts alternating within a
round; per count the median wall time, the post-processing CPU and tiles per second, and the objects found
(the same for every count). The default is `device.default_post_threads()` (the cores less one, at most
`device.MAX_POST_THREADS`). On real tissue the post-processing is most of an object model's CPU
(`bench/real_tissue_slide.py`, docs/performance.md "Real tissue"): on a GPU host it decides whether more
threads than that cap would feed the device faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from scanbridge.cpus import usable_cores
from scanbridge.devtools import bench
from scanbridge.imaging.scan import OpenedScan
from scanbridge.inference import device
from scanbridge.inference.objects import run_objects


def main() -> None:
    """Print one JSON object: per thread count its runs and medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="post-processing thread counts")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    args = ap.parse_args()
    counts = args.threads or sorted({1, device.default_post_threads(), 2 * device.default_post_threads()})
    bench.tune_malloc()
    model = bench.load_model(args.model, device=args.device)
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    with OpenedScan.open([args.slide]) as scan:
        tissue = scan.tissue
        # a warm-up, which also estimates the scan's stain vectors once for every run after it
        vectors = run_objects(scan.reader, model, tissue.mask, tissue.downsample, post_workers=counts[0]).stain_vectors
        for _ in range(args.rounds):
            for n in counts:
                t0 = time.perf_counter()
                run = run_objects(scan.reader, model, tissue.mask, tissue.downsample, post_workers=n,
                                  stain_vectors=vectors)
                wall = time.perf_counter() - t0
                runs[n].append({"wall_s": round(wall, 3), "post_cpu_s": round(run.post_s, 3),
                                "tiles": run.stats.tiles_processed, "objects": len(run.objects)})
    report = {"slide": str(args.slide), "model": args.model, "provider": model.provider,
              "cores": usable_cores(), "default_post_threads": device.default_post_threads(),
              "threads": {str(n): _summary(rs) for n, rs in runs.items()}}
    print(json.dumps(report, indent=2))


def _summary(runs: list[dict[str, float]]) -> dict[str, object]:
    """One thread count's median wall time, tiles per second at it, the objects found and every run."""
    median = statistics.median(r["wall_s"] for r in runs)
    return {"median_wall_s": round(median, 3), "tiles_per_s": round(runs[0]["tiles"] / median, 1),
            "objects": sorted({r["objects"] for r in runs}), "runs": runs}


if __name__ == "__main__":
    main()
