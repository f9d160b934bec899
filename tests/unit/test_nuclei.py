"""The nuclei graphs (colour deconvolution in ONNX) and the nucleus post-processing, on small arrays."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from scipy import ndimage
from skimage import measure

from scanbridge.domain.catalog import BUILTIN_SPECS, BuiltinCatalog, default_model_for
from scanbridge.inference.nuclei import (
    NucleusParams,
    _inertia,
    blob_seeds,
    find_nuclei,
    measure_nuclei,
    params_for,
    split_nuclei,
)
from scanbridge.inference.zoo import HED_FROM_RGB, build_ihc_model, build_nuclei_model

COLOURS = {"glass": (240, 240, 240), "stroma": (232, 150, 192), "dark_stroma": (186, 120, 154),
           "haematoxylin": (80, 60, 140), "dab": (140, 90, 40)}


def _run(model: bytes, colours: dict[str, tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Stains as 3 µm-radius discs (6 px at 0.5 µm/px) on stroma, the rest flat: outputs at the centre."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    disc = _discs((48, 48), [(24.0, 24.0, 6.0)])[None] > 0
    stroma = np.array(COLOURS["stroma"], np.uint8).reshape(3, 1, 1)
    batch = np.stack([np.where(disc, np.array(c, np.uint8).reshape(3, 1, 1),
                               stroma if name in ("haematoxylin", "dab") else np.array(c, np.uint8).reshape(3, 1, 1))
                      for name, c in colours.items()])
    prob, stains = session.run(None, {"image": np.ascontiguousarray(batch)})
    return prob[:, :, 24, 24], stains[:, :, 24, 24]


def _discs(shape: tuple[int, int], discs: list[tuple[float, float, float]]) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    out = np.zeros(shape, dtype=np.float32)
    for cx, cy, r in discs:  # continuous coordinates: pixel (i, j) centre is (j + 0.5, i + 0.5)
        out[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r] = 1.0
    return out


def test_nuclei_graph_deconvolves_with_the_ruifrok_matrix() -> None:
    # GIVEN the nuclei graph and flat patches of glass, stroma, haematoxylin and DAB
    model = build_nuclei_model()
    # WHEN it runs
    prob, stains = _run(model, COLOURS)
    # THEN haematoxylin and DAB discs are nuclei (DAB-stained nuclei are nuclei too), flat glass and stroma
    # are not (no contrast over their local background), and stain_od is OD (-log10) times the inverse H-E-DAB matrix
    p = dict(zip(COLOURS, prob[:, 0], strict=True))
    assert p["haematoxylin"] > 0.99 and p["dab"] > 0.99
    assert max(p["glass"], p["stroma"], p["dark_stroma"]) < 0.05
    rgb = np.array(list(COLOURS.values()), np.float64)
    expected = np.maximum(-np.log10((rgb + 1) / 256) @ HED_FROM_RGB, 0)
    np.testing.assert_allclose(stains, expected, atol=1e-4)
    # AND the deconvolution is a 1x1 convolution inside the graph (the others are the separable Gaussians)
    graph = onnx.load_from_string(model).graph
    assert next(tuple(n.input) for n in graph.node if n.op_type == "Conv") == ("od", "hed_w")


def test_ihc_graph_finds_both_stains_and_flags_dab() -> None:
    # GIVEN the IHC graph / WHEN it runs on the same patches
    prob, _ = _run(build_ihc_model(), COLOURS)
    nucleus = dict(zip(COLOURS, prob[:, 0], strict=True))
    dab = dict(zip(COLOURS, prob[:, 1], strict=True))
    # THEN haematoxylin and DAB are both nuclei, only DAB has DAB density above its background (the positive
    # channel is an OD: thresholds.positive), stroma is neither
    assert nucleus["haematoxylin"] > 0.99 and nucleus["dab"] > 0.99
    positive = BUILTIN_SPECS["ihc-positivity"].thresholds["positive"]
    assert dab["dab"] > positive + 0.3 and dab["haematoxylin"] < 0.05
    assert max(nucleus["stroma"], nucleus["dark_stroma"], nucleus["glass"]) < 0.05


def test_touching_nuclei_are_split_and_measured_like_regionprops() -> None:
    # GIVEN two overlapping discs (r=6, 10 px apart) and a lone one
    prob = _discs((64, 80), [(20.0, 30.0, 6.0), (30.0, 30.0, 6.0), (60.0, 12.0, 5.5)])
    params = NucleusParams(min_distance=4, smooth_sigma=0.9, min_area_px=20, split_area_px=1.3 * math.pi * 36)
    # WHEN split and measured
    labels = split_nuclei(prob, params)
    nuclei = sorted(measure_nuclei(labels, params), key=lambda n: n.cx)
    # THEN three nuclei, centred within half a pixel of the truth
    assert len(nuclei) == 3
    for n, (cx, cy) in zip(nuclei, [(20.0, 30.0), (30.0, 30.0), (60.0, 12.0)], strict=True):
        assert abs(n.cx - cx) < 0.5 and abs(n.cy - cy) < 0.5
    # AND moments match scikit-image's regionprops (area, axes, eccentricity, orientation, extent)
    props = {round(p.centroid[1] + 0.5, 6): p for p in measure.regionprops(labels)}
    for n in nuclei:
        p = props[round(n.cx, 6)]
        assert n.area == p.area and n.extent == pytest.approx(p.extent)
        assert n.major_axis == pytest.approx(p.axis_major_length) and n.minor_axis == pytest.approx(p.axis_minor_length)
        assert n.eccentricity == pytest.approx(p.eccentricity, abs=1e-5)
        if p.eccentricity > 0.1:  # a disc's orientation is undefined
            assert math.sin(2 * n.orientation) == pytest.approx(math.sin(2 * p.orientation), abs=1e-6)
    # AND the lone disc is round: perimeter ~ 2 pi r, solidity ~ 1
    lone = nuclei[2]
    assert lone.perimeter == pytest.approx(2 * math.pi * 5.5, rel=0.08)
    assert lone.solidity > 0.95 and lone.eccentricity < 0.3


def test_keep_box_and_size_limits_filter_nuclei() -> None:
    # GIVEN a disc, a speck and a huge blob
    prob = _discs((100, 100), [(20.0, 20.0, 6.0), (70.0, 20.0, 1.5)])
    prob[60:100, 40:100] = 1.0
    params = NucleusParams(min_area_px=20, max_area_px=1000, split_area_px=1e9)
    labels = split_nuclei(prob, params)
    # WHEN measured / THEN only the disc survives the size limits
    assert [round(n.cx) for n in measure_nuclei(labels, params)] == [20]
    # AND a keep box that excludes its centroid drops it
    assert measure_nuclei(labels, params, keep=(21.0, 0.0, 100.0, 100.0)) == []


def test_stain_and_positive_means_are_per_nucleus() -> None:
    # GIVEN two discs, one on a positive map and stain planes with known values
    prob = _discs((40, 80), [(15.0, 20.0, 6.0), (55.0, 20.0, 6.0)])
    positive = np.zeros_like(prob)
    positive[:, 40:] = 0.9
    stains = np.stack([np.full_like(prob, 0.7), np.zeros_like(prob), positive * 1.1])
    params = NucleusParams(min_area_px=20)
    # WHEN measured
    left, right = sorted(measure_nuclei(split_nuclei(prob, params), params, stains=stains, positive=positive),
                         key=lambda n: n.cx)
    # THEN means are the plane values over each nucleus
    assert left.positive_score == pytest.approx(0.0) and right.positive_score == pytest.approx(0.9)
    assert right.stain_means == pytest.approx([0.7, 0.0, 0.99])


def _random_blobs(rng: np.random.Generator) -> np.ndarray:
    h, w = rng.integers(1, 16, 2)
    return (rng.random((h, w)) < rng.uniform(0.3, 0.95)).astype(np.float32)


def test_holes_are_filled_and_components_labelled_like_scipy() -> None:
    # GIVEN random speckled maps (holes, diagonal touches, blobs on the border)
    rng = np.random.default_rng(5)
    params = NucleusParams(min_area_px=0, split_area_px=1e9)
    for _ in range(300):
        prob = _random_blobs(rng)
        # WHEN labelled
        labels = split_nuclei(prob, params)
        # THEN the foreground is scipy's binary_fill_holes and the labels its 4-connected components
        filled = ndimage.binary_fill_holes(prob >= 0.5)
        np.testing.assert_array_equal(labels > 0, filled)
        assert labels.max() == ndimage.label(filled)[1]


def test_outlines_are_scikit_images_contours_through_pixel_edge_middles() -> None:
    # GIVEN random shapes, one pixel and a domino among them, one nucleus at a time
    rng = np.random.default_rng(6)
    params = NucleusParams(min_area_px=0, max_area_px=1e9, split_area_px=1e9)
    maps = [np.ones((1, 1), np.float32), np.ones((1, 2), np.float32)] + [_random_blobs(rng) for _ in range(300)]
    for prob in maps:
        labels = split_nuclei(prob, params)
        for lab in range(1, int(labels.max()) + 1):
            one = (labels == lab).astype(np.int32)
            # WHEN measured
            (n,) = measure_nuclei(one, params)
            # THEN the outline is find_contours(.., 0.5) of the nucleus: same vertices, order and orientation
            ring = max(measure.find_contours(np.pad(one.astype(np.float32), 1), 0.5), key=len)[:-1]
            expected = np.column_stack([ring[:, 1] - 0.5, ring[:, 0] - 0.5])
            start = int(np.flatnonzero((n.contour == expected[0]).all(axis=1))[0])
            np.testing.assert_array_equal(np.roll(n.contour, -start, axis=0), expected)
            # AND its area is the pixel area less at most a quarter pixel per unit of outline
            x, y = n.contour[:, 0], n.contour[:, 1]
            poly_area = abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2
            assert n.area - n.perimeter / 4 <= poly_area < n.area


def test_objects_measured_together_are_measured_as_each_one_alone() -> None:
    """A window's objects are measured at once (one border following for all, sums per label); touching ones
    must still get the outline and figures they get alone."""
    # GIVEN label images whose objects touch: side by side, corner to corner, one in another's hole touching
    # it at a corner, and random speckle (4-connected components touch diagonally everywhere)
    rng = np.random.default_rng(8)
    params = NucleusParams(min_area_px=0, max_area_px=1e9, split_area_px=1e9)
    ring = np.zeros((12, 12), np.int32)
    ring[1:11, 1:11] = 1
    ring[3:9, 3:9] = 0
    ring[4:6, 4:6] = 2
    ring[3, 3] = 3  # touches the ring and, at a corner, object 2
    pairs = np.zeros((8, 12), np.int32)
    pairs[1:4, 1:4], pairs[1:4, 4:7], pairs[4:6, 7:9] = 1, 2, 3
    speckle = [ndimage.label(_random_blobs(rng) > 0)[0].astype(np.int32) for _ in range(200)]
    touching = 0
    for labels in [ring, pairs, *speckle]:
        grown = ndimage.grey_dilation(labels, size=(3, 3))
        touching += int(((grown != labels) & (labels > 0)).any())
        # WHEN all are measured at once
        together = measure_nuclei(labels, params)
        # THEN each object's outline and measurements are the ones it gets alone
        assert sorted(n.label for n in together) == sorted(set(labels.ravel().tolist()) - {0})
        for n in together:
            (alone,) = measure_nuclei((labels == n.label).astype(np.int32), params)
            np.testing.assert_array_equal(n.contour, alone.contour)
            assert (n.cx, n.cy, n.area, n.perimeter, n.solidity, n.extent, n.eccentricity, n.orientation) == \
                (alone.cx, alone.cy, alone.area, alone.perimeter, alone.solidity, alone.extent, alone.eccentricity,
                 alone.orientation)
    # AND objects did touch in most images (the case the shared border following must not get wrong)
    assert touching > 100


def _blurred(shape: tuple[int, int], discs: list[tuple[float, float, float]], strokes: list[tuple[int, int, int, int]],
             *, od: float = 0.6, base: float = 0.3) -> np.ndarray:
    """A haematoxylin plane: `base` OD, discs and 3-px strokes (x0, y0, x1, y1) at `od`, blurred like an image."""
    import cv2

    plane = np.full(shape, base, np.float32)
    plane[_discs(shape, discs) > 0] = od
    for x0, y0, x1, y1 in strokes:
        cv2.line(plane, (x0, y0), (x1, y1), od, thickness=5)
    return ndimage.gaussian_filter(plane, 0.7)


def test_blob_seeds_are_on_nuclei_not_on_fibres_or_inside_dark_regions() -> None:
    # GIVEN a pale-background plane with a round nucleus, an oval one (7 x 3 µm), a long fibre (5 px wide),
    # a bent fibre and a large dark region (20 x 20 µm), at 0.5 µm/px; the mask is everything above the base
    p = params_for(BUILTIN_SPECS["nuclei"].outputs, {}, 0.5)
    plane = _blurred((120, 160), [(20.0, 20.0, 5.0)], [(70, 100, 150, 100), (20, 60, 60, 60), (60, 60, 60, 100)])
    plane[10:50, 100:140] = 0.6
    yy, xx = np.mgrid[0:120, 0:160]
    oval = ((xx + 0.5 - 60) / 7.0) ** 2 + ((yy + 0.5 - 25) / 3.0) ** 2 <= 1.0
    plane[oval] = 0.6
    # WHEN seeds are looked for
    seeds = blob_seeds(plane, plane > 0.35, p)
    # THEN each nucleus has seeds within 2 px of its centre (a flat top may hold several), and every seed is
    # on a nucleus: none on the fibres or in the region
    centres = np.array([(20.0, 20.0), (60.0, 25.0)])
    d = np.hypot(seeds[:, 1, None] + 0.5 - centres[:, 0], seeds[:, 0, None] + 0.5 - centres[:, 1])
    assert (d.min(axis=0) <= 2.0).all() and (d.min(axis=1) <= 2.0).all(), seeds
    # AND a nucleus as pale as an IHC counterstain (0.15 OD over 0.05) is a seed too; half that contrast is not
    for od, found in ((0.2, True), (0.08, False)):
        pale = _blurred((60, 60), [(30.0, 30.0, 5.0)], [], od=od, base=0.05)
        assert (len(blob_seeds(pale, pale > 0.06, p)) > 0) is found


def test_objects_without_a_blob_seed_or_ringed_by_glass_are_dropped() -> None:
    # GIVEN nucleus-probability pieces: a nucleus in stroma, a fibre piece, and a nucleus-sized fragment
    # alone on glass, with their haematoxylin plane and stain densities (stroma 0.3 OD, glass 0)
    shape = (80, 160)
    h = _blurred(shape, [(20.0, 40.0, 5.0)], [(60, 40, 100, 40)])
    h[:, 120:] = 0.0
    h[_discs(shape, [(140.0, 40.0, 5.0)]) > 0] = 0.6
    prob = (h > 0.45).astype(np.float32)
    stains = np.stack([h, np.zeros_like(h), np.zeros_like(h)])
    # WHEN nuclei are found with the nuclei spec's blob test, and without it
    spec = BUILTIN_SPECS["nuclei"]
    p = params_for(spec.outputs, spec.thresholds, 0.5)
    with_test = find_nuclei(prob, p, stains=stains)
    without = find_nuclei(prob, params_for({**spec.outputs, "blob_contrast": 0.0}, spec.thresholds, 0.5), stains=stains)
    # THEN only the nucleus in stroma stays (the fibre has no seed, the fragment's ring is all glass)
    centres = {(round(n.cx), round(n.cy)) for n in without}
    assert {(20, 40), (140, 40)} <= centres and any(60 <= x <= 100 for x, _ in centres)
    assert [(round(n.cx), round(n.cy)) for n in with_test] == [(20, 40)]


def test_params_scale_with_the_model_pixel_size() -> None:
    # GIVEN the nuclei spec (3 µm radius) / WHEN read at 0.5 µm/px / THEN sizes are in model pixels
    spec = BUILTIN_SPECS["nuclei"]
    p = params_for(spec.outputs, spec.thresholds, 0.5)
    assert p.min_distance == 4 and p.min_area_px == pytest.approx(6.0 / 0.25)
    assert p.split_area_px == pytest.approx(1.3 * math.pi * 36)


@pytest.mark.parametrize(("stain", "model"), [("Ki67", "ihc-positivity"), ("Ki-67", "ihc-positivity"),
                                              ("mib-1", "ihc-positivity"), ("HE", "tissue"), ("H&E", "tissue"),
                                              ("PAS", "tissue"), (None, "tissue"), ("", "tissue")])
def test_default_model_per_stain(stain: str | None, model: str) -> None:
    # GIVEN the built-in catalog / WHEN a stain has no model named / THEN its default model is chosen
    assert default_model_for(stain, BuiltinCatalog()) == model


def test_builtin_catalog_lists_the_three_models() -> None:
    # GIVEN / WHEN / THEN the catalog has tissue, nuclei and ihc-positivity, each with a stain list
    catalog = BuiltinCatalog()
    assert catalog.names() == ["ihc-positivity", "nuclei", "tissue"]
    assert catalog.spec("ihc-positivity").accepts_stain("ki-67")
    assert catalog.spec("nuclei").kind == "segmentation" and catalog.spec("nuclei").mpp == 0.5


def _inertia_of_one(area: float, mu20: float, mu02: float, mu11: float) -> tuple[float, float, float, float]:
    """The shape figures of one object from its central moments, with Python's math (what _inertia vectorises)."""
    var_c, var_r, cov = mu20 / area, mu02 / area, mu11 / area
    half_tr, root = (var_c + var_r) / 2.0, math.sqrt(((var_c - var_r) / 2.0) ** 2 + cov * cov)
    l1, l2 = max(half_tr + root, 0.0), max(half_tr - root, 0.0)
    orientation = ((-math.pi / 4 if cov > 0 else math.pi / 4) if var_c - var_r == 0
                   else 0.5 * math.atan2(2.0 * cov, var_r - var_c))
    ecc = math.sqrt(min(max(1.0 - l2 / l1, 0.0), 1.0)) if l1 > 0 else 0.0
    return ecc, orientation, 4.0 * math.sqrt(l1), 4.0 * math.sqrt(l2)


