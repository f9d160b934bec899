"""Tests for the synthetic whole-slide image generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from scanbridge.devtools.synth import NUCLEUS_DENSITY_PER_MM2, SlideTruth, main, make_slide

W, H = 2048, 1536


def _rgb(slide: openslide.OpenSlide, level: int = 0) -> np.ndarray:
    return np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SlideTruth]:
    path = tmp_path_factory.mktemp("synth") / "slide.svs"
    truth = make_slide(path, W, H, tissue_fraction=0.25, mpp=0.25, seed=7, positive_fraction=0.5)
    return path, truth


def test_opens_in_openslide_as_aperio(slide: tuple[Path, SlideTruth]) -> None:
    # GIVEN a 2048x1536 synthetic slide
    path, truth = slide
    # WHEN OpenSlide opens it
    with openslide.OpenSlide(str(path)) as osr:
        props = dict(osr.properties)
        # THEN it is detected as Aperio with the right geometry and resolution
        assert props["openslide.vendor"] == "aperio"
        assert osr.dimensions == (W, H)
        assert osr.level_count == 2
        assert osr.level_dimensions == ((W, H), (512, 384))
        assert osr.level_dimensions == truth.level_dimensions
        assert float(props["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(props["openslide.mpp-y"]) == pytest.approx(0.25)
        assert props["openslide.objective-power"] == "40"
        assert props["aperio.AppMag"] == "40"


def test_pixels_agree_with_truth(slide: tuple[Path, SlideTruth]) -> None:
    # GIVEN the slide and its truth
    path, truth = slide
    with openslide.OpenSlide(str(path)) as osr:
        for level, ds in ((0, 1), (1, 4)):
            # WHEN a whole level is read and split by the truth's tissue mask
            img = _rgb(osr, level).astype(np.float64)
            mask = truth.tissue_mask(ds)
            assert mask.shape == img.shape[:2]
            inside, outside = img[mask].mean(axis=0), img[~mask].mean(axis=0)
            # THEN tissue is pink/purple (R, B well above G) and background is near-white
            assert inside[0] > inside[1] + 40 and inside[2] > inside[1] + 20
            assert np.all(outside > 236) and np.all(outside < 244)
            # AND the tissue fraction measured on pixels is within 2 % of the request
            measured = float((img[..., 1] < 220).mean())
            assert measured == pytest.approx(0.25, abs=0.02)
            assert measured == pytest.approx(truth.tissue_fraction, abs=0.01)
    assert truth.tissue_fraction == pytest.approx(0.25, abs=0.02)
    assert truth.tissue_fraction == pytest.approx(float(truth.tissue_mask(1).mean()), abs=1e-12)


def test_nuclei_follow_density_and_do_not_overlap(slide: tuple[Path, SlideTruth]) -> None:
    # GIVEN the slide's truth
    _, truth = slide
    # WHEN the expected count is derived from the tissue area
    area_mm2 = truth.tissue_fraction * W * H * (truth.mpp / 1000.0) ** 2
    expected = NUCLEUS_DENSITY_PER_MM2 * area_mm2
    # THEN the nucleus count matches the density
    assert len(truth.nuclei) == pytest.approx(expected, rel=0.2)
    # AND every nucleus centre lies in tissue, with radius 3 um, and none overlap
    mask = truth.tissue_mask(1)
    xy = np.array([[n.cx, n.cy] for n in truth.nuclei])
    assert mask[xy[:, 1].astype(int), xy[:, 0].astype(int)].mean() > 0.95
    assert all(n.r == pytest.approx(3.0 / truth.mpp) for n in truth.nuclei)
    d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    assert d.min() >= 2 * truth.nuclei[0].r
    # AND about half are DAB-positive, as requested
    assert 0.3 < truth.positive_count / len(truth.nuclei) < 0.7


def test_blank_slide_is_background_only(tmp_path: Path) -> None:
    # GIVEN a blank slide
    path = tmp_path / "blank.svs"
    truth = make_slide(path, 1024, 768, blank=True, seed=1)
    # WHEN its pixels are read
    with openslide.OpenSlide(str(path)) as osr:
        img = _rgb(osr)
    # THEN the truth has no tissue and every pixel is near-white background
    assert truth.blobs == () and truth.nuclei == () and truth.tissue_fraction == 0.0
    assert not truth.tissue_mask(4).any()
    assert img.min() >= 230 and img.max() <= 250
    assert abs(float(img.mean()) - 240.0) < 1.0


def test_same_seed_gives_identical_pixels(tmp_path: Path) -> None:
    # GIVEN two slides with the same seed and one with another seed
    a, b, c = tmp_path / "a.svs", tmp_path / "b.svs", tmp_path / "c.svs"
    ta = make_slide(a, 1280, 1024, seed=11, positive_fraction=0.3)
    tb = make_slide(b, 1280, 1024, seed=11, positive_fraction=0.3)
    make_slide(c, 1280, 1024, seed=12, positive_fraction=0.3)

    # WHEN every level is decoded
    def levels(p: Path) -> list[np.ndarray]:
        with tifffile.TiffFile(p) as tf:
            return [page.asarray() for page in tf.pages]

    la, lb, lc = levels(a), levels(b), levels(c)
    # THEN the same seed gives identical truth and pixels; another seed differs
    assert ta == tb
    assert len(la) == len(lb) == 5  # level 0, thumbnail, level 1, label, macro
    assert all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))
    assert not np.array_equal(la[0], lc[0])


def test_cli_writes_slide_and_truth_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN CLI arguments for a small slide with a truth file
    out, truth_path = tmp_path / "cli.svs", tmp_path / "truth.json"
    # WHEN main() runs
    rc = main([str(out), "--width", "600", "--height", "400", "--seed", "2", "--truth-json", str(truth_path)])
    # THEN it succeeds, prints one summary line and the truth round-trips
    assert rc == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    truth = SlideTruth.from_json(json.loads(truth_path.read_text()))
    assert (truth.width, truth.height) == (600, 400)
    with openslide.OpenSlide(str(out)) as osr:
        assert osr.properties["openslide.vendor"] == "aperio"
        assert osr.level_count == 1


def test_slide_has_the_layout_aperio_scanners_write(tmp_path: Path) -> None:
    # GIVEN a generated slide with a pyramid
    import openslide

    path = tmp_path / "aperio.svs"
    make_slide(path, 5000, 4000, tissue_fraction=0.4, seed=1)
    # WHEN OpenSlide and tifffile (the SVS parser tiffslide uses) read it
    with openslide.OpenSlide(str(path)) as slide:
        vendor, levels = slide.properties["openslide.vendor"], slide.level_count
        associated = {k: v.size for k, v in slide.associated_images.items()}
    with tifffile.TiffFile(path) as tf:
        series = {s.name: len(s.levels) for s in tf.series}
        is_svs, second = tf.is_svs, tf.pages[1]
    # THEN both see an Aperio file: every level, the thumbnail as the second image, a label and a macro
    assert vendor == "aperio" and levels == 2
    assert set(associated) == {"thumbnail", "label", "macro"} and max(associated["thumbnail"]) == 1024
    assert is_svs and series == {"Baseline": 2, "Thumbnail": 1, "Label": 1, "Macro": 1}
    assert not second.is_tiled and second.compression == tifffile.COMPRESSION.JPEG
