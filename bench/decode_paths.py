"""The pipeline's decode step three ways on the same tiles, interleaved in one process (a busy machine's
load then falls on all three alike):

    python bench/decode_paths.py SLIDE [--model bench-conv] [--reps 5] [--readers N]

- ``dct``: what the pipeline does (compressed tiles; JPEG at 1/2, 1/4, 1/8 in the DCT domain when the model
  reads coarser than the level);
- ``full``: the same compressed tiles decoded at full size, then the pipeline's box average (the path before
  DCT scaling: the reader is wrapped so that it offers no scaled read);
- ``openslide``: OpenSlide's ``read_region`` plus the same box average (the bench's ``openslide_decode_s``).

Prints one JSON object: the median seconds of each, the ratios, and every repetition.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from scanbridge.devtools.bench import load_model, time_reads, tissue_grid
from scanbridge.imaging.readers import ScanReader, open_scan
from scanbridge.imaging.readers.base import ClosingReader
from scanbridge.imaging.readers.openslide_reader import OpenSlideReader
from scanbridge.imaging.tiling import TileGrid
from scanbridge.inference.device import default_reader_threads


class FullSizeOnly(ClosingReader):
    """A reader seen through read_region only: the pipeline cannot ask it for a DCT-scaled region."""

    def __init__(self, inner: ScanReader) -> None:
        self._inner = inner
        self.metadata = inner.metadata

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """The inner reader's full-size region."""
        return self._inner.read_region(location, level, size)

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """The inner reader's thumbnail."""
        return self._inner.thumbnail(max_size)

    def associated_image(self, name: str) -> np.ndarray:
        """The inner reader's associated image."""
        return self._inner.associated_image(name)

    def close(self) -> None:
        """Close the inner reader."""
        self._inner.close()


def timed(reader: ScanReader, grid: TileGrid, readers: int, queue_size: int) -> float:
    """Seconds to read every tile of `grid` through `reader` (closed afterwards): the bench's own timer."""
    return time_reads(reader, grid, readers=readers, queue_size=queue_size)


def main(argv: list[str] | None = None) -> int:
    """Measure, print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("slide", type=Path)
    p.add_argument("--model", default="bench-conv")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--readers", type=int, default=None)
    args = p.parse_args(argv)
    readers = args.readers or default_reader_threads()
    model = load_model(args.model, prefer_gpu=False)
    probe = open_scan([args.slide])
    try:
        grid = tissue_grid(probe, model, tile_size=None, overlap=None)
    finally:
        probe.close()
    queue_size = 2 * model.batch_size_for(grid.tile_size)
    paths = {"dct": lambda: open_scan([args.slide]), "full": lambda: FullSizeOnly(open_scan([args.slide])),
             "openslide": lambda: OpenSlideReader(args.slide)}
    runs: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(max(1, args.reps)):
        for name, make in paths.items():
            runs[name].append(timed(make(), grid, readers, queue_size))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out: dict[str, Any] = {
        "slide": str(args.slide), "model": args.model, "level": grid.level, "scale": round(grid.scale, 4),
        "tiles": len(grid.tiles), "readers": readers,
        **{f"{k}_s": round(v, 3) for k, v in med.items()},
        "dct_vs_openslide": round(med["openslide"] / med["dct"], 2),
        "full_vs_openslide": round(med["openslide"] / med["full"], 2),
        "dct_vs_full": round(med["full"] / med["dct"], 2),
        "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
