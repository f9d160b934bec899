"""Per-scan stain vectors (inference/stains.py): Macenko's estimate, its limits, and the graphs that take it."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

from scanbridge.domain.catalog import NUCLEI_SPEC
from scanbridge.domain.errors import InferenceError
from scanbridge.inference import stains
from scanbridge.inference.session import OnnxModel
from scanbridge.inference.zoo import build_ihc_model, build_nuclei_model


def _rotated(v: np.ndarray, axis: np.ndarray, degrees: float) -> np.ndarray:
    """`v` turned by `degrees` about `axis` (Rodrigues), as a unit vector."""
    k = axis / np.linalg.norm(axis)
    t = math.radians(degrees)
    out = v * math.cos(t) + np.cross(k, v) * math.sin(t) + k * np.dot(k, v) * (1 - math.cos(t))
    return np.asarray(out / np.linalg.norm(out))


def _stained(h: np.ndarray, other: np.ndarray, n: int = 40_000, seed: int = 0) -> np.ndarray:
    """RGB uint8 pixels by Beer-Lambert from two stain vectors: pure haematoxylin, pure other and mixtures."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0.2, 1.2, size=(n, 2))
    conc[: n // 4, 1] = 0.0  # pure haematoxylin (nuclei)
    conc[n // 4: n // 2, 0] = 0.0  # pure eosin / DAB (stroma, membranes)
    od = conc @ np.stack([h, other])
    return np.clip(np.rint(256.0 * 10.0 ** -od - 1.0), 0, 255).astype(np.uint8)


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v))


H, E, D = (_unit(v) for v in stains.RGB_FROM_HED)


def test_macenko_recovers_the_stain_vectors_of_a_scan_whose_stains_differ_from_the_reference() -> None:
    # GIVEN pixels stained with haematoxylin and eosin 12° and 10° away from Ruifrok-Johnston's vectors
    h_true, e_true = _rotated(H, np.array([0.0, 0.0, 1.0]), 12.0), _rotated(E, np.array([1.0, 0.0, 0.0]), 10.0)
    pixels = _stained(h_true, e_true)
    # WHEN the stain vectors are estimated
    est = stains.estimate(pixels)
    # THEN haematoxylin is the scan's (within 2°, uint8 rounding aside), not the reference's; eosin is nearer
    # the scan's than the reference is (pure eosin, with a red OD below Macenko's beta, drops out: the 1st
    # percentile angle is a pixel with a little haematoxylin)
    assert est.method == "macenko" and est.second == "Eosin"
    assert stains.angle_deg(est.vectors[0], h_true) < 2.0 and est.angles_deg["Hematoxylin"] > 10.0
    assert stains.angle_deg(est.vectors[1], e_true) < 0.6 * stains.angle_deg(E, e_true)
    # AND the third row is the reference DAB vector
    np.testing.assert_array_equal(est.vectors[2], D)
    # AND the deconvolution reads the scan's haematoxylin as haematoxylin only (one unit, no eosin)
    dens = h_true @ est.deconvolution
    assert abs(dens[0] - 1.0) < 0.05 and abs(dens[1]) < 0.05
    # AND the result's JSON names the method, the vectors and the angles
    js = est.to_json()
    assert js["method"] == "macenko" and js["second_stain"] == "Eosin" and len(js["vectors"]["Hematoxylin"]) == 3


def test_an_h_dab_scan_gets_its_dab_vector_and_its_dab_reads_as_no_haematoxylin() -> None:
    # GIVEN pixels of haematoxylin and DAB only (an IHC scan), DAB 8° off its reference
    d_true = _rotated(D, np.array([0.0, 1.0, 0.0]), 8.0)
    pixels = _stained(H, d_true)
    # WHEN estimated
    est = stains.estimate(pixels)
    # THEN the second stain is DAB, in the DAB row, the eosin row the reference's
    assert est.method == "macenko" and est.second == "DAB"
    assert stains.angle_deg(est.vectors[2], d_true) < 2.0
    np.testing.assert_array_equal(est.vectors[1], E)
    # AND the scan's brown reads as no haematoxylin, while the DAB density keeps the reference's scale
    od_d = stains.optical_density(pixels[10_000:20_000])  # the pure-DAB quarter
    assert np.abs(od_d @ est.deconvolution[:, 0]).max() < 0.05
    np.testing.assert_allclose(est.deconvolution[:, 2], stains.HED_FROM_RGB[:, 2], rtol=1e-6)