def test_shape_figures_of_many_objects_are_those_of_each_alone_bit_for_bit() -> None:
    # GIVEN central moments of many objects: random ones, and round ones (equal variances), axis-aligned,
    # lines (one variance zero), points, and lines at 45 degrees (the tensor's second eigenvalue zero)
    rng = np.random.default_rng(3)
    n = 60_000
    area = rng.integers(1, 2000, n).astype(np.float64)
    mu20, mu02 = rng.uniform(0, 50, n) * area, rng.uniform(0, 50, n) * area
    mu11 = rng.normal(0, 10, n) * area
    mu02[:5000] = mu20[:5000]
    mu11[5000:10000] = 0.0
    mu02[10000:15000], mu11[10000:15000] = 0.0, 0.0
    mu20[15000:17000], mu02[15000:17000], mu11[15000:17000] = 0.0, 0.0, 0.0
    mu11[17000:20000] = np.sqrt(mu20[17000:20000] * mu02[17000:20000])
    # WHEN they are computed at once
    got = _inertia(area, mu20, mu02, mu11)
    # THEN each figure is the one Python's math gives the object alone, to the bit
    want = [_inertia_of_one(*m) for m in zip(area.tolist(), mu20.tolist(), mu02.tolist(), mu11.tolist(), strict=True)]
    for k, figure in enumerate(got):
        assert figure.tobytes() == np.array([w[k] for w in want], dtype=np.float64).tobytes()
