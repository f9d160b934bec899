"""QC blur calibration: the sharpness QC measures (normalised Laplacian variance) on sharp and blurred
scans, generated and real, side by side, and the share of sharp scans the default threshold calls BLURRY.

    python bench/qc_blur.py [--seeds 3]

Generated: 2048 px at 0.25 µm/px, 50 % tissue, with and without nuclei, blur sigma 0/2/3 px at level 0.
Real: the H&E mosaic of ../shared/fixtures/thirdparty/vips_pyramid_jpeg.tif (0.5 µm/px), blurred 0-3 px, and
every file of ../shared/fixtures/thirdparty as written (one tissue, six writers and codecs: all sharp).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from scanbridge.devtools.synth import make_slide
from scanbridge.imaging.qc import BLURRY, QcThresholds, qc_scan

THIRDPARTY = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "thirdparty"
REAL = THIRDPARTY / "vips_pyramid_jpeg.tif"


def _value(*paths: Path) -> float:
    check = next(c for c in qc_scan(list(paths)).checks if c.code == BLURRY)
    return float(check.value or 0.0)


def main() -> None:
    """Print one line per scan and the false-positive / true-positive counts at the default threshold."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    limit = QcThresholds().min_sharpness
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for nuclei in (False, True):
            for sigma in (0.0, 2.0, 3.0):
                for seed in range(args.seeds):
                    path = out / f"g{int(nuclei)}{sigma}{seed}.svs"
                    make_slide(path, 2048, 2048, tissue_fraction=0.5, mpp=0.25, nuclei=nuclei, seed=seed,
                               blur_sigma=sigma)
                    rows.append(("generated " + ("nuclei" if nuclei else "smooth"), sigma, _value(path)))
        if REAL.exists():
            src = tifffile.imread(REAL)
            for sigma in (0.0, 1.0, 2.0, 3.0):
                img = src if not sigma else np.stack(
                    [ndimage.gaussian_filter(src[..., c].astype(np.float32), sigma) for c in range(3)], -1
                ).clip(0, 255).astype(np.uint8)
                path = out / f"real{sigma}.tif"
                tifffile.imwrite(path, img, tile=(256, 256), compression="jpeg", photometric="rgb",
                                 resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
                rows.append(("real H&E mosaic", sigma, _value(path)))
            for written in sorted(THIRDPARTY.glob("*.tif")):
                rows.append((written.name, 0.0, _value(written)))
            rows.append(("wsidicomizer DICOM", 0.0, _value(*sorted((THIRDPARTY / "wsidicomizer_series").glob("*.dcm")))))
    for kind, sigma, value in rows:
        print(f"{kind:<24} blur sigma {sigma:3.1f} px  sharpness {value:.3f}  {'BLURRY' if value < limit else 'sharp'}")
    sharp = [v for _k, s, v in rows if s == 0]
    blurred = [v for _k, s, v in rows if s >= 2]
    print(f"threshold {limit}: sharp scans called BLURRY {sum(v < limit for v in sharp)}/{len(sharp)}; "
          f"blurred (sigma >= 2) caught {sum(v < limit for v in blurred)}/{len(blurred)}")


if __name__ == "__main__":
    main()
