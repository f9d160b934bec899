"""The built-in nuclei models on real tissue no one here wrote (issue #18), against an independent classical
method (scikit-image's rgb2hed + Otsu + distance-transform watershed) and a count by eye.

Images: scikit-image's `data.immunohistochemistry()` (real colon IHC: DAB on membranes and cytoplasm, blue
nuclei; shipped in the wheel; 0.5 µm/px assumed) and the real H&E skin tile the thirdparty mosaic repeats.
Count by eye (written down in docs/built-in-models.md): the IHC crop x 100..228, y 380..508 rendered 6x with a 16 µm
grid and counted cell by cell: about 30 nuclei (16 in the gland, 14 in the stroma). The skin tile by eye (6x, 8 µm
grid): 7 clear oval nuclei in the upper epidermis, an unresolvable dark basal band, a few dermal spindle
nuclei: 15-30. The nuclei model deconvolves with the scan's own stain vectors (Macenko, once per scan).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from scanbridge.devtools import real_images as real
from scanbridge.domain.catalog import BUILTIN_SPECS
from scanbridge.imaging.readers.memory import MemoryReader
from scanbridge.imaging.tissue import tissue_mask
from scanbridge.inference import stains
from scanbridge.inference.nuclei import NucleusParams, params_for, split_nuclei
from scanbridge.inference.objects import run_objects, scan_stain_vectors
from scanbridge.inference.runner import ModelLoader
from scanbridge.inference.session import OnnxModel
from scanbridge.inference.zoo import build_nuclei_model
from scanbridge.services.evaluation import evaluate_masks
from tests.conftest import fixture_path

CROP = (100, 380, 128)  # x0, y0, side of the crop counted by eye
EYE_COUNT = 30


@pytest.fixture(scope="module")
def ihc() -> tuple[np.ndarray, np.ndarray]:
    image = real.ihc_image()
    return image, real.classical_nuclei(image, real.IHC_MPP)


@pytest.fixture(scope="module")
def ihc_nuclei(ihc: tuple[np.ndarray, np.ndarray]) -> real.Run:
    return real.run_builtin("nuclei", ihc[0], real.IHC_MPP)


@pytest.fixture(scope="module")
def ihc_positivity(ihc: tuple[np.ndarray, np.ndarray]) -> real.Run:
    return real.run_builtin("ihc-positivity", ihc[0], real.IHC_MPP)


def test_nuclei_on_real_ihc_are_where_the_classical_method_and_the_eye_put_them(
        ihc: tuple[np.ndarray, np.ndarray], ihc_nuclei: real.Run) -> None:
    # GIVEN a real IHC colon image and the classical method's nuclei
    _, reference = ihc
    # WHEN the nuclei model runs on it (the worker's analyze_scan, in memory)
    run = ihc_nuclei
    # THEN the count is plausible for 0.066 mm² of colon (the eye's crop density x the image: ~480)
    assert 300 <= run.count <= 650, run.count
    # AND nine in ten of its nuclei lie on the classical method's nuclei, which it covers most of
    assert real.inside_share(run.centroids, reference) >= 0.85
    assert run.labels is not None
    ev = evaluate_masks(run.labels, reference)
    assert ev.jaccard >= 0.5, ev
    # AND in the crop counted by eye it finds about as many (within 30 %)
    x0, y0, side = CROP
    c = run.centroids
    in_crop = int(((c[:, 0] >= x0) & (c[:, 0] < x0 + side) & (c[:, 1] >= y0) & (c[:, 1] < y0 + side)).sum())
    assert abs(in_crop - EYE_COUNT) <= 0.3 * EYE_COUNT, in_crop


def test_dab_on_membranes_is_not_read_as_positive_nuclei(ihc: tuple[np.ndarray, np.ndarray],
                                                         ihc_positivity: real.Run) -> None:
    # GIVEN the same image: a membrane / cytoplasm marker, its nuclei blue
    _, reference = ihc
    # WHEN the ihc-positivity model runs
    run = ihc_positivity
    # THEN nearly no nucleus is positive (it called 87 % before), and the few positive points lie on nuclei
    assert run.count >= 300 and run.results["positivity_percent"] <= 5.0, run.results["positivity_percent"]
    positive = run.centroids[run.positive]
    if len(positive):
        assert (real.inside_share(positive, reference) or 0.0) >= 0.8
    # AND the membranes are reported where they belong: in the cell compartment, most epithelial cells
    assert 40.0 <= run.results["cell_positivity_percent"] <= 90.0, run.results["cell_positivity_percent"]
    assert run.results["h_score"] <= 15.0


#: the clear oval nuclei of the skin tile's upper epidermis, counted by eye (x, y in px; rendered 6x, 8 µm grid)
SKIN_EYE_NUCLEI = [(38, 4), (165, 5), (160, 20), (212, 16), (85, 21), (66, 38), (30, 44)]


def test_nuclei_on_real_skin_are_few_and_on_the_nuclei_the_eye_sees() -> None:
    """The skin tile by eye (6x, 8 µm grid): 7 clear oval nuclei in the upper epidermis, a dark basal band
    whose nuclei cannot be told apart at 0.5 µm/px, a few spindle nuclei in the dermis: 15-30 in all."""
    # GIVEN the real H&E skin tile (240 x 240 px, 0.5 µm/px: epidermis over dermal collagen, one purple)
    rgb, mpp = real.skin_tile(fixture_path("thirdparty/vips_pyramid_jpeg.tif").parents[1])
    # WHEN the nuclei model runs (its blob test drops the collagen fibres and the epidermis's flat inside:
    # 180 objects without it)
    run = real.run_builtin("nuclei", rgb, mpp)
    # THEN the count is within twice the eye's 15-30
    assert 10 <= run.count <= 60, run.count
    # AND at least 5 of the 7 clear nuclei have a detection centred within 3 µm
    eye = np.array(SKIN_EYE_NUCLEI, dtype=np.float64)
    near = np.hypot(run.centroids[:, None, 0] - eye[:, 0], run.centroids[:, None, 1] - eye[:, 1]).min(axis=0)
    assert int((near <= 3.0 / mpp).sum()) >= 5, near


class RecordingModel(OnnxModel):
    """The real nuclei model, recording the optional inputs of every run (a fake's bookkeeping, real inference)."""

    def __init__(self, model: OnnxModel) -> None:
        self.__dict__.update(model.__dict__)
        self.fed: list[dict[str, np.ndarray]] = []

    def run(self, batch: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        self.fed.append({k: np.array(v) for k, v in (inputs or {}).items()})
        return super().run(batch, inputs)


def test_the_nuclei_model_gets_one_stain_matrix_per_scan_estimated_from_its_tissue(ihc_nuclei: real.Run) -> None:
    # GIVEN the real IHC colon image (haematoxylin and DAB, no eosin) in 128-px tiles (so several batches)
    image = real.ihc_image()
    reader = MemoryReader(image, mpp=real.IHC_MPP)
    model = RecordingModel(ModelLoader(prefer_gpu=False).load("nuclei"))
    # WHEN the nuclei model runs over it
    run = run_objects(reader, model, tissue_mask(image), 1.0, tile_size=128, overlap=32, batch_size=4, min_tissue=0.0)
    # THEN every batch was fed the same matrix: the scan's Macenko estimate (haematoxylin + DAB), not the reference
    assert len(model.fed) >= 4
    matrices = [f[stains.STAIN_INPUT] for f in model.fed]
    assert all(np.array_equal(m, matrices[0]) for m in matrices)
    assert run.stain_vectors is not None and run.stain_vectors.method == "macenko"
    assert run.stain_vectors.second == "DAB"
    np.testing.assert_array_equal(matrices[0], scan_stain_vectors(reader, run.grid).deconvolution)
    assert not np.allclose(matrices[0], stains.HED_FROM_RGB, atol=0.05)
    # AND the scan's result reports it (method, vectors, angles from the reference) and its summary says so
    sv = ihc_nuclei.results["stain_vectors"]
    assert sv["method"] == "macenko" and sv["second_stain"] == "DAB"
    assert 0 < sv["angle_from_reference_deg"]["Hematoxylin"] <= stains.MAX_ANGLE_DEG
    assert ihc_nuclei.results["report"]["summary"]["Stain vectors"].startswith("estimated from the scan (Macenko")


def test_the_one_purple_skin_tile_keeps_the_reference_vectors_and_says_why() -> None:
    # GIVEN the real H&E skin tile, where nuclei, cytoplasm and collagen are shades of one purple
    rgb, _ = real.skin_tile(fixture_path("thirdparty/vips_pyramid_jpeg.tif").parents[1])
    # WHEN its stain vectors are estimated as the nuclei model's run does
    est = stains.estimate_from_tiles([rgb])
    # THEN the "eosin" direction lies nearer the haematoxylin reference: the reference vectors, with the reason
    assert est.method == "reference" and "nearer the Hematoxylin reference" in est.reason
    np.testing.assert_array_equal(est.vectors, stains.RGB_FROM_HED)


def test_real_images_need_no_download() -> None:
    # GIVEN scikit-image's sample data / WHEN the IHC image loads / THEN it comes from the installed package
    from skimage import data

    assert Path(data.__file__).parent.joinpath("ihc.png").exists()
    assert real.ihc_image().shape == (512, 512, 3)


def _split_each_alone(prob: np.ndarray, params: NucleusParams) -> tuple[np.ndarray, int]:
    """The split as its definition reads, each component alone in its crop (scipy and scikit-image, one call
    of each per component): the reference for `split_nuclei`'s one pass over the window. Also how many
    components it split."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    labels, count = ndimage.label(ndimage.binary_fill_holes(prob >= params.threshold))
    out, fresh, split = labels.copy(), count + 1, 0
    for lab_id, box in enumerate(ndimage.find_objects(labels), start=1):
        area = int((labels[box] == lab_id).sum())
        if (box[0].stop - box[0].start) * (box[1].stop - box[1].start) <= params.split_area_px \
                or area <= params.split_area_px:
            continue
        r0, c0 = max(box[0].start - 1, 0), max(box[1].start - 1, 0)
        crop = (slice(r0, box[0].stop + 1), slice(c0, box[1].stop + 1))
        mask = labels[crop] == lab_id
        dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), params.smooth_sigma) * mask
        peaks = peak_local_max(dist, min_distance=params.min_distance, threshold_abs=0.5, exclude_border=False)
        if len(peaks) <= 1:
            continue
        markers = np.zeros(mask.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        pieces = watershed(-dist, markers, mask=mask)
        split += 1
        for k in range(2, len(peaks) + 1):
            out[crop][pieces == k] = fresh
            fresh += 1
    return out, split


def test_the_split_of_real_nuclei_in_one_pass_is_the_split_of_each_component_alone() -> None:
    # GIVEN the nuclei model's probability map of a 512² window of the real H&E mosaic (at its 0.5 µm/px: most
    # nuclei there are bigger than one, and dozens touch), and what splitting each component alone gives
    rgb, mpp = real.mosaic_image(fixture_path("thirdparty").parent)
    spec = BUILTIN_SPECS["nuclei"]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the graph's overridable stain input is on purpose
    session = ort.InferenceSession(build_nuclei_model(), options, providers=["CPUExecutionProvider"])
    window = np.ascontiguousarray(rgb[:512, :512].transpose(2, 0, 1)[None])  # NCHW, as the graph takes it
    prob = session.run([spec.output_name], {spec.input_name: window})[0][0, 0]
    params = params_for(spec.outputs, spec.thresholds, mpp)
    want, split = _split_each_alone(prob, params)
    assert split >= 50
    # WHEN the window is split in one pass
    got = split_nuclei(prob, params)
    # THEN the same nuclei: as many, and each pixel in the piece that matches its reference piece
    assert (got > 0).sum() == (want > 0).sum()
    n_got, n_want = len(np.unique(got)) - 1, len(np.unique(want)) - 1
    assert abs(n_got - n_want) <= 0.01 * n_want and n_got > 200, (n_got, n_want)
    fg = want > 0
    pairs, counts = np.unique(np.stack([want[fg], got[fg]]), axis=1, return_counts=True)
    best: dict[int, int] = {}
    for (ref, _piece), c in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        best[ref] = max(best.get(ref, 0), c)
    assert sum(best.values()) >= 0.999 * fg.sum(), sum(best.values()) / fg.sum()