@pytest.mark.parametrize(("pixels", "reason"), [
    # nearly all glass: too few stained pixels
    (np.full((100_000, 3), 245, np.uint8), "stained pixels"),
    # two stains far from any reference (green and yellow dyes)
    (_stained(_unit(np.array([0.9, 0.1, 0.9])), _unit(np.array([0.05, 0.1, 0.99]))), "from its reference"),
])
def test_an_implausible_estimate_falls_back_to_the_reference_and_says_why(pixels: np.ndarray, reason: str) -> None:
    # GIVEN pixels a Macenko estimate cannot be trusted on / WHEN estimated
    est = stains.estimate(pixels)
    # THEN the reference vectors come back, with the reason
    assert est.method == "reference"
    np.testing.assert_array_equal(est.vectors, stains.RGB_FROM_HED)
    assert reason in est.reason and est.reason in est.summary()


def test_one_purple_for_both_stains_falls_back_rather_than_calling_it_eosin() -> None:
    # GIVEN a scan whose second stain is purple: within 30° of the eosin reference, nearer the haematoxylin one
    purple = _unit(0.55 * H + 0.45 * E)
    assert stains.angle_deg(purple, E) < stains.MAX_ANGLE_DEG and stains.angle_deg(purple, H) < stains.angle_deg(purple, E)
    # WHEN estimated
    est = stains.estimate(_stained(H, purple))
    # THEN the reference vectors: an "eosin" nearer the haematoxylin reference is not eosin
    assert est.method == "reference" and "nearer the Hematoxylin reference" in est.reason


def test_the_nuclei_graph_deconvolves_with_the_matrix_it_is_fed_and_the_ihc_graph_takes_none() -> None:
    # GIVEN the nuclei graph, a tile and an estimated matrix
    rgb = np.random.default_rng(1).integers(0, 256, size=(1, 3, 32, 32), dtype=np.uint8)
    est = stains.estimate(_stained(_rotated(H, np.array([0.0, 0.0, 1.0]), 12.0), E))
    session = ort.InferenceSession(build_nuclei_model(), providers=["CPUExecutionProvider"])
    # WHEN run without and with the scan's matrix
    default = session.run(["stain_od"], {"image": rgb})[0]
    fed = session.run(["stain_od"], {"image": rgb, stains.STAIN_INPUT: est.deconvolution})[0]
    # THEN unfed it is the reference deconvolution, fed it is the scan's
    od = stains.optical_density(rgb[0].transpose(1, 2, 0))
    np.testing.assert_allclose(default[0].transpose(1, 2, 0), np.maximum(od @ stains.HED_FROM_RGB, 0), atol=1e-4)
    np.testing.assert_allclose(fed[0].transpose(1, 2, 0), np.maximum(od @ est.deconvolution, 0), atol=1e-4)
    # AND the IHC graph keeps the reference matrix (its positivity thresholds are set on it): no such input
    ihc = ort.InferenceSession(build_ihc_model(), providers=["CPUExecutionProvider"])
    names = {i.name for i in ihc.get_inputs()} | {i.name for i in ihc.get_overridable_initializers()}
    assert names == {"image"}


@pytest.mark.parametrize("io_binding", [False, True])
def test_a_model_run_feeds_the_optional_inputs_it_is_given_and_refuses_others(io_binding: bool) -> None:
    # GIVEN the nuclei model on CPU, with and without I/O binding
    model = OnnxModel(NUCLEI_SPEC, build_nuclei_model(), prefer_gpu=False, io_binding=io_binding)
    assert stains.STAIN_INPUT in model.optional_inputs
    batch = np.random.default_rng(2).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    scan = np.linalg.inv(np.array([_rotated(H, np.array([0.0, 0.0, 1.0]), 15.0), E, D])).astype(np.float32)
    # WHEN it runs with the reference, then with another matrix, then the reference again (bound buffers reused)
    ref = model.run(batch)["stain_od"]
    other = model.run(batch, {stains.STAIN_INPUT: scan})["stain_od"]
    again = model.run(batch)["stain_od"]
    # THEN the fed matrix is used for that run only
    expected = np.maximum(stains.optical_density(batch) @ scan, 0).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(other, expected, atol=1e-4)
    assert not np.allclose(ref, other, atol=1e-3)
    np.testing.assert_allclose(again, ref, atol=1e-6)
    # AND an input the graph does not take is refused by name
    with pytest.raises(InferenceError, match="no input 'gamma'"):
        model.run(batch, {"gamma": np.zeros(1, np.float32)})


def test_the_tiles_sampled_for_an_estimate_spread_over_the_scan() -> None:
    # GIVEN grids of 5 and 1000 tissue tiles / WHEN the sample is picked / THEN all of few, 16 spread over many
    assert stains.spread(5) == [0, 1, 2, 3, 4]
    many = stains.spread(1000)
    assert len(many) == stains.SAMPLE_TILES and many[0] == 0 and many[-1] == 999
    assert max(np.diff(many)) - min(np.diff(many)) <= 1
