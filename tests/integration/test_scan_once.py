"""Each scan is opened once per worker run, and states one tissue figure (QC, the summary, the artifacts)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scanbridge.bootstrap import Container, build_processing
from scanbridge.devtools import synth
from scanbridge.devtools.dicom_synth import zip_files
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.status import ScanStatus
from scanbridge.domain.storage_keys import scan_result_key
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.imaging import archive, readers
from scanbridge.imaging import scan as scan_module
from scanbridge.imaging.qc import NO_TISSUE
from scanbridge.imaging.tissue import percent_text
from scanbridge.services.artifacts import artifact_key
from tests.conftest import fixture_path

SERIES = [fixture_path(f"thirdparty/wsidicomizer_series/level{i}.dcm") for i in range(4)]


def _process(container: Container, task_id: str, scans: dict[str, list[Path]], model: str) -> None:
    """The worker (real QC, analysis and artifacts) on scans served by a loopback platform."""
    names = {f"{sid}-{i}": p for sid, paths in scans.items() for i, p in enumerate(paths)}
    with FakePlatform(files=names) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate({
            "task_id": task_id, "jwt_token": "a.b.c", "model_name": model,
            "scan_urls": {sid: [fake.url_for(f"{sid}-{i}") for i in range(len(paths))]
                          for sid, paths in scans.items()}}))
        build_processing(container).run(task_id)


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, calls: Counter[str],
              scan_of: Callable[..., str]) -> None:
    """Wrap `module.name` so that each call is counted under the scan it was made for."""
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[scan_of(*args)] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def _scan_dir(path: Path, work: Path) -> str:
    """The scan a worker file belongs to: work/<task>/<scan>/..."""
    return Path(path).resolve().relative_to(work.resolve()).parts[1]


def test_each_scan_is_opened_and_unpacked_once_per_worker_run(container: Container, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a task with a generated Aperio SVS, a real four-file DICOM series and the same series as a ZIP,
    # and counters on every reader open, every ZIP unpack and every overview read
    svs = tmp_path / "gen.svs"
    synth.make_slide(svs, 1536, 1024, tissue_fraction=0.3, seed=2, mpp=0.5)
    scans = {"svs": [svs], "dcm": SERIES, "zip": [zip_files(SERIES, tmp_path / "series.zip")]}
    work = container.settings.data_dir / "work"
    opens: Counter[str] = Counter()
    unpacks: Counter[str] = Counter()
    overviews: Counter[str] = Counter()
    _counting(monkeypatch, readers, "_open_files", opens, lambda files: _scan_dir(files[0][0], work))
    _counting(monkeypatch, archive, "safe_extract", unpacks, lambda path, _dest, *_: _scan_dir(path, work))
    _counting(monkeypatch, scan_module, "tissue_overview", overviews, lambda _reader, _max: "any scan")
    # WHEN the worker runs the task (QC on, the default model, every artifact)
    _process(container, "t-once", scans, "tissue")
    # THEN every scan succeeded with its artifacts written
    task = container.tasks.get("t-once")
    assert task is not None
    assert {sid: s.status for sid, s in task.scans.items()} == dict.fromkeys(scans, ScanStatus.SUCCEEDED)
    for sid in scans:
        assert container.artifacts.get(artifact_key("t-once", sid, "overlay.png"))
    # AND each scan was opened once (QC, the analysis and the artifacts shared it), its ZIP unpacked once
    assert opens == dict.fromkeys(scans, 1)
    assert unpacks == {"zip": 1}
    # AND one overview was read per scan (each scan needs one for its mask; the overlay came from it too)
    assert overviews == {"any scan": len(scans)}
    # AND the ZIP's DICOM files, unpacked once, still gave the artifacts their DICOM source
    metadata = {sid: container.queries.scan_metadata("t-once", sid) for sid in scans}
    assert metadata["zip"]["dicom_source"] == metadata["dcm"]["dicom_source"]
    assert "dicom_source" not in metadata["svs"]


@pytest.mark.parametrize(("model", "real"), [("tissue", True), ("nuclei", False)])
def test_qc_the_summary_and_the_artifacts_state_one_tissue_figure(container: Container, tmp_path: Path,
                                                                  model: str, real: bool) -> None:
    # GIVEN a generated slide with 30 % tissue and, for the region model, a real H&E mosaic (its right quarter
    # glass); the object model's path is shown on the generated slide only (nuclei over the whole real
    # mosaic cost ~15 s here, and tests/integration/test_real_tissue.py runs it on real tissue)
    generated = tmp_path / "gen.svs"
    truth = synth.make_slide(generated, 1024, 768, tissue_fraction=0.3, seed=5, mpp=0.5)
    scans = {"gen": [generated]}
    if real:
        scans["real"] = [fixture_path("thirdparty/vips_pyramid_jpeg.tif")]
    # WHEN the worker runs `model` on both (QC on, artifacts on)
    _process(container, f"t-fig-{model}", scans, model)
    figures: dict[str, float] = {}
    for sid in scans:
        raw = container.artifacts.get(scan_result_key(f"t-fig-{model}", sid))
        assert raw is not None
        results = json.loads(raw)["results"]
        summary = results["report"]["summary"]
        qc = next(c for c in results["qc"]["checks"] if c["code"] == NO_TISSUE)
        tissue = container.queries.scan_metadata(f"t-fig-{model}", sid)["tissue"]
        # THEN QC's value, the results' fraction and the artifacts' figure are one number
        assert qc["value"] == results["tissue_fraction"] == tissue["fraction"]
        # AND every text states it the same way
        assert percent_text(qc["value"]) in qc["message"]
        assert summary["Tissue fraction"] == tissue["percent"] == percent_text(qc["value"])
        # AND the summary's tissue area is the artifacts' area (the same mask)
        assert results["tissue_area_mm2"] == pytest.approx(tissue["area_mm2"], abs=1e-6)
        assert summary["Tissue area"] == f"{results['tissue_area_mm2']:.3f} mm²"
        figures[sid] = qc["value"]
    # AND the figure is the scan's tissue: near the generated truth, and short of the mosaic's glass quarter
    assert figures["gen"] == pytest.approx(truth.tissue_fraction, abs=0.03)
    assert set(figures) == set(scans)
    if real:
        assert 0.4 < figures["real"] < 0.75


def test_a_zip_is_unpacked_once_and_its_folder_goes_with_the_scan(tmp_path: Path) -> None:
    # GIVEN the real DICOM series packed in a ZIP
    packed = zip_files(SERIES, tmp_path / "series.zip")
    # WHEN it is opened as a scan
    with scan_module.OpenedScan.open([packed]) as scan:
        files = list(scan.files)
        # THEN the scan's files are the unpacked entries, beside the archive, read as one 4-level series
        assert len(files) == 4 and all(f.exists() and f.parent.parent == tmp_path for f in files)
        assert len(scan.metadata.level_dimensions) == 4
    # AND they are gone once the scan is closed; the archive stays
    assert not any(f.exists() for f in files) and packed.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["series.zip"]
