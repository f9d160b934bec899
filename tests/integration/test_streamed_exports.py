"""The API's exports and `scanbridge run-scan` read an object result a feature at a time: the stored
result.json's text (exports) or the result's spool (run-scan), never the whole FeatureCollection as dicts,
and write the same bytes as when they parsed it whole."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from scanbridge.bootstrap import Container
from scanbridge.devtools import synth
from scanbridge.domain import feature_spool
from scanbridge.domain.feature_spool import (
    FeatureSpool,
    StreamedScanResult,
    result_geojson_chunks,
    result_json_bytes,
)
from scanbridge.domain.status import ScanStatus, TaskStatus
from scanbridge.domain.storage_keys import scan_metadata_key, scan_result_key
from scanbridge.domain.task import ScanState, Task
from scanbridge.entrypoints.cli import main
from scanbridge.entrypoints.http.app import create_app
from scanbridge.exports.csv import write_csv
from scanbridge.exports.dicom import write_dicom
from tests.conftest import traced_peak

META = {"format": "svs", "width": 4096, "height": 4096, "mpp_x": 0.5, "mpp_y": 0.5}
MODEL = {"name": "nuclei", "version": "1"}


def _nucleus(i: int) -> dict[str, Any]:
    """A nucleus as the nuclei model writes one: a 24-vertex outline, its bbox, ~20 measurements."""
    cx, cy, r = 40.0 + (i * 37) % 4000, 40.0 + (i * 53) % 4000, 6.0 + i % 5
    ring = [[round(cx + r * math.cos(k * math.pi / 12), 2), round(cy + r * math.sin(k * math.pi / 12), 2)]
            for k in range(24)]
    ring.append(ring[0])
    measurements = {f"Nucleus: measure {m} µm": round(0.1 * m + i / 7, 4) for m in range(18)}
    measurements.update({"Area µm^2": round(math.pi * r * r / 4, 4), "Solidity": 0.95})
    return {"type": "Feature", "id": f"00000000-0000-4000-8000-{i:012d}", "bbox": [cx - r, cy - r, cx + r, cy + r],
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"annotation_type": "nucleus", "objectType": "detection",
                           "classification": {"name": "Nucleus", "color": [63, 81, 181]},
                           "measurements": measurements}}


def _streamed(scan_id: str, count: int) -> StreamedScanResult:
    """An object result as the worker makes it: its features in a spool (past its first KiB on disk)."""
    spool = FeatureSpool(max_memory=1024)
    for i in range(count):
        spool.append(_nucleus(i))
    return StreamedScanResult.from_spool(scan_id, {"nuclei_count": count, "model": MODEL}, spool)


#: stored result.json texts: the worker's layout, and others a writer could use (geojson first, its type
#: after its features, indented; one lone Feature; no features; none at all)
LAYOUTS: dict[str, bytes] = {
    "worker": result_json_bytes(_streamed("worker", 300)),
    "foreign": json.dumps({"geojson": {"features": [_nucleus(i) for i in range(40)], "type": "FeatureCollection",
                                       "bbox": [0, 0, 4096, 4096]},
                           "scanId": "foreign", "results": {"model": MODEL}}, indent=1).encode(),
    "feature": json.dumps({"scanId": "feature", "results": {}, "geojson": _nucleus(3)}).encode(),
    "empty": json.dumps({"scanId": "empty", "results": {}, "geojson": {}}).encode(),
    "absent": json.dumps({"scanId": "absent", "results": {"model": MODEL}}).encode(),
}


def _stored(container: Container, texts: dict[str, bytes], task_id: str = "t-stream-exp") -> None:
    """A task whose succeeded scans have these stored result.json texts (and metadata)."""
    scans = {sid: ScanState(scan_id=sid, urls=[f"https://x/{sid}"], status=ScanStatus.SUCCEEDED) for sid in texts}
    container.tasks.create(Task(task_id=task_id, company_id="c1", model="nuclei", status=TaskStatus.COMPLETED,
                                scans=scans))
    for sid, raw in texts.items():
        container.artifacts.put(scan_result_key(task_id, sid), raw, "application/json")
        container.artifacts.put(scan_metadata_key(task_id, sid), json.dumps(META).encode(), "application/json")


def _csv(geojson: Any) -> bytes:
    out = io.BytesIO()
    write_csv(out, geojson)
    return out.getvalue()


def _annotations(raw: bytes) -> list[tuple[str, np.ndarray, list[str], np.ndarray]]:
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(pydicom.dcmread(io.BytesIO(raw)))
    groups = []
    for group in ann.get_annotation_groups():
        names, values, _units = group.get_measurements()
        groups.append((group.label, np.concatenate(group.get_graphic_data("2D")), [n.meaning for n in names], values))
    return groups


def test_exports_are_the_bytes_the_parsed_result_gives(container: Container) -> None:
    # GIVEN stored results in the worker's layout and in others
    _stored(container, LAYOUTS)
    client = TestClient(create_app(container))
    for sid, raw in LAYOUTS.items():
        parsed = json.loads(raw)
        geojson = parsed.get("geojson") or {"type": "FeatureCollection", "features": []}
        # WHEN each is exported as GeoJSON and as CSV
        geo = client.get(f"/tasks/t-stream-exp/scans/{sid}/export?format=geojson")
        table = client.get(f"/tasks/t-stream-exp/scans/{sid}/export?format=csv")
        # THEN the GeoJSON is json.dumps of the parsed result's collection, byte for byte, and the CSV the
        # one written from it, each sent with its length
        assert geo.status_code == 200 and geo.content == json.dumps(geojson).encode(), sid
        assert geo.headers["content-length"] == str(len(geo.content))
        assert table.status_code == 200 and table.content == _csv(geojson), sid
        assert table.headers["content-length"] == str(len(table.content))
    # AND the worker's 300 nuclei are 300 rows
    assert client.get("/tasks/t-stream-exp/scans/worker/export?format=csv").text.count("\n") == 1 + 300


def test_a_dicom_export_built_on_demand_holds_the_parsed_results_annotations(container: Container) -> None:
    # GIVEN a stored streamed result whose ANN the worker did not store (an older task)
    _stored(container, {"worker": LAYOUTS["worker"]})
    parsed = json.loads(LAYOUTS["worker"])
    want = io.BytesIO()
    write_dicom(want, "dicom-ann", parsed["geojson"], META, "worker", model=MODEL)
    # WHEN it is exported as DICOM ANN (twice: the second from what the first stored)
    client = TestClient(create_app(container))
    first = client.get("/tasks/t-stream-exp/scans/worker/export?format=dicom-ann")
    second = client.get("/tasks/t-stream-exp/scans/worker/export?format=dicom-ann")
    # THEN the same groups, outlines and measurements as written from the parsed collection (UIDs and times
    # are new per file), and the stored file is served the next time
    assert first.status_code == 200 and first.headers["content-length"] == str(len(first.content))
    got, expected = _annotations(first.content), _annotations(want.getvalue())
    assert [g[0] for g in got] == [g[0] for g in expected] and sum(len(g[3]) for g in got) == 300
    for (_, coords, names, values), (_, coords_w, names_w, values_w) in zip(got, expected, strict=True):
        assert np.array_equal(coords, coords_w) and names == names_w
        assert np.array_equal(values, values_w, equal_nan=True)
    assert second.content == first.content


@pytest.mark.parametrize(("fmt", "bound"), [("geojson", 0.35), ("csv", 0.35), ("dicom-ann", 0.6)])
def test_an_export_never_parses_the_whole_result(container: Container, fmt: str, bound: float) -> None:
    # GIVEN two stored results, 3,000 nuclei and a tenth of them (and one to warm up on), and what their
    # collection costs as dicts
    count, tenth = 3000, 300
    _stored(container, {"warm": result_json_bytes(_streamed("warm", tenth)),
                        "full": result_json_bytes(_streamed("full", count)),
                        "tenth": result_json_bytes(_streamed("tenth", tenth))})
    exports = container.exports

    def export(sid: str) -> None:  # once per scan: a DICOM export made on demand is stored
        out = exports.export("t-stream-exp", sid, fmt)
        assert out.size > 0 and sum(len(chunk) for chunk in out.chunks()) == out.size

    export("warm")  # first use: imports, highdicom's tables
    raw = container.artifacts.get(scan_result_key("t-stream-exp", "full"))
    assert raw is not None
    dicts_per_feature = traced_peak(lambda: json.loads(raw)) / count
    # WHEN each is exported, its allocations traced
    peak_tenth = traced_peak(lambda: export("tenth"))
    peak_full = traced_peak(lambda: export("full"))
    # THEN what the peak grows by per feature stays well below a feature's dicts: measured 0.23 of them
    # (the result's text, decoded) for the GeoJSON and the CSV, 0.45 for the ANN (its outlines and
    # measurements as arrays, encoded, and stored); parsing the stored result whole: 1.00-1.09
    growth_per_feature = (peak_full - peak_tenth) / (count - tenth)
    assert dicts_per_feature > 5000
    assert growth_per_feature < bound * dicts_per_feature, (fmt, growth_per_feature, dicts_per_feature)


def test_the_geojson_of_a_streamed_result_is_json_dumps_of_its_collection() -> None:
    # GIVEN a streamed result and the same result as dicts
    streamed = _streamed("s", 50)
    # WHEN its GeoJSON text is written from the spool / THEN the bytes json.dumps gives of the collection
    assert b"".join(result_geojson_chunks(streamed)) == json.dumps(streamed.geojson).encode()
    empty = StreamedScanResult.from_spool("e", {}, FeatureSpool())
    assert b"".join(result_geojson_chunks(empty)) == b'{"type": "FeatureCollection", "features": []}'


def test_run_scan_writes_an_object_result_without_building_its_collection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a generated slide with nuclei, and a result that refuses to build its whole FeatureCollection
    slide = tmp_path / "cells.svs"
    synth.make_slide(slide, 1536, 1024, tissue_fraction=0.4, seed=3, mpp=0.5)

    def refuse(spool: FeatureSpool) -> dict[str, Any]:
        raise AssertionError("the whole FeatureCollection was built")

    monkeypatch.setattr(feature_spool, "whole_collection", refuse)
    # WHEN run-scan runs the nuclei model on it, artifacts included
    code = main(["run-scan", str(slide), "--model", "nuclei", "--out", str(tmp_path / "out")])
    # THEN it succeeds; the .geojson and result.json are the texts json.dumps writes, the collection the same
    # in both, every nucleus in the artifacts' CSV
    assert code == 0, capsys.readouterr().err
    geo_raw = (tmp_path / "out" / "cells.geojson").read_bytes()
    result_raw = (tmp_path / "out" / "cells.result.json").read_bytes()
    geojson, result = json.loads(geo_raw), json.loads(result_raw)
    assert geo_raw == json.dumps(geojson).encode() and result_raw == json.dumps(result).encode()
    assert result["geojson"] == geojson and list(result) == ["scanId", "results", "geojson"]
    nuclei = [f for f in geojson["features"] if f["properties"]["annotation_type"] == "nucleus"]
    assert len(nuclei) > 20
    rows = (tmp_path / "out" / "cells-artifacts" / "objects.csv").read_text().splitlines()
    assert len(rows) == 1 + len(nuclei)
