"""The tissue mask: OpenCV's morphology and components give exactly the pixels of scipy.ndimage's rule."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from scanbridge.imaging.tiling import strip_mask
from scanbridge.imaging.tissue import (
    TissueMasker,
    channel_spread,
    least_tissue_density,
    optical_density,
    saturation,
    tissue_mask,
)
from tests.conftest import fixture_path


def _stated_saturation(rgb: np.ndarray) -> np.ndarray:
    """(max - min) / 255 over r, g, b in float32, as numpy states it."""
    return (_stated_spread(rgb).astype(np.float32) * np.float32(1.0 / 255.0)).astype(np.float32)


def _stated_spread(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.asarray(np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b))


def _stated_score(rgb: np.ndarray, min_od: float = 0.4, min_saturation: float = 0.1, *,
                  sat: np.ndarray | None = None) -> np.ndarray:
    """The rule's pixel test, computed as it is written: 6 (od - min_od) + 15 (saturation - min_saturation) > 0."""
    sat = _stated_saturation(rgb) if sat is None else sat
    return np.asarray(6.0 * (optical_density(rgb) - min_od) + 15.0 * (sat - min_saturation) > 0.0)


def _scipy_rule(rgb: np.ndarray, *, min_od: float = 0.4, min_saturation: float = 0.1,
                min_area_px: int = 4) -> np.ndarray:
    """The rule as scipy.ndimage states it: score > 0, closed (cross, border 0) and kept with itself,
    4-connected components smaller than `min_area_px` dropped."""
    mask = _stated_score(rgb, min_od, min_saturation)
    mask = ndimage.binary_closing(mask, iterations=1, border_value=0) | mask
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = sizes >= min_area_px
        mask = keep[labels]
    return np.asarray(mask, dtype=bool)


def _every_colour(block: int) -> np.ndarray:
    """Block `block` (0-3) of the 2^24 RGB colours, as a 1024 x 4096 image (r: the top bits)."""
    codes = np.arange(block << 22, (block + 1) << 22, dtype=np.uint32)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)
    return rgb.reshape(1024, 4096, 3)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    speckle = (rng.random((180, 220, 3)) * 255 * (rng.random((180, 220, 1)) > 0.8)).astype(np.uint8)
    with tifffile.TiffFile(fixture_path("thirdparty/vips_pyramid_jpeg.tif")) as tif:
        real = tif.series[0].levels[-1].asarray()
    shuffled = _every_colour(1)[::4, ::4].reshape(-1, 3)[rng.permutation(256 * 1024)].reshape(256, 1024, 3)
    return [real[..., :3], np.asarray(Image.open(fixture_path("boxes.png")).convert("RGB")),
            rng.integers(0, 256, (97, 131, 3), dtype=np.uint8), speckle, 255 - speckle, shuffled,
            np.full((1, 9, 3), 90, np.uint8), np.zeros((3, 1, 3), np.uint8)]


@pytest.mark.parametrize("min_area_px", [0, 1, 4, 25])
def test_the_mask_is_scipys_rule_pixel_for_pixel(min_area_px: int) -> None:
    for rgb in _images():
        # GIVEN a real tissue image, the boxes fixture, noise, isolated specks, shuffled colours, one-row and
        # one-column images
        # WHEN the mask is computed / THEN it equals the scipy.ndimage statement of the rule, border pixels too
        expected = _scipy_rule(rgb, min_area_px=min_area_px)
        got = tissue_mask(rgb, min_area_px=min_area_px)
        assert got.dtype == bool and got.shape == rgb.shape[:2]
        np.testing.assert_array_equal(got, expected, err_msg=f"{rgb.shape}, min_area_px={min_area_px}")


def test_the_density_floor_per_spread_is_the_score_rule_for_every_colour() -> None:
    least = least_tissue_density(0.4, 0.1)
    for block in range(4):
        # GIVEN every 8-bit RGB colour (a quarter at a time)
        rgb = _every_colour(block)
        # WHEN a pixel is tissue where its density reaches the floor of its channel spread
        spread = channel_spread(rgb)
        got = optical_density(rgb) >= least[spread]
        # THEN the spread is max - min, the saturation is the stated one, and the test is the score's, colour
        # for colour (float32 rounding included)
        np.testing.assert_array_equal(spread, _stated_spread(rgb))
        sat = _stated_saturation(rgb)
        np.testing.assert_array_equal(saturation(rgb), sat)
        np.testing.assert_array_equal(got, _stated_score(rgb, sat=sat), err_msg=f"block {block}")
    # the floor falls as the colour saturates, from a grey's 0.65 to nothing for the most saturated
    assert 0.65 < least[0] < 0.6501 and np.all(np.diff(least) <= 0) and least[-1] == 0.0


