"""A pyramidal TIFF of real tissue at slide scale, for `scanbridge dev bench` (nothing downloaded).

    python bench/real_tissue_slide.py OUT.tif [--fixtures ../shared/fixtures] [--repeat 4]

The tissue part (the left 1440 columns) of the real H&E mosaic in ../shared/fixtures/thirdparty/ (0.5 µm/px),
laid out `repeat` x 2 `repeat` times with every other copy mirrored, so that no window sees one tile repeated
the same way round: 11520 x 5760 (66 MP) at the default. JPEG tiles (256², quality 90), a level per halving
(dicom_synth.pyramid's 2 x 2 box average) down to 1024 px, written with tifffile. Generated slides hold few
touching nuclei; real tissue holds a hundred per model window, which is what the nucleus post-processing is
measured on (docs/performance.md, "Real tissue").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from scanbridge.devtools import real_images as real
from scanbridge.devtools.dicom_synth import pyramid


def main() -> None:
    """Write the slide and print its size."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures")
    ap.add_argument("--repeat", type=int, default=4, help="copies down (and twice as many across)")
    args = ap.parse_args()
    rgb, mpp = real.mosaic_image(args.fixtures)
    tissue = rgb[:, :1440]
    rows = [np.concatenate([tissue if (r + c) % 2 == 0 else tissue[:, ::-1] for c in range(2 * args.repeat)], axis=1)
            for r in range(args.repeat)]
    slide = np.concatenate([row if r % 2 == 0 else row[::-1] for r, row in enumerate(rows)], axis=0)
    n_levels = 1
    while max(slide.shape[:2]) >> (n_levels - 1) > 1024:
        n_levels += 1
    levels = pyramid(slide, n_levels)
    with tifffile.TiffWriter(args.out, bigtiff=True) as tif:
        for i, level in enumerate(levels):
            res = 1e4 / (mpp * 2**i)  # pixels per cm
            tif.write(level, tile=(256, 256), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                      subfiletype=0 if i == 0 else 1, resolution=(res, res), resolutionunit="CENTIMETER")
    print(f"{args.out}: {slide.shape[1]} x {slide.shape[0]} ({slide.shape[0] * slide.shape[1] / 1e6:.0f} MP) at "
          f"{mpp} µm/px, {len(levels)} levels")


if __name__ == "__main__":
    main()
