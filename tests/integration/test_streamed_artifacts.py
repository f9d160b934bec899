"""The artifact step's memory: the artifacts read a streamed object result's features from its spool (the
same files as from the FeatureCollection in memory, without ever building that collection), and the warm
worker server makes the synthetic DICOM source's blank frame before it forks."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pytest

from scanbridge.adapters.local.memory import MemoryArtifactStore
from scanbridge.devtools import synth
from scanbridge.domain.feature_spool import FeatureSpool, StreamedScanResult
from scanbridge.domain.results import ScanResult
from scanbridge.domain.storage_keys import artifact_key
from scanbridge.imaging.scan import OpenedScan
from scanbridge.inference.objects import objects_result, run_objects
from scanbridge.inference.runner import ModelLoader
from scanbridge.services import artifacts as artifacts_service
from scanbridge.services.artifacts import ScanArtifactWriter
from tests.conftest import traced_peak


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenedScan, StreamedScanResult]]:
    """A synthetic slide (3072² at 0.5 µm/px, half tissue) open once, and the built-in nuclei model's
    streamed result on it: over a thousand nuclei, their spool mostly on disk."""
    path = tmp_path_factory.mktemp("streamed-artifacts") / "nuclei.svs"
    synth.make_slide(path, 3072, 3072, mpp=0.5, tissue_fraction=0.5, seed=5)
    model = ModelLoader(prefer_gpu=False).load("nuclei")
    with OpenedScan.open([path]) as scan:
        tissue = scan.tissue
        run = run_objects(scan.reader, model, tissue.mask, tissue.downsample)
        meta = scan.metadata
        result = objects_result("n", model, run, bounds=meta.dimensions, mpp=meta.mpp, tissue_mm2=tissue.area_mm2)
        assert isinstance(result, StreamedScanResult) and result.spool is not None
        yield scan, result
        result.spool.close()


def _write(scan: OpenedScan, result: ScanResult) -> dict[str, bytes]:
    store = MemoryArtifactStore()
    ScanArtifactWriter(store)("t", "n", scan, result)
    prefix = artifact_key("t", "n", "")
    return {key[len(prefix):]: store.get(key) or b"" for key in store.list(prefix)}


def _in_memory(result: StreamedScanResult) -> ScanResult:
    """The same result with its FeatureCollection as dicts (the path the artifacts took before)."""
    assert result.spool is not None
    return ScanResult(scanId=result.scanId, results=result.results,
                      geojson={"type": "FeatureCollection", "features": list(result.spool)})


def _annotation_groups(raw: bytes) -> dict[str, Any]:
    import highdicom as hd

    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(pydicom.dcmread(io.BytesIO(raw)))
    out: dict[str, Any] = {}
    for group in ann.get_annotation_groups():
        names, values, _units = group.get_measurements()
        out[group.label] = (np.concatenate(group.get_graphic_data("2D")), [n.meaning for n in names], values)
    return out


def test_streamed_artifacts_equal_the_in_memory_ones(nuclei: tuple[OpenedScan, StreamedScanResult]) -> None:
    # GIVEN a nuclei result of a few thousand features in a spool, and the same result as dicts
    scan, streamed = nuclei
    assert streamed.spool is not None
    count = len(streamed.spool)
    assert count >= 1000
    # WHEN the worker's artifacts are written from each
    got = _write(scan, streamed)
    want = _write(scan, _in_memory(streamed))
    # THEN the same files, the overlay, label mask and CSV byte for byte, one CSV row per nucleus
    assert set(got) == set(want) == {"overlay.png", "labels.npy", "objects.csv", "crops.zip", "annotations.dcm",
                                     "segmentation.dcm", "source.dcm"}
    for name in ("overlay.png", "labels.npy", "objects.csv"):
        assert got[name] == want[name], name
    rows = list(csv.DictReader(io.StringIO(got["objects.csv"].decode())))
    assert len(rows) == count and rows[-1]["label"] == str(count)
    assert int(np.load(io.BytesIO(got["labels.npy"])).max()) > count // 2
    # AND the crops ZIP holds the same members (its entries carry the time they were written)
    zg, zw = zipfile.ZipFile(io.BytesIO(got["crops.zip"])), zipfile.ZipFile(io.BytesIO(want["crops.zip"]))
    assert zg.namelist() == zw.namelist() and len(zg.namelist()) == 200 + 2  # the cap, index.csv, README.json
    assert all(zg.read(n) == zw.read(n) for n in zg.namelist())
    # AND the ANN holds the same groups, outlines and measurements (UIDs and times are new per file)
    ann_got, ann_want = _annotation_groups(got["annotations.dcm"]), _annotation_groups(want["annotations.dcm"])
    assert list(ann_got) == list(ann_want) and ann_got
    for label, (coords, names, values) in ann_got.items():
        assert np.array_equal(coords, ann_want[label][0]) and names == ann_want[label][1]
        assert np.array_equal(values, ann_want[label][2], equal_nan=True)
    assert sum(len(v[2]) for v in ann_got.values()) == count
    # AND the SEG the same segments and pixels
    seg_got = pydicom.dcmread(io.BytesIO(got["segmentation.dcm"]))
    seg_want = pydicom.dcmread(io.BytesIO(want["segmentation.dcm"]))
    assert [s.SegmentLabel for s in seg_got.SegmentSequence] == [s.SegmentLabel for s in seg_want.SegmentSequence]
    assert np.array_equal(seg_got.pixel_array, seg_want.pixel_array) and seg_got.pixel_array.any()


def test_the_artifact_step_never_builds_the_feature_collection(nuclei: tuple[OpenedScan, StreamedScanResult],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the streamed result, the same result cut to its first tenth of features, and what the whole
    # collection costs as dicts (per feature); the artifacts one after another, so that the step's peak
    # does not depend on which of them the threads happen to overlap
    monkeypatch.setattr(artifacts_service, "ARTIFACT_THREADS", 1)
    scan, streamed = nuclei
    assert streamed.spool is not None
    count = len(streamed.spool)
    tenth = FeatureSpool()
    for i, feature in enumerate(streamed.spool):
        if i < count // 10:
            tenth.append(feature)
    small = StreamedScanResult.from_spool(streamed.scanId, streamed.results, tenth)
    _write(scan, small)  # first use: imports, highdicom's tables, the thumbnail
    collection: list[Any] = []
    dicts_per_feature = traced_peak(lambda: collection.extend(streamed.spool or [])) / count
    collection.clear()
    # WHEN the artifact step runs on each, its allocations traced
    peak_small = traced_peak(lambda: _write(scan, small))
    peak_full = traced_peak(lambda: _write(scan, streamed))
    tenth.close()
    # THEN what the step's peak grows by per feature (the scan-sized masks and pictures cancel out) stays
    # well below a feature's dicts (measured: ~0.06 of them; building the collection: ~1.06)
    growth_per_feature = (peak_full - peak_small) / (count - len(tenth))
    assert dicts_per_feature > 2000
    assert growth_per_feature < 0.35 * dicts_per_feature, (growth_per_feature, dicts_per_feature)


def test_the_warm_server_makes_the_blank_source_frame_before_it_forks() -> None:
    # GIVEN no blank frame made yet in this process
    from scanbridge.entrypoints.worker import prepare
    from scanbridge.exports.dicom import SOURCE_TILE, blank_frame

    blank_frame.cache_clear()
    # WHEN the warm worker server prepares (what its forked tasks inherit)
    prepare()
    # THEN the 4096² frame is made (a few hundred bytes of JPEG-LS kept), and a source instance takes it as is
    assert blank_frame.cache_info().currsize == 1
    frame = blank_frame(SOURCE_TILE, SOURCE_TILE)
    assert blank_frame.cache_info().hits >= 1 and 0 < len(frame) < 10_000
    import imagecodecs

    assert (imagecodecs.jpegls_decode(frame) == 255).all()
