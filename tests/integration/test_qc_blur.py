"""QC blur is judged relative to the scan's own content: smooth sharp tissue passes, blurred scans fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from scanbridge.devtools import synth
from scanbridge.imaging.qc import BLURRY, QcThresholds, qc_scan
from tests.conftest import fixture_path


def _blurred_copy(src: np.ndarray, sigma: float, path: Path) -> Path:
    img = src if sigma == 0 else np.stack(
        [ndimage.gaussian_filter(src[..., c].astype(np.float32), sigma) for c in range(3)], -1
    ).clip(0, 255).astype(np.uint8)
    tifffile.imwrite(path, img, tile=(256, 256), compression="jpeg", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 µm/px
    return path


def _blur(path: Path) -> tuple[bool, float]:
    check = next(c for c in qc_scan([path]).checks if c.code == BLURRY)
    assert check.assessed and check.value is not None
    return check.passed, check.value


def test_sharp_scan_of_smooth_tissue_is_not_called_blurry(tmp_path: Path) -> None:
    # GIVEN a sharp generated scan of smooth stroma without nuclei (its Laplacian variance is ~50, under the
    # old absolute floor of 70) and the same scan blurred by sigma 3 px at 0.25 µm/px with nuclei
    smooth = tmp_path / "smooth.svs"
    synth.make_slide(smooth, 2048, 2048, tissue_fraction=0.5, mpp=0.25, nuclei=False, seed=5)
    blurred = tmp_path / "blurred.svs"
    synth.make_slide(blurred, 2048, 2048, tissue_fraction=0.5, mpp=0.25, blur_sigma=3.0, seed=5)
    # WHEN QC runs on both
    (smooth_ok, smooth_value), (blurred_ok, blurred_value) = _blur(smooth), _blur(blurred)
    # THEN the sharp smooth scan passes and the blurred one is BLURRY
    assert smooth_ok and smooth_value > QcThresholds().min_sharpness, smooth_value
    assert not blurred_ok and blurred_value < smooth_value


@pytest.mark.parametrize(("sigma", "sharp"), [(0.0, True), (2.0, False), (3.0, False)])
def test_real_tissue_sharp_passes_and_blurred_fails(tmp_path: Path, sigma: float, sharp: bool) -> None:
    # GIVEN the real H&E mosaic (0.5 µm/px) as written by libvips, and copies blurred by sigma px
    src = tifffile.imread(fixture_path("thirdparty/vips_pyramid_jpeg.tif"))
    path = _blurred_copy(src, sigma, tmp_path / f"real-{sigma}.tif")
    # WHEN QC runs  THEN only the sharp one passes
    passed, value = _blur(path)
    assert passed is sharp, value
