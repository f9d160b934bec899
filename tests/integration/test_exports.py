"""Exports of a scan's results: GeoJSON, CSV, DICOM ANN and DICOM SEG (read back with highdicom)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from shapely.geometry import Point, Polygon, shape
from shapely.validation import explain_validity

from scanbridge.bootstrap import Container, build_processing
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.entrypoints.http.app import create_app
from scanbridge.exports.raster import seg_downsample
from tests.conftest import fixture_path


def _process(container: Container, task_id: str, scans: dict[str, list[Path]], model: str = "",
             **overrides: Any) -> TestClient:
    names = {f"{sid}-{i}": p for sid, paths in scans.items() for i, p in enumerate(paths)}
    with FakePlatform(files=names) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate({
            "task_id": task_id, "company_id": "c1", "jwt_token": "a.b.c", "model_id": model or None,
            "scan_urls": {sid: [fake.url_for(f"{sid}-{i}") for i in range(len(paths))]
                          for sid, paths in scans.items()}}))
        build_processing(container, **overrides).run(task_id)
    return TestClient(create_app(container))


def _polygons(geojson: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in geojson["features"] if f["geometry"]["type"] == "Polygon"]


def _read(content: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(content))


@pytest.fixture
def boxes(container: Container) -> TestClient:
    """A task whose one scan (boxes.tiff, 300x250) was analysed by the tissue model."""
    return _process(container, "t-exp", {"1": [fixture_path("boxes.tiff")]})


def test_geojson_and_csv_exports_are_the_scan_results(boxes: TestClient) -> None:
    # WHEN the scan is exported as GeoJSON and as CSV
    geo = boxes.get("/tasks/t-exp/scans/1/export?format=geojson")
    table = boxes.get("/tasks/t-exp/scans/1/export?format=csv")
    # THEN the GeoJSON is the scan's valid FeatureCollection, tissue polygons inside the 300x250 scan
    assert geo.status_code == 200 and geo.headers["content-type"].startswith("application/geo+json")
    assert 'filename="t-exp_1.geojson"' in geo.headers["content-disposition"]
    fc = geo.json()
    assert fc["type"] == "FeatureCollection" and _polygons(fc)
    for feature in _polygons(fc):
        poly = shape(feature["geometry"])
        assert poly.is_valid, explain_validity(poly)
        assert Polygon([(0, 0), (300, 0), (300, 250), (0, 250)]).buffer(1e-6).contains(poly)
    # AND the CSV has one row per object feature (the heat map is not an object), measurements included
    assert table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert [r["object_id"] for r in rows] == [f["id"] for f in _polygons(fc)]
    for row, feature in zip(rows, _polygons(fc), strict=True):
        centroid = shape(feature["geometry"]).centroid
        assert float(row["centroid_x"]) == pytest.approx(centroid.x, abs=0.05)
        assert float(row["centroid_y"]) == pytest.approx(centroid.y, abs=0.05)
        for name, value in feature["properties"]["measurements"].items():
            assert float(row[name]) == pytest.approx(value, rel=1e-4)


def test_dicom_annotations_hold_the_geojson_outlines_and_counts(boxes: TestClient) -> None:
    # GIVEN the scan's GeoJSON
    fc = boxes.get("/tasks/t-exp/scans/1/export?format=geojson").json()
    # WHEN it is exported as DICOM Microscopy Bulk Simple Annotations and read back with highdicom
    resp = boxes.get("/tasks/t-exp/scans/1/export?format=dicom-ann")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/dicom"
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(_read(resp.content))
    # THEN it is a 2D ANN with one Tissue POLYGON per GeoJSON polygon, same vertices, same measurements
    assert ann.SOPClassUID == "1.2.840.10008.5.1.4.1.1.91.1" and ann.AnnotationCoordinateType == "2D"
    groups = {g.label: g for g in ann.get_annotation_groups()}
    tissue = groups["Tissue"]
    assert tissue.graphic_type == hd.ann.GraphicTypeValues.POLYGON
    polygons = _polygons(fc)
    assert tissue.number_of_annotations == len(polygons)
    for coords, feature in zip(tissue.get_graphic_data("2D"), polygons, strict=True):
        ring = np.asarray(feature["geometry"]["coordinates"][0][:-1])
        np.testing.assert_allclose(coords, ring, atol=1e-3)
    names, values, _units = tissue.get_measurements()
    meanings = [n.meaning for n in names]
    area = values[:, meanings.index("Area px^2")]
    np.testing.assert_allclose(area, [f["properties"]["measurements"]["Area px^2"] for f in polygons], rtol=1e-5)
    # AND the heat map's contours are kept as one polygon group per level
    heat = next(f for f in fc["features"] if f["geometry"]["type"] == "GeometryCollection")
    heat_groups = [g for label, g in groups.items() if label.startswith("heatmap")]
    assert sum(g.number_of_annotations for g in heat_groups) == len(heat["geometry"]["geometries"])


def test_dicom_seg_covers_the_geojson_polygons(boxes: TestClient) -> None:
    # GIVEN the scan's GeoJSON polygons
    polygons = [shape(f["geometry"]) for f in _polygons(boxes.get("/tasks/t-exp/scans/1/export?format=geojson").json())]
    # WHEN it is exported as DICOM SEG and read back with highdicom
    resp = boxes.get("/tasks/t-exp/scans/1/export?format=dicom-seg")
    seg = hd.seg.segread(io.BytesIO(resp.content))
    # THEN a tiled BINARY SEG with one "Tissue" segment over the scan's 300x250 pixel matrix
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert seg.DimensionOrganizationType == "TILED_FULL"
    assert seg.number_of_segments == 1 and seg.get_segment_description(1).segment_label == "Tissue"
    assert (seg.TotalPixelMatrixColumns, seg.TotalPixelMatrixRows) == (300, 250)
    mask = seg.get_total_pixel_matrix(combine_segments=True) > 0
    # AND a pixel is set exactly when its centre is in a GeoJSON polygon (a few edge pixels aside)
    truth = np.zeros_like(mask)
    for y in range(250):
        for x in range(300):
            truth[y, x] = any(p.contains(Point(x + 0.5, y + 0.5)) for p in polygons)
    assert truth.any() and (mask != truth).sum() <= 0.01 * truth.sum()


def test_dicom_exports_reference_a_dicom_source_scan(container: Container) -> None:
    # GIVEN a DICOM WSI scan (two files: volume + thumbnail) that was analysed
    client = _process(container, "t-dcm", {"d": [fixture_path("boxes_0.dcm"), fixture_path("boxes_1.dcm")]})
    source = pydicom.dcmread(fixture_path("boxes_0.dcm"), stop_before_pixels=True)
    # WHEN both DICOM exports are made
    ann = _read(client.get("/tasks/t-dcm/scans/d/export?format=dicom-ann").content)
    seg = _read(client.get("/tasks/t-dcm/scans/d/export?format=dicom-seg").content)
    # THEN they belong to the source's study and patient and reference its level-0 image
    for ds in (ann, seg):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID
        refs = [r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence]
        assert source.SOPInstanceUID in refs
    assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert hd.seg.Segmentation.from_dataset(seg).number_of_segments >= 1


def test_dicom_exports_are_built_on_demand_when_the_worker_stored_none(container: Container) -> None:
    # GIVEN a scan processed without the artifact writer (an older task)
    client = _process(container, "t-old", {"1": [fixture_path("small.svs")]}, artifact_writer=None)
    assert client.get("/tasks/t-old/artifacts").json()["artifacts"] == []
    # WHEN a DICOM export is asked for / THEN it is built from result.json + metadata.json, valid for highdicom
    resp = client.get("/tasks/t-old/scans/1/export?format=dicom-ann")
    assert resp.status_code == 200
    hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(_read(resp.content))


def test_bad_exports_get_uniform_errors(boxes: TestClient) -> None:
    # WHEN an unknown format, scan or task is asked for / THEN 422 / 404 with the uniform error body
    bad = boxes.get("/tasks/t-exp/scans/1/export?format=shapefile")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "VALIDATION_ERROR"
    assert boxes.get("/tasks/t-exp/scans/9/export").json()["error"]["code"] == "NOT_FOUND"
    assert boxes.get("/tasks/nope/scans/1/export").json()["error"]["code"] == "TASK_NOT_FOUND"


def test_seg_downsample_keeps_large_scans_small() -> None:
    # GIVEN scan sizes / WHEN the SEG grid is chosen / THEN level 0 up to 4096 px, then powers of two
    assert seg_downsample(300, 250) == 1
    assert seg_downsample(4096, 100) == 1
    assert seg_downsample(100_000, 80_000) == 32
