"""Quality control: the pure checks on generated images and slides, and the worker's QC step with fakes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from scanbridge.adapters.local.memory import MemoryArtifactStore, MemoryTaskStore
from scanbridge.devtools import synth
from scanbridge.domain.errors import CorruptScanError
from scanbridge.domain.results import QcFinding, ScanResult, qc_reasons, qupath_problems
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.storage_keys import scan_result_key
from scanbridge.domain.task import ScanState, Task
from scanbridge.imaging.qc import (
    BLURRY,
    NO_TISSUE,
    QcThresholds,
    check_blur,
    check_tissue,
    laplacian_variance,
    qc_scan,
    tile_origins,
    tissue_fraction,
)
from scanbridge.imaging.readers.memory import MemoryReader
from scanbridge.imaging.scan import OpenedScan
from scanbridge.services.processing import ProcessingService

REASONS = {"NO_TISSUE": "no tissue", "BLURRY": "blurry", "SCAN_CORRUPT": "unreadable"}


def _texture(seed: int = 0, size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (size, size))
    pink = np.stack([220 - 40 * base, 140 - 60 * base, 190 - 30 * base], axis=-1)
    return np.clip(pink, 0, 255).astype(np.uint8)


# --- pure checks ---------------------------------------------------------------------------------


def test_laplacian_variance_separates_sharp_from_blurred_texture() -> None:
    # GIVEN a sharp stained texture and the same texture blurred (sigma 1 and 3 px)
    sharp = _texture()
    soft = ndimage.gaussian_filter(sharp.astype(np.float32), sigma=(1, 1, 0)).astype(np.uint8)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), sigma=(3, 3, 0)).astype(np.uint8)
    # WHEN their Laplacian variance is measured / THEN it falls with the blur, by orders of magnitude
    v_sharp, v_soft, v_blur = (laplacian_variance(x) for x in (sharp, soft, blurred))
    assert v_sharp > 10 * v_soft > 10 * v_blur
    # AND a mask restricts it to tissue pixels; too few pixels count as no signal
    half = np.zeros(sharp.shape[:2], dtype=bool)
    half[:, :128] = True
    assert laplacian_variance(sharp, half) == pytest.approx(v_sharp, rel=0.2)
    assert laplacian_variance(sharp, np.zeros_like(half)) == 0.0


def test_tissue_check_flags_an_empty_mask_only() -> None:
    # GIVEN an empty thumbnail mask and one with a 5 % tissue patch
    empty = np.zeros((100, 100), dtype=bool)
    patch = empty.copy()
    patch[:5, :] = True
    # WHEN checked against a 0.1 % minimum
    no, yes = check_tissue(empty, 0.001), check_tissue(patch, 0.001)
    # THEN only the empty one fails, with a readable message and the measured fraction
    assert (no.code, no.passed, no.value) == (NO_TISSUE, False, 0.0) and "no tissue" in no.message
    assert yes.passed and tissue_fraction(patch) == pytest.approx(0.05)


def test_blur_check_uses_the_median_and_passes_when_not_assessable() -> None:
    # GIVEN tile sharpness values mostly below the minimum / WHEN checked / THEN BLURRY fails on the median
    check = check_blur([0.05, 0.1, 0.6], 0.15, mpp=0.5)
    assert (check.code, check.passed, check.value) == (BLURRY, False, 0.1) and "out of focus" in check.message
    # AND an absolute Laplacian floor, when set, also fails a scan whose sharpness passes
    floor = check_blur([0.3], 0.15, mpp=0.5, laplacian=[20.0], min_laplacian_var=70.0)
    assert not floor.passed and "Laplacian" in floor.message
    assert check_blur([0.3], 0.15, mpp=0.5, laplacian=[20.0]).passed  # floor off by default
    # AND with no tissue tile (scan too small, no pixel size) it is not assessed and does not fail
    unknown = check_blur([], 70.0, mpp=0.5)
    assert unknown.passed and not unknown.assessed and unknown.value is None


def test_tile_origins_pick_tissue_tiles_inside_the_slide() -> None:
    # GIVEN a 100x100 mask (downsample 10 -> a 1000x1000 slide) with tissue in its left half
    mask = np.zeros((100, 100), dtype=bool)
    mask[:, :50] = True
    # WHEN tiles of 200 level-0 px are picked
    origins = tile_origins(mask, 10.0, 200.0, 1000, 1000, max_tiles=4)
    # THEN at most 4, each at least half on tissue and inside the slide; none when a tile exceeds the slide
    assert 0 < len(origins) <= 4
    assert all(x + 100 <= 500 and y + 200 <= 1000 for x, y in origins)  # at least half on tissue
    assert tile_origins(mask, 10.0, 2000.0, 1000, 1000, max_tiles=4) == []


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("qc-slides")
    paths = {"sharp": out / "sharp.svs", "blur3": out / "blur3.svs", "blur4": out / "blur4.svs",
             "blank": out / "blank.svs"}
    synth.make_slide(paths["sharp"], 1536, 1536, tissue_fraction=0.5, seed=3)
    synth.make_slide(paths["blur3"], 1536, 1536, tissue_fraction=0.5, seed=3, blur_sigma=3.0)
    synth.make_slide(paths["blur4"], 1536, 1536, tissue_fraction=0.5, seed=4, blur_sigma=4.0)
    synth.make_slide(paths["blank"], 1536, 1536, blank=True)
    return paths


def test_qc_on_synthetic_slides_flags_blur_and_blank(slides: dict[str, Path]) -> None:
    # GIVEN synthetic slides: sharp, blurred (sigma 3 and 4 px at 0.25 um/px) and blank
    # WHEN the checks run with the default thresholds
    reports = {name: qc_scan([path]) for name, path in slides.items()}
    failed = {name: [f.code for f in r.failures] for name, r in reports.items()}
    # THEN the sharp slide passes, the blurred ones are BLURRY and the blank one has NO_TISSUE
    assert failed == {"sharp": [], "blur3": [BLURRY], "blur4": [BLURRY], "blank": [NO_TISSUE]}
    values = {name: {c["code"]: c["value"] for c in r.to_json()["checks"]} for name, r in reports.items()}
    assert values["sharp"][BLURRY] > QcThresholds().min_sharpness > values["blur3"][BLURRY]
    assert values["blank"][NO_TISSUE] == 0.0 and BLURRY not in values["blank"]
    # AND the report keeps the thumbnail for overlays
    assert reports["sharp"].thumbnail is not None and reports["sharp"].thumbnail.ndim == 3


# --- results helpers -----------------------------------------------------------------------------


def test_qc_reasons_map_codes_and_leave_unmapped_ones_out() -> None:
    # GIVEN a company mapping / WHEN codes are mapped / THEN unmapped codes are left out, none -> None
    assert qc_reasons(["BLURRY", "PEN_MARKS", "BLURRY"], REASONS) == ["blurry"]
    assert qc_reasons(["INFERENCE_FAILED"], REASONS) is None


def test_qupath_problems_catch_what_qupath_import_misreads() -> None:
    # GIVEN features with QuPath keys, good and bad
    good = {"type": "Feature", "id": "5d6a1b8e-0c1f-4d8e-9a57-2b1c3d4e5f60", "geometry": {"type": "Point",
            "coordinates": [1, 2]}, "properties": {"annotation_type": "x", "objectType": "detection",
            "classification": {"name": "Tumor", "color": [200, 0, 0]}, "measurements": {"Area": 1.5}}}
    bad = {"type": "Feature", "id": "not-a-uuid", "geometry": {"type": "Point", "coordinates": [1, 2]},
           "properties": {"annotation_type": "x", "type": "Tumor", "objectType": "blob",
                          "classification": {"name": "Tumor", "color": "#ff0000"},
                          "measurements": {"Area": float("nan")}}}
    # WHEN checked / THEN the good one passes and each mistake of the bad one is named
    assert qupath_problems({"type": "FeatureCollection", "features": [good]}) == []
    problems = " | ".join(qupath_problems({"type": "FeatureCollection", "features": [bad]}))
    for needle in ("UUID", "properties.type", "objectType", "color", "finite"):
        assert needle in problems


# --- the worker's QC step, with fakes -------------------------------------------------------------


class _Fetcher:
    def __init__(self) -> None:
        self.calls = 0

    def fetch_all(self, urls: list[str], dest_dir: Path) -> list[Path]:
        self.calls += 1
        return [dest_dir / "scan.svs"]


class _Outcome:
    def __init__(self, codes: list[str]) -> None:
        self._codes = codes

    @property
    def failures(self) -> list[QcFinding]:
        return [QcFinding(code=c, message=f"{c.lower()} found") for c in self._codes]

    def to_json(self) -> dict[str, Any]:
        return {"passed": not self._codes, "checks": [{"code": c, "passed": False} for c in self._codes]}


def _service(tmp_path: Path, qc: Callable[[list[Path]], Any], *, blocks: bool = True, has_api_key: bool = True,
             token: bool = True) -> tuple[ProcessingService, MemoryTaskStore, MemoryArtifactStore, _Fetcher,
                                          list[str]]:
    tasks, artifacts, fetcher, analysed = MemoryTaskStore(), MemoryArtifactStore(), _Fetcher(), []

    def analyzer(scan_id: str, scan: OpenedScan, model: str, progress: Any) -> tuple[ScanResult, dict[str, Any]]:
        analysed.append(scan_id)
        return ScanResult(scanId=scan_id, results={"report": {"summary": {"Tissue": "1 mm²"}, "rois": None}},
                          geojson={"type": "FeatureCollection", "features": []}), {"width": 10}

    tasks.create(Task(task_id="t/1", model="tissue", status=TaskStatus.QUEUED, token_ciphertext="x" if token else None,
                      scans={"s1": ScanState(scan_id="s1", urls=["https://example/s1"])}))
    def opener(_paths: list[Path]) -> OpenedScan:  # the in-memory reader stands in for the downloaded file
        return OpenedScan(MemoryReader(np.full((16, 16, 3), 200, np.uint8), mpp=0.5))

    service = ProcessingService(tasks, artifacts, fetcher, analyzer, opener=opener, work_dir=tmp_path,
                                check_model=lambda _m: None,
                                qc=qc, qc_blocks=lambda _m: blocks, qc_fail_reasons=REASONS,
                                has_api_key=has_api_key, public_url="https://bridge.example/")
    return service, tasks, artifacts, fetcher, analysed


def _stored(artifacts: MemoryArtifactStore) -> dict[str, Any]:
    raw = artifacts.get(scan_result_key("t/1", "s1"))
    assert raw is not None
    return dict(json.loads(raw))


def test_a_blocking_qc_failure_skips_the_model_and_sets_qc_fail_reasons(tmp_path: Path) -> None:
    # GIVEN QC that finds no tissue, for a model whose QC blocks inference
    service, _, artifacts, _, analysed = _service(tmp_path, lambda _p: _Outcome(["NO_TISSUE"]))
    # WHEN the worker runs
    task = service.run("t/1")
    # THEN the model never ran, the scan FAILED with NO_TISSUE, and its result carries the company's reason
    assert analysed == [] and task.scans["s1"].status == ScanStatus.FAILED
    assert task.scans["s1"].error_code == "NO_TISSUE"
    result = _stored(artifacts)
    assert result["qcFailReasons"] == ["no tissue"]
    assert result["results"]["report"]["summary"]["Quality control"] == "failed: NO_TISSUE"
    # AND the link to the task's own page is there, its id URL-quoted
    assert result["results"]["external_url"] == "https://bridge.example/tasks/t%2F1"


def test_a_non_blocking_qc_failure_still_runs_the_model(tmp_path: Path) -> None:
    # GIVEN a blurry scan and a model that runs despite QC failures
    service, _, artifacts, _, analysed = _service(tmp_path, lambda _p: _Outcome(["BLURRY"]), blocks=False)
    # WHEN the worker runs
    task = service.run("t/1")
    # THEN the model ran, the scan SUCCEEDED, and the result has the reason plus the model's summary
    assert analysed == ["s1"] and task.scans["s1"].status == ScanStatus.SUCCEEDED
    result = _stored(artifacts)
    assert result["qcFailReasons"] == ["blurry"]
    assert result["results"]["report"]["summary"]["Tissue"] == "1 mm²"
    assert "BLURRY" in result["results"]["report"]["summary"]["Quality control"]
    assert result["results"]["qc"]["passed"] is False


def test_unmapped_codes_explain_themselves_without_a_reason(tmp_path: Path) -> None:
    # GIVEN a QC failure the company mapped to no reason
    service, _, artifacts, _, _ = _service(tmp_path, lambda _p: _Outcome(["PEN_MARKS"]))
    # WHEN the worker runs / THEN no qcFailReasons, but the summary names the code and why
    service.run("t/1")
    result = _stored(artifacts)
    assert "qcFailReasons" not in result
    assert result["results"]["report"]["summary"]["Error code"] == "PEN_MARKS"
    assert "pen_marks found" in result["results"]["report"]["summary"]["Reason"]


def test_an_unreadable_scan_gets_its_mapped_reason(tmp_path: Path) -> None:
    # GIVEN a scan whose data cannot be decoded when QC opens it
    def corrupt(_paths: list[Path]) -> Any:
        raise CorruptScanError("bogus marker length")

    service, _, artifacts, _, analysed = _service(tmp_path, corrupt)
    # WHEN the worker runs / THEN SCAN_CORRUPT with the company's "unreadable" reason, no model run
    task = service.run("t/1")
    assert task.scans["s1"].error_code == "SCAN_CORRUPT" and analysed == []
    assert _stored(artifacts)["qcFailReasons"] == ["unreadable"]


def test_no_credentials_fail_the_task_before_any_download(tmp_path: Path) -> None:
    # GIVEN a task without a JWT and a worker without SCANBRIDGE_PLATFORM_API_KEY
    service, _, artifacts, fetcher, analysed = _service(tmp_path, lambda _p: _Outcome([]), has_api_key=False,
                                                         token=False)
    # WHEN the worker runs
    task = service.run("t/1")
    # THEN nothing was downloaded and the task failed with NO_PLATFORM_CREDENTIALS
    assert fetcher.calls == 0 and analysed == []
    assert task.error_code == "NO_PLATFORM_CREDENTIALS" and task.scans["s1"].error_code == "NO_PLATFORM_CREDENTIALS"
    assert "jwt_token" in _stored(artifacts)["results"]["report"]["summary"]["Reason"]
