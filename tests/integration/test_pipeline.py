"""Real OpenSlide on real files and the real ONNX tissue model, end to end through one scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from shapely.geometry import shape

from scanbridge.devtools import synth
from scanbridge.domain.errors import CorruptScanError, UnsupportedFormatError
from scanbridge.domain.results import geojson_problems
from scanbridge.imaging.readers import detect_format, open_scan
from scanbridge.imaging.tissue import tissue_mask
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.runner import ModelLoader
from scanbridge.inference.zoo import build_tissue_model
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def tissue_model():  # type: ignore[no-untyped-def]
    return ModelLoader().load("tissue")


def test_tissue_graph_separates_stain_from_glass() -> None:
    # GIVEN tiles of glass (near white), H&E stroma (pink), haematoxylin (purple) and pale grey
    session = ort.InferenceSession(build_tissue_model(), providers=["CPUExecutionProvider"])
    colours = {"glass": (242, 241, 243), "stroma": (230, 150, 190), "nuclei": (80, 60, 140), "grey": (225, 225, 225)}
    batch = np.stack([np.broadcast_to(np.array(c, np.uint8).reshape(3, 1, 1), (3, 16, 16)) for c in colours.values()])
    # WHEN the graph runs
    prob = session.run(None, {"image": batch})[0][:, 0, 0, 0]
    # THEN stained pixels are tissue and glass / grey are not
    p = dict(zip(colours, prob, strict=True))
    assert p["stroma"] > 0.9 and p["nuclei"] > 0.9
    assert p["glass"] < 0.2 and p["grey"] < 0.5
    # AND its output is 4x smaller than its input
    assert session.run(None, {"image": np.zeros((1, 3, 64, 64), np.uint8)})[0].shape == (1, 1, 16, 16)


def test_boxes_tiff_reads_like_its_png(tissue_model) -> None:  # type: ignore[no-untyped-def]
    # GIVEN boxes.tiff and the PNG of its level 0
    reader = open_scan([fixture_path("boxes.tiff")])
    expected = np.asarray(Image.open(fixture_path("boxes.png")).convert("RGB"))
    # WHEN level 0 is read / THEN the pixels match (JPEG tolerance)
    got = reader.read_region((0, 0), 0, reader.metadata.dimensions)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 3
    assert reader.metadata.level_dimensions[3] == (37, 31)


def test_boxes_tiff_gives_level0_polygons_over_its_boxes(tissue_model) -> None:  # type: ignore[no-untyped-def]
    # GIVEN boxes.tiff and the truth: the coloured (saturated) pixels of its level-0 PNG
    truth = tissue_mask(np.asarray(Image.open(fixture_path("boxes.png")).convert("RGB")), min_area_px=0)
    reader = open_scan([fixture_path("boxes.tiff")])
    # WHEN analysed
    analysis = analyze_scan("boxes", reader, tissue_model)
    fc = analysis.result.geojson
    # THEN the GeoJSON follows the platform's rules inside the 300x250 slide
    assert fc is not None and geojson_problems(fc, 300, 250) == []
    tissue = [shape(f["geometry"]) for f in fc["features"] if f["properties"]["annotation_type"] == "tissue"]
    assert tissue
    # AND the tissue polygons cover the coloured pixels (coarse 8-px map: IoU well above chance)
    from shapely.ops import unary_union
    predicted = unary_union(tissue)
    ys, xs = np.nonzero(truth)
    inside = np.mean([predicted.contains(shape({"type": "Point", "coordinates": (x + 0.5, y + 0.5)}))
                      for x, y in zip(xs[::7], ys[::7], strict=True)])
    assert inside > 0.85
    summary = analysis.result.results["report"]["summary"]  # type: ignore[index]
    assert summary["Tissue regions"] == str(len(tissue))


def test_synthetic_slide_tissue_matches_truth(tmp_path: Path, tissue_model) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a generated 4096x3072 Aperio slide with 20 % tissue in known ellipses
    truth = synth.make_slide(tmp_path / "s.svs", 4096, 3072, tissue_fraction=0.2, seed=3, mpp=0.5)
    reader = open_scan([tmp_path / "s.svs"])
    assert reader.metadata.vendor == "aperio" and reader.metadata.mpp == (0.5, 0.5)
    # WHEN analysed
    analysis = analyze_scan("s", reader, tissue_model, tile_size=128)
    # THEN the tissue polygons match the truth mask (IoU >= 0.85 at the model's 4 µm/px scale)
    from shapely.ops import unary_union
    predicted = unary_union([shape(f["geometry"]) for f in analysis.result.geojson["features"]  # type: ignore[index]
                             if f["properties"]["annotation_type"] == "tissue"])
    ds = 16
    mask = truth.tissue_mask(ds)
    ys, xs = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    import shapely
    pts = shapely.points((xs.ravel() + 0.5) * ds, (ys.ravel() + 0.5) * ds)
    pred = shapely.contains(predicted, pts).reshape(mask.shape)
    iou = (pred & mask).sum() / (pred | mask).sum()
    assert iou >= 0.85, iou
    # AND the reported fraction is close to the truth, and tiles were read only where tissue is
    assert abs(analysis.result.results["tissue_fraction"] - truth.tissue_fraction) < 0.03  # type: ignore[index]
    assert analysis.stats.tiles_processed < analysis.stats.tiles_total


def test_unreadable_svs_fails_with_scan_corrupt(tissue_model) -> None:  # type: ignore[no-untyped-def]
    # GIVEN an SVS whose tile data is corrupt / WHEN analysed / THEN SCAN_CORRUPT, no crash
    reader = open_scan([fixture_path("unreadable.svs")])
    with pytest.raises(CorruptScanError):
        analyze_scan("u", reader, tissue_model)


def test_unopenable_tiff_and_non_images_are_unsupported(tmp_path: Path) -> None:
    # GIVEN a TIFF with an unknown compression and a text file / WHEN opened / THEN SCAN_UNSUPPORTED_FORMAT
    with pytest.raises(UnsupportedFormatError):
        open_scan([fixture_path("unopenable.tiff")])
    junk = tmp_path / "x"
    junk.write_bytes(b"<html>not a scan</html>")
    assert detect_format(junk) == "unknown"
    with pytest.raises(UnsupportedFormatError):
        open_scan([junk])


def test_a_scan_over_the_tile_limit_fails_with_its_code(tmp_path: Path, tissue_model) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a slide whose tissue needs more than 3 tiles / WHEN analysed with a limit of 3
    synth.make_slide(tmp_path / "s.svs", 4096, 3072, tissue_fraction=0.3, seed=5, mpp=0.5)
    reader = open_scan([tmp_path / "s.svs"])
    seen: list[tuple[int, int]] = []
    # THEN SCAN_TOO_MANY_TILES, before the pipeline went past its first batch
    from scanbridge.domain.errors import TooManyTilesError

    with pytest.raises(TooManyTilesError) as err:
        analyze_scan("s", reader, tissue_model, tile_size=128, batch_size=2, max_tiles=3,
                     progress=lambda d, t: seen.append((d, t)))
    assert err.value.code == "SCAN_TOO_MANY_TILES" and err.value.details["tiles"] > 3 and seen == []