@pytest.mark.parametrize(("min_od", "min_saturation"), [(0.0, 0.0), (1.5, 0.3), (0.25, 0.6), (20.0, 2.0)])
def test_other_thresholds_keep_the_score_rule(min_od: float, min_saturation: float) -> None:
    # GIVEN thresholds other than the defaults (the last ones no colour can pass) and a quarter of the colours
    rgb = _every_colour(2)
    # WHEN / THEN the mask's pixel test is the score's for each colour
    least = least_tissue_density(min_od, min_saturation)
    np.testing.assert_array_equal(optical_density(rgb) >= least[channel_spread(rgb)],
                                  _stated_score(rgb, min_od, min_saturation))
    image = rgb[:64, :512]
    np.testing.assert_array_equal(tissue_mask(image, min_od=min_od, min_saturation=min_saturation),
                                  _scipy_rule(image, min_od=min_od, min_saturation=min_saturation))


def _specks_on_glass() -> np.ndarray:
    """Glass with a 3 x 3 stained square at (5, 5), a 2 x 2 one at (5, 20), a 1 x 3 bar at (20, 5) and a
    single stained pixel at (20, 20), each far from the others."""
    rgb = np.full((30, 30, 3), 240, np.uint8)
    for ys, xs in [(slice(5, 8), slice(5, 8)), (slice(5, 7), slice(20, 22)), (slice(20, 21), slice(5, 8)),
                   (slice(20, 21), slice(20, 21))]:
        rgb[ys, xs] = (150, 60, 140)
    return rgb


def test_components_below_the_area_are_dropped_and_the_others_kept() -> None:
    # GIVEN stained specks of 9, 4, 3 and 1 pixels on glass
    rgb = _specks_on_glass()
    # WHEN the mask drops components under 4 pixels
    got = tissue_mask(rgb, min_area_px=4)
    # THEN the square and the 2 x 2 remain, the bar and the single pixel are gone: the scipy rule's pixels
    expected = np.zeros((30, 30), bool)
    expected[5:8, 5:8] = expected[5:7, 20:22] = True
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, _scipy_rule(rgb, min_area_px=4))


def test_a_mask_with_no_small_component_is_the_closed_mask() -> None:
    # GIVEN the same specks and areas every one of them reaches
    rgb = _specks_on_glass()
    # WHEN / THEN nothing is dropped: the mask is every stained pixel (closing fills nothing here)
    got = tissue_mask(rgb, min_area_px=1)
    np.testing.assert_array_equal(got, (rgb != 240).any(axis=-1))
    np.testing.assert_array_equal(got, tissue_mask(rgb, min_area_px=0))
    np.testing.assert_array_equal(got, _scipy_rule(rgb, min_area_px=1))


def test_one_masker_reused_on_images_of_other_sizes_gives_each_images_mask() -> None:
    # GIVEN one masker and images larger and smaller than each other, its arrays reused between them
    masker = TissueMasker()
    images = _images()
    big, small, other = images[0], images[3], images[2]
    # WHEN it masks them one after another / THEN each is the image's own mask (nothing left from before)
    for rgb in (big, small, big, other, small):
        result = masker(rgb)
        np.testing.assert_array_equal(result, _scipy_rule(rgb))
    # AND the mask it returned earlier is not overwritten by later calls
    first = masker(small)
    masker(big)
    np.testing.assert_array_equal(first, _scipy_rule(small))


def test_an_rgba_image_is_masked_on_its_colour_and_a_grey_one_refused() -> None:
    # GIVEN an RGBA copy of a real image and a single-channel image
    rgb = _images()[0]
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 7, np.uint8)], axis=-1)
    # WHEN / THEN the alpha channel is ignored; a grey image is not a colour image
    np.testing.assert_array_equal(tissue_mask(rgba), tissue_mask(rgb))
    with pytest.raises(ValueError, match="not an RGB image"):
        tissue_mask(rgb[..., 0])


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
    # WHEN the strips are masked on one thread and on three, by the function and by one masker (its arrays
    # kept per thread)
    one = strip_mask(rgb, tissue_mask, strip_px=rgb.shape[1] * 9, threads=1)
    three = strip_mask(rgb, tissue_mask, strip_px=rgb.shape[1] * 9, threads=3)
    shared = strip_mask(rgb, TissueMasker(), strip_px=rgb.shape[1] * 9, threads=3)
    # THEN the masks are the same, and the same as the whole image's (the strips' margins hold its context)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_array_equal(one, shared)
    np.testing.assert_array_equal(one, tissue_mask(rgb))
    assert one.any() and not one.all()
