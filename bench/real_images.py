"""The built-in nuclei models on real images that installed packages ship, against the classical method.

    python bench/real_images.py [--fixtures ../shared/fixtures] [--no-mosaic] [--json]

Images (src/scanbridge/devtools/real_images.py says where each comes from): scikit-image's real IHC colon
image, the real H&E skin tile of ../shared/fixtures/thirdparty/, and that file's whole 1920 x 1440 mosaic.
Per image: the classical count (rgb2hed + Otsu + watershed), the nuclei model's count, density, mean
area, AP50 / Jaccard against the classical labels, the share of its centroids on classical nuclei and
back, and the ihc-positivity model's positivity, the share of its positive points on classical nuclei,
H-score and cell-compartment positivity, the stain vectors the nuclei model used; seconds per step on this
machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from scanbridge.devtools import real_images as real


def main() -> None:
    """Print one line (or one JSON object) per image."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures")
    ap.add_argument("--no-mosaic", action="store_true", help="skip the 1920 x 1440 mosaic (the slowest)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    images = [("ihc (skimage)", real.ihc_image(), real.IHC_MPP), ("skin tile", *real.skin_tile(args.fixtures))]
    if not args.no_mosaic:
        images.append(("H&E mosaic", *real.mosaic_image(args.fixtures)))
    rows = [real.figures(name, rgb, mpp) for name, rgb, mpp in images]
    for row in rows:
        print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
