"""The nuclei and ihc-positivity models on synthetic slides with known nuclei (positions, radius, stain)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.spatial import cKDTree

from scanbridge.devtools import synth
from scanbridge.domain.results import geojson_problems
from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.scan import OpenedScan
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.runner import Analyzer, ModelLoader

SIZE = 2048
RADIUS_UM = 3.0


@pytest.fixture(scope="module")
def loader() -> ModelLoader:
    return ModelLoader(prefer_gpu=False)


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SlideTruth]:
    path = tmp_path_factory.mktemp("he") / "he.svs"
    return path, synth.make_slide(path, SIZE, SIZE, mpp=0.5, tissue_fraction=0.4, seed=2,
                                  nucleus_radius_um=RADIUS_UM)


@pytest.fixture(scope="module")
def ki67_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SlideTruth]:
    path = tmp_path_factory.mktemp("ki67") / "ki67.svs"
    return path, synth.make_slide(path, SIZE, SIZE, mpp=0.5, tissue_fraction=0.4, seed=5, positive_fraction=0.3)


def _match(found: np.ndarray, truth: np.ndarray, radius: float = 3.0) -> np.ndarray:
    """Distance from each truth nucleus to the nearest detection (inf when none within `radius`)."""
    if len(found) == 0:
        return np.full(len(truth), np.inf)
    dist, _ = cKDTree(found).query(truth, distance_upper_bound=radius)
    return np.asarray(dist)


def _interior(truth: synth.SlideTruth) -> np.ndarray:
    """Truth nuclei whose whole disc lies in tissue (the renderer clips the others at the tissue edge)."""
    keep = truth.whole_nuclei()
    return np.array([[n.cx, n.cy] for n, k in zip(truth.nuclei, keep, strict=True) if k])


def _centroids(fc: dict[str, Any]) -> np.ndarray:
    """Centroids of the nucleus polygons (shapely), level-0."""
    from shapely.geometry import shape

    cs = [shape(f["geometry"]).centroid for f in fc["features"] if f["properties"]["annotation_type"] == "nucleus"]
    return np.array([[c.x, c.y] for c in cs])


def test_nuclei_model_counts_and_places_every_nucleus(he_slide: tuple[Path, synth.SlideTruth],
                                                      loader: ModelLoader) -> None:
    # GIVEN an H&E-like slide (0.5 µm/px) with known nuclei of radius 3 µm
    path, truth = he_slide
    # WHEN the worker's analyzer runs the nuclei model on the scan, opened once
    with OpenedScan.open([path]) as scan:
        result, metadata = Analyzer(loader)("he", scan, "nuclei", lambda done, total: None)
    fc, res = result.geojson, result.results
    assert fc is not None and res is not None
    # THEN the count is within 2 % of the truth
    n_truth = len(truth.nuclei)
    assert abs(res["nuclei_count"] - n_truth) <= 0.02 * n_truth, (res["nuclei_count"], n_truth)
    # AND 99 % of the nuclei inside the tissue have a detection centred within 1 px of theirs (level 0);
    # nuclei that the tissue edge clips are found too, centred on their visible part
    found = np.array([[f["properties"]["measurements"]["Centroid X px"],
                       f["properties"]["measurements"]["Centroid Y px"]] for f in fc["features"]])
    dist = _match(found, _interior(truth))
    assert np.mean(dist <= 1.0) >= 0.99 and np.median(dist) < 0.5, np.percentile(dist, [50, 99])
    true_xy = np.array([[n.cx, n.cy] for n in truth.nuclei])
    assert np.mean(_match(found, true_xy) <= 3.0) >= 0.98
    # AND the polygons are where the nuclei are, as valid platform / QuPath features inside the slide
    assert geojson_problems(fc, SIZE, SIZE) == []
    assert np.mean(_match(_centroids(fc), true_xy) <= 1.0) >= 0.97
    feature = fc["features"][0]
    assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["objectType"] == "detection"
    assert feature["properties"]["classification"]["name"] == "Nucleus" and "id" in feature
    # AND areas in µm² follow the pixel size and the true disc area (pi r², 28.3 µm²)
    m = [f["properties"]["measurements"] for f in fc["features"]]
    assert all(abs(x["Area µm^2"] - x["Area px^2"] * 0.25) < 1e-2 for x in m)
    assert np.median([x["Area µm^2"] for x in m]) == pytest.approx(math.pi * RADIUS_UM ** 2, rel=0.12)
    assert np.median([x["Eccentricity"] for x in m]) < 0.35 and np.median([x["Solidity"] for x in m]) > 0.9
    assert np.median([x["Hematoxylin OD mean"] for x in m]) > 0.5
    # AND the summary is readable: count, density per mm² of tissue
    summary = res["report"]["summary"]
    assert summary["Nuclei"] == f"{res['nuclei_count']:,}" and "/mm² of tissue" in summary["Nuclei density"]
    assert res["nuclei_density_per_mm2"] == pytest.approx(synth.NUCLEUS_DENSITY_PER_MM2, rel=0.15)
    assert metadata["mpp_x"] == 0.5


def _nucleus_for_seam(truth: synth.SlideTruth) -> synth.Nucleus:
    """A nucleus well inside the tissue, away from the slide's edges, to put a tile seam through."""
    mask = truth.tissue_mask(4)
    for n in sorted(truth.nuclei, key=lambda n: n.cx):
        if 400 < n.cx < 1200 and 100 < n.cy < SIZE - 100:
            r, c = int(n.cy // 4), int(n.cx // 4)
            if mask[max(r - 5, 0):r + 6, max(c - 5, 0):c + 6].all():
                return n
    raise AssertionError("no nucleus for the seam test")


@pytest.mark.parametrize("overlap", [64, 0])
def test_a_nucleus_on_a_tile_seam_is_one_nucleus(he_slide: tuple[Path, synth.SlideTruth], loader: ModelLoader,
                                                 overlap: int) -> None:
    # GIVEN tiles sized so that a seam runs exactly through the centre of a nucleus
    path, truth = he_slide
    target = _nucleus_for_seam(truth)
    stride = round(target.cx)
    # WHEN analysed with overlapping tiles (and, to show why, without)
    analysis = analyze_scan("he", open_scan([path]), loader.load("nuclei"), tile_size=stride + 2 * overlap,
                            overlap=overlap)
    fc = analysis.result.geojson
    assert fc is not None
    xy = np.array([[f["properties"]["measurements"]["Centroid X px"],
                    f["properties"]["measurements"]["Centroid Y px"]] for f in fc["features"]])
    near = np.hypot(xy[:, 0] - target.cx, xy[:, 1] - target.cy)
    whole = [i for i in np.nonzero(near < 8)[0]
             if fc["features"][i]["properties"]["measurements"]["Area µm^2"] > 0.8 * math.pi * RADIUS_UM ** 2]
    if overlap:
        # THEN it is found once, whole, at its true centre, and no nucleus anywhere is found twice
        assert len(whole) == 1 and (near < 8).sum() == 1 and near.min() < 1.0
        pairs = cKDTree(xy).query_pairs(2 * RADIUS_UM / 0.5 - 2)
        assert not pairs
        assert abs(len(xy) - len(truth.nuclei)) <= 0.02 * len(truth.nuclei)
    else:
        # THEN without overlap the seam cuts it in two halves, neither of them the nucleus
        assert not whole and (near < 8).sum() == 2


def test_ihc_model_counts_positive_and_negative_nuclei(ki67_slide: tuple[Path, synth.SlideTruth],
                                                       loader: ModelLoader) -> None:
    # GIVEN a Ki67-like slide, 30 % of nuclei DAB-brown
    path, truth = ki67_slide
    # WHEN the ihc-positivity model runs
    analysis = analyze_scan("ki67", open_scan([path]), loader.load("ihc-positivity"))
    fc, res = analysis.result.geojson, analysis.result.results
    assert fc is not None and res is not None
    # THEN total and positive counts are within 2 % of the truth, and positivity within a point
    n, pos = len(truth.nuclei), truth.positive_count
    assert abs(res["nuclei_count"] - n) <= 0.02 * n and abs(res["positive_count"] - pos) <= max(1, 0.02 * pos)
    assert res["positivity_percent"] == pytest.approx(100 * pos / n, abs=1.0)
    # AND the GeoJSON has one MultiPoint per class, on the true centres of that class
    by_type = {f["properties"]["annotation_type"]: f for f in fc["features"]}
    assert set(by_type) == {"positive", "negative"} and geojson_problems(fc, SIZE, SIZE) == []
    for key, wanted in (("positive", True), ("negative", False)):
        feature = by_type[key]
        assert feature["geometry"]["type"] == "MultiPoint"
        points = np.array(feature["geometry"]["coordinates"])
        true_xy = np.array([[t.cx, t.cy] for t in truth.nuclei if t.positive is wanted])
        assert np.mean(_match(points, true_xy) <= 1.0) >= 0.97
        assert feature["properties"]["measurements"]["Num nuclei"] == len(points)
    # AND the summary says it the way the platform shows it
    summary = res["report"]["summary"]
    assert summary["Nuclear positivity (DAB)"] == f"{res['positivity_percent']:.1f} %"
    assert summary["Positive nuclei"] == str(res["positive_count"])


def test_ihc_on_a_025_um_slide_reads_level0_resized_to_the_model(tmp_path: Path, loader: ModelLoader) -> None:
    # GIVEN a 0.25 µm/px slide (the model runs at 0.5: level 0 is read and halved)
    truth = synth.make_slide(tmp_path / "hi.svs", 2048, 2048, mpp=0.25, tissue_fraction=0.5, seed=7,
                             positive_fraction=0.4)
    # WHEN analysed, every tile touching tissue included (this 0.5 mm slide is 3x3 tiles: the model's
    # default, 10 % tissue per tile, would skip two edge nuclei; placement is what is tested here)
    analysis = analyze_scan("hi", open_scan([tmp_path / "hi.svs"]), loader.load("ihc-positivity"), min_tissue=0.0)
    res, fc = analysis.result.results, analysis.result.geojson
    assert res is not None and fc is not None
    # THEN counts hold and centres are within a level-0 pixel; areas are in true µm²
    n = len(truth.nuclei)
    assert abs(res["nuclei_count"] - n) <= max(2, 0.02 * n)
    points = np.array([p for f in fc["features"] for p in f["geometry"]["coordinates"]])
    dist = _match(points, np.array([[t.cx, t.cy] for t in truth.nuclei]))
    assert np.mean(dist <= 1.0) >= 0.97
    assert res["mean_nucleus_area_um2"] == pytest.approx(math.pi * RADIUS_UM ** 2, rel=0.15)
