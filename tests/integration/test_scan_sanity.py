"""Scans that lie or run out of room (issue #16): an implausible pixel size is an unknown one, two DICOM series
in one ZIP are resolved by a documented rule that the summary states, and a full disk is a transient
SCAN_STORAGE_FULL that is retried."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from scanbridge.bootstrap import Container, build_processing
from scanbridge.devtools.dicom_synth import write_wsi_series, zip_files
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.status import ScanStatus
from scanbridge.domain.storage_keys import scan_result_key
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.readers.base import MPP_REJECTED


def _slide(path: Path, dpi: float) -> Path:
    """A 512x512 tiled TIFF with a purple block of 'tissue', its resolution in dots per inch."""
    img = np.full((512, 512, 3), 240, np.uint8)
    img[100:400, 120:420] = (170, 80, 160)
    tifffile.imwrite(path, img, tile=(256, 256), resolution=(dpi, dpi), resolutionunit="INCH", photometric="rgb")
    return path


def _run(container: Container, task_id: str, files: list[Path], model: str = "tissue",
         **overrides: Any) -> dict[str, Any]:
    names = {f"f{i}": p for i, p in enumerate(files)}
    with FakePlatform(files=names) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate({
            "task_id": task_id, "company_id": "c1", "jwt_token": "a.b.c", "model_id": model,
            "scan_urls": {"s": [fake.url_for(n) for n in names]}}))
        build_processing(container, **overrides).run(task_id)
    raw = container.artifacts.get(scan_result_key(task_id, "s"))
    assert raw is not None
    result: dict[str, Any] = json.loads(raw)
    return result


def test_a_72_dpi_tiff_has_no_pixel_size(container: Container, tmp_path: Path) -> None:
    # GIVEN a TIFF that says 72 dpi (352.8 µm/px) and one at 0.5 µm/px (50,800 dpi)
    bad, good = _slide(tmp_path / "72dpi.tif", 72), _slide(tmp_path / "good.tif", 25_400 / 0.5)
    # WHEN opened / THEN the 72-dpi pixel size is set aside as unknown, the plausible one kept
    reader = open_scan([bad])
    assert reader.metadata.mpp is None and reader.metadata.properties[MPP_REJECTED].startswith("352.7")
    reader.close()
    reader = open_scan([good])
    assert reader.metadata.mpp is not None and abs(reader.metadata.mpp[0] - 0.5) < 1e-6
    reader.close()
    # AND analysed, its summary says why, no figure is in µm or mm², and results.qc records it
    result = _run(container, "t-dpi", [bad])
    summary = result["results"]["report"]["summary"]
    assert "352.7" in summary["Pixel size"] and "0.05-10" in summary["Pixel size"]
    assert not any(("mm²" in v or "µm" in v) and k != "Pixel size" for k, v in summary.items()), summary
    checks = {c["code"]: c for c in result["results"]["qc"]["checks"]}
    assert checks["PIXEL_SIZE_UNKNOWN"]["passed"] and not checks["PIXEL_SIZE_UNKNOWN"]["assessed"]
    assert container.tasks.get("t-dpi").scans["s"].status == ScanStatus.SUCCEEDED  # type: ignore[union-attr]


def test_two_series_in_one_zip_analyse_the_largest_and_say_so(container: Container, tmp_path: Path) -> None:
    # GIVEN one ZIP holding two DICOM WSI series: 256x256 and 128x128
    rng = np.random.default_rng(1)
    big = write_wsi_series(rng.integers(100, 200, (256, 256, 3), dtype=np.uint8), tmp_path / "a", levels=1,
                           thumbnail=False)
    small = write_wsi_series(rng.integers(100, 200, (128, 128, 3), dtype=np.uint8), tmp_path / "b", levels=1,
                             thumbnail=False)
    archive = zip_files([*small, *big], tmp_path / "two.zip")
    # WHEN opened / THEN the series of the larger image is the scan, the other one is named as ignored
    reader = open_scan([archive])
    assert reader.metadata.dimensions == (256, 256)
    ignored = reader.metadata.properties["scanbridge.series_ignored"]
    reader.close()
    import pydicom

    assert ignored == str(pydicom.dcmread(small[0], stop_before_pixels=True).SeriesInstanceUID)
    # AND the posted summary says which series was analysed and which ignored
    result = _run(container, "t-2s", [archive])
    assert ignored in result["results"]["report"]["summary"]["DICOM series"]


class _FullDiskOnce:
    """A fetcher that fails like a full disk (ENOSPC) `times` times, then copies the file (fault injection)."""

    def __init__(self, source: Path, times: int) -> None:
        self.source, self.times, self.calls = source, times, 0

    def fetch_all(self, urls: list[str], dest_dir: Path) -> list[Path]:
        self.calls += 1
        if self.calls <= self.times:
            raise OSError(errno.ENOSPC, "No space left on device")
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / "scan.tif"
        target.write_bytes(self.source.read_bytes())
        return [target]


def test_a_full_disk_is_retried_then_coded(container: Container, tmp_path: Path) -> None:
    slide = _slide(tmp_path / "s.tif", 25_400 / 0.5)
    # GIVEN a disk that is full on the first download only
    once = _FullDiskOnce(slide, times=1)
    service = build_processing(container, fetcher=once)
    service.storage_retry_s = (0.0, 0.0)
    container.intake.accept(WebhookPayload.model_validate({"task_id": "t-full", "company_id": "c1",
                                                           "jwt_token": "a.b.c", "scans": {"s": "https://x/y"}}))
    # WHEN the task runs / THEN the scan is tried again and succeeds
    task = service.run("t-full")
    assert once.calls == 2 and task.scans["s"].status == ScanStatus.SUCCEEDED
    # GIVEN a disk that stays full / THEN after the retries the scan fails as SCAN_STORAGE_FULL, not a
    # SCAN_PROCESSING_ERROR, and says it is transient
    always = _FullDiskOnce(slide, times=99)
    service = build_processing(container, fetcher=always)
    service.storage_retry_s = (0.0, 0.0)
    container.intake.accept(WebhookPayload.model_validate({"task_id": "t-full2", "company_id": "c1",
                                                           "jwt_token": "a.b.c", "scans": {"s": "https://x/y"}}))
    scan = service.run("t-full2").scans["s"]
    assert always.calls == 3 and scan.status == ScanStatus.FAILED and scan.error_code == "SCAN_STORAGE_FULL"
    assert "transient" in (scan.error_message or "")
