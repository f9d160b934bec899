"""Every format a platform sends, through the worker as the webhook delivers it: level-0 truth or a coded failure."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box, shape
from shapely.ops import unary_union

from scanbridge.bootstrap import Container, build_processing
from scanbridge.devtools.dicom_synth import write_plain_dicom, write_wsi_series, zip_files
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.status import ScanStatus
from scanbridge.domain.webhook import WebhookPayload
from tests.conftest import ScriptedPlatform

W, H = 1024, 768
TRUTH = box(256, 192, 768, 576)  # the stained rectangle, level-0 pixels


def _image() -> np.ndarray:
    img = np.full((H, W, 3), 242, np.uint8)
    img[192:576, 256:768] = (225, 140, 185)
    return img


@pytest.fixture
def files(tmp_path: Path) -> dict[str, list[Path]]:
    img = _image()
    out: dict[str, list[Path]] = {}
    for syntax in ("jpegls", "rle", "j2k", "deflated", "jpeg"):
        out[f"series-{syntax}"] = write_wsi_series(img, tmp_path / syntax, syntax=syntax, levels=2, tile=128, mpp=2.0)
    out["zip"] = [zip_files(out["series-jpegls"], tmp_path / "series.zip")]
    out["plain"] = [write_plain_dicom(img, tmp_path / "plain.dcm", pixel_spacing_mm=0.002)]
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("../../etc/evil", b"x")
    out["bomb"] = [bomb]
    return out


def test_every_format_gives_level0_truth_or_a_coded_failure(container: Container, platform: ScriptedPlatform,
                                                            files: dict[str, list[Path]]) -> None:
    # GIVEN a loopback platform serving each scan's files behind extension-less presigned URLs
    served = {f"{name}-{i}": path for name, paths in files.items() for i, path in enumerate(paths)}
    with FakePlatform(files=served) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        scan_urls = {name: [fake.url_for(f"{name}-{i}") for i in range(len(paths))] for name, paths in files.items()}
        container.intake.accept(WebhookPayload.model_validate(
            {"task_id": "formats", "jwt_token": "a.b.c", "scan_urls": scan_urls}))
        # WHEN the worker runs and the results are delivered
        task = build_processing(container).run("formats")
        container.delivery.on_job_finished("formats", True)
    # THEN every readable scan succeeded and its tissue polygon is the rectangle, at level 0
    body = platform.calls[0][1]
    by_id = {s["scanId"]: s for s in body["scanResults"]}
    for name in files:
        if name == "bomb":
            continue
        assert task.scans[name].status == ScanStatus.SUCCEEDED, (name, task.scans[name].error_message)
        tissue = unary_union([shape(f["geometry"]) for f in by_id[name]["geojson"]["features"]
                              if f["properties"]["annotation_type"] == "tissue"])
        iou = tissue.intersection(TRUTH).area / tissue.union(TRUTH).area
        assert iou > 0.9, (name, iou, tissue.bounds)
        assert all(abs(a - b) <= 16 for a, b in zip(tissue.bounds, TRUTH.bounds, strict=True)), (name, tissue.bounds)
    # AND the hostile archive failed with its code, and the platform saw the reason
    assert task.scans["bomb"].error_code == "SCAN_ARCHIVE_UNSAFE"
    assert by_id["bomb"]["results"]["report"]["summary"]["Error code"] == "SCAN_ARCHIVE_UNSAFE"
    meta = container.queries.scan_metadata("formats", "series-jpegls")
    assert meta["width"] == W and meta["height"] == H and meta["transfer_syntax"]
