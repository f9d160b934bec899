"""The tissue mask: OpenCV's morphology and components give exactly the pixels of scipy.ndimage's rule."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from scanbridge.imaging.tiling import strip_mask
from scanbridge.imaging.tissue import optical_density, saturation, tissue_mask
from tests.conftest import fixture_path


def _scipy_rule(rgb: np.ndarray, *, min_od: float = 0.4, min_saturation: float = 0.1,
                min_area_px: int = 4) -> np.ndarray:
    """The rule as scipy.ndimage states it: score > 0, closed (cross, border 0) and kept with itself,
    4-connected components smaller than `min_area_px` dropped."""
    score = 6.0 * (optical_density(rgb) - min_od) + 15.0 * (saturation(rgb) - min_saturation)
    mask = score > 0.0
    mask = ndimage.binary_closing(mask, iterations=1, border_value=0) | mask
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = sizes >= min_area_px
        mask = keep[labels]
    return np.asarray(mask, dtype=bool)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    speckle = (rng.random((180, 220, 3)) * 255 * (rng.random((180, 220, 1)) > 0.8)).astype(np.uint8)
    with tifffile.TiffFile(fixture_path("thirdparty/vips_pyramid_jpeg.tif")) as tif:
        real = tif.series[0].levels[-1].asarray()
    return [real[..., :3], np.asarray(Image.open(fixture_path("boxes.png")).convert("RGB")),
            rng.integers(0, 256, (97, 131, 3), dtype=np.uint8), speckle, 255 - speckle,
            np.full((1, 9, 3), 90, np.uint8), np.zeros((3, 1, 3), np.uint8)]


@pytest.mark.parametrize("min_area_px", [0, 1, 4, 25])
def test_the_mask_is_scipys_rule_pixel_for_pixel(min_area_px: int) -> None:
    for rgb in _images():
        # GIVEN a real tissue image, the boxes fixture, noise, isolated specks, one-row and one-column images
        # WHEN the mask is computed / THEN it equals the scipy.ndimage statement of the rule, border pixels too
        expected = _scipy_rule(rgb, min_area_px=min_area_px)
        got = tissue_mask(rgb, min_area_px=min_area_px)
        assert got.dtype == bool and got.shape == rgb.shape[:2]
        np.testing.assert_array_equal(got, expected, err_msg=f"{rgb.shape}, min_area_px={min_area_px}")


def test_optical_density_is_the_table_summed_per_pixel() -> None:
    # GIVEN every grey level and a non-contiguous crop
    rgb = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)[::2, 1::3]
    # WHEN / THEN: -log((v + 1) / 256) summed over r, g, b, in float32
    table = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)
    expected = table[rgb[..., 0]] + table[rgb[..., 1]] + table[rgb[..., 2]]
    np.testing.assert_array_equal(optical_density(rgb), expected)
    assert optical_density(np.full((1, 1, 3), 255, np.uint8))[0, 0] == 0.0


def test_strips_on_several_threads_give_the_one_thread_mask() -> None:
    # GIVEN a real overview cut into many strips
    rgb = _images()[0]
    # WHEN the strips are masked on one thread and on three
    one = strip_mask(rgb, tissue_mask, strip_px=rgb.shape[1] * 9, threads=1)
    three = strip_mask(rgb, tissue_mask, strip_px=rgb.shape[1] * 9, threads=3)
    # THEN the masks are the same, and the same as the whole image's (the strips' margins hold its context)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_array_equal(one, tissue_mask(rgb))
    assert one.any() and not one.all()
