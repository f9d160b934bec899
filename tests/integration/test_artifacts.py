"""Per-scan artifacts: written by the worker into the ArtifactStore (S3 under moto), listed and served by the API."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from shapely.geometry import shape

from scanbridge.adapters.aws.provision import provision
from scanbridge.adapters.aws.s3 import S3ArtifactStore
from scanbridge.adapters.local.memory import (
    FernetSecretBox,
    MemoryArtifactStore,
    MemoryJobLauncher,
    MemoryTaskStore,
)
from scanbridge.bootstrap import Container, bootstrap, build_processing
from scanbridge.config import Settings
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.status import ScanStatus
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.entrypoints.http.app import create_app
from scanbridge.services.artifacts import ScanArtifactWriter
from tests.conftest import ScriptedPlatform, fixture_path


@pytest.fixture
def s3_container(aws: None, settings: Settings) -> Container:
    """In-memory tasks, but artifacts in an S3 bucket (moto) provisioned from template.yaml."""
    clients = {n: boto3.client(n, region_name="us-east-1") for n in ("dynamodb", "s3", "kms")}
    provision(settings, clients["dynamodb"], clients["s3"], clients["kms"])
    return bootstrap(settings, tasks=MemoryTaskStore(), artifacts=S3ArtifactStore(clients["s3"], settings.bucket_name),
                     secrets=FernetSecretBox(), launcher=MemoryJobLauncher(), platform=ScriptedPlatform(),
                     sleep=lambda _s: None)


def _run(container: Container, task_id: str, files: dict[str, list[Path]], **overrides: Any) -> None:
    names = {f"{sid}-{i}": p for sid, paths in files.items() for i, p in enumerate(paths)}
    with FakePlatform(files=names) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate({
            "task_id": task_id, "company_id": "c1", "jwt_token": "a.b.c",
            "scan_urls": {sid: [fake.url_for(f"{sid}-{i}") for i in range(len(paths))]
                          for sid, paths in files.items()}}))
        build_processing(container, **overrides).run(task_id)
        container.delivery.on_job_finished(task_id, True)


def test_each_analysed_scan_gets_its_artifacts_in_s3_listed_and_served(s3_container: Container) -> None:
    # GIVEN a task with a pyramidal TIFF and a two-file DICOM WSI, processed by the worker, artifacts in S3 (moto)
    _run(s3_container, "t-art", {"tiff": [fixture_path("boxes.tiff")],
                                 "dcm": [fixture_path("boxes_0.dcm"), fixture_path("boxes_1.dcm")]})
    client = TestClient(create_app(s3_container))
    # WHEN the API lists the task's artifacts
    resp = client.get("/tasks/t-art/artifacts")
    # THEN each scan has its overlay, label mask, objects CSV and DICOM exports, each with an API download link
    assert resp.status_code == 200
    listing = resp.json()["artifacts"]
    by_name = {a["name"]: a for a in listing}
    for scan in ("tiff", "dcm"):
        for file in ("overlay.png", "labels.npy", "objects.csv", "annotations.dcm", "segmentation.dcm"):
            assert f"{scan}/{file}" in by_name, sorted(by_name)
    assert by_name["tiff/overlay.png"]["url"].endswith("/tasks/t-art/artifacts/tiff/overlay.png")
    assert by_name["tiff/overlay.png"]["content_type"] == "image/png"
    # AND the links download from the API (not from presigned S3 URLs)
    path = by_name["tiff/overlay.png"]["url"].removeprefix("http://testserver")
    png = client.get(path)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size[0] > 0 and image.size[1] > 0
    # AND the label mask covers the tissue polygons of the posted GeoJSON, one label per object row of the CSV
    geojson = client.get("/tasks/t-art/scans/tiff/export?format=geojson").json()
    polygons = [f for f in geojson["features"] if f["geometry"]["type"] == "Polygon"]
    labels = np.load(io.BytesIO(client.get("/tasks/t-art/artifacts/tiff/labels.npy").content))
    assert labels.shape == (250, 300) and labels.dtype == np.int32
    assert set(np.unique(labels)) - {0} == set(range(1, len(polygons) + 1))
    area = sum(shape(f["geometry"]).area for f in polygons)
    assert abs(int((labels > 0).sum()) - area) / area < 0.05
    rows = list(csv.DictReader(io.StringIO(client.get("/tasks/t-art/artifacts/tiff/objects.csv").text)))
    assert [r["object_id"] for r in rows] == [f["id"] for f in polygons]
    assert float(rows[0]["Area px^2"]) == pytest.approx(polygons[0]["properties"]["measurements"]["Area px^2"])
    # AND the DICOM scan's key UIDs were kept in its metadata.json (for the exports that reference it)
    meta = client.get("/tasks/t-art/scans/dcm/metadata").json()
    assert meta["dicom_source"]["0020000D"]["Value"]  # StudyInstanceUID
    assert "dicom_source" not in client.get("/tasks/t-art/scans/tiff/metadata").json()


def test_cell_models_also_get_a_capped_zip_of_cell_crops(container: Container, tmp_path: Path) -> None:
    # GIVEN a synthetic slide with nuclei, analysed by the nuclei model, crops capped at 5
    from scanbridge.devtools.synth import make_slide

    slide = tmp_path / "nuclei.svs"
    make_slide(slide, 768, 512, tissue_fraction=0.4, seed=5, mpp=0.5)
    with FakePlatform(files={"n": slide}) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate(
            {"task_id": "t-cells", "scans": {"n": fake.url_for("n")}, "model_id": "nuclei", "jwt_token": "a.b.c"}))
        # WHEN the worker runs with a crop cap of 5
        task = build_processing(container, artifact_writer=ScanArtifactWriter(container.artifacts, max_crops=5)
                                ).run("t-cells")
    assert task.scans["n"].status == ScanStatus.SUCCEEDED
    client = TestClient(create_app(container))
    names = {a["file"] for a in client.get("/tasks/t-cells/artifacts").json()["artifacts"]}
    # THEN a crops ZIP holds exactly 5 RGBA crops (transparent outside the nucleus) and an index
    assert {"overlay.png", "labels.npy", "objects.csv", "crops.zip"} <= names
    zf = zipfile.ZipFile(io.BytesIO(client.get("/tasks/t-cells/artifacts/n/crops.zip").content))
    crops = sorted(n for n in zf.namelist() if n.endswith(".png"))
    assert crops == [f"cell_{i:04d}.png" for i in range(1, 6)]
    crop = np.asarray(Image.open(io.BytesIO(zf.read(crops[0]))))
    assert crop.shape[2] == 4 and crop[..., 3].max() == 255 and crop[..., 3].min() == 0
    index = list(csv.DictReader(io.StringIO(zf.read("index.csv").decode())))
    assert len(index) == 5
    # AND the CSV has one row per nucleus with its measurements
    result = json.loads(container.artifacts.get("tasks/t-cells/scans/n/result.json") or b"{}")
    rows = list(csv.DictReader(io.StringIO(client.get("/tasks/t-cells/artifacts/n/objects.csv").text)))
    assert len(rows) == len(result["geojson"]["features"]) > 5
    assert {"Area px^2", "Eccentricity", "Solidity"} <= set(rows[0])


def test_a_failing_artifact_writer_never_fails_the_scan(container: Container) -> None:
    # GIVEN an artifact writer that raises
    def broken(*_args: Any) -> dict[str, Any]:
        raise RuntimeError("disk full")

    # WHEN the worker processes a good scan with it
    _run(container, "t-broken", {"1": [fixture_path("boxes.tiff")]}, artifact_writer=broken)
    # THEN the scan still succeeds, and there is simply nothing to list
    task = container.queries.task("t-broken")
    assert task.scans["1"].status == ScanStatus.SUCCEEDED
    client = TestClient(create_app(container))
    assert client.get("/tasks/t-broken/artifacts").json()["artifacts"] == []


def test_artifacts_are_scoped_to_the_tenant_and_unknown_names_are_404(settings: Settings) -> None:
    # GIVEN a processed task of companyA and an API with two tenants' keys
    container = bootstrap(settings, tasks=MemoryTaskStore(), artifacts=MemoryArtifactStore(), secrets=FernetSecretBox(),
                          launcher=MemoryJobLauncher(), platform=ScriptedPlatform(), sleep=lambda _s: None)
    with FakePlatform(files={"b": fixture_path("boxes.tiff")}) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        container.intake.accept(WebhookPayload.model_validate(
            {"task_id": "t-scope", "company_id": "companyA", "jwt_token": "a.b.c", "scans": {"1": fake.url_for("b")}}))
        build_processing(container).run("t-scope")
    container.settings.api_keys = "key-a:companyA,key-b:companyB"
    client = TestClient(create_app(container))
    # WHEN each tenant (and nobody) asks for the overlay / THEN only the owner gets it
    url = "/tasks/t-scope/artifacts/1/overlay.png"
    assert client.get(url, headers={"X-API-Key": "key-a"}).status_code == 200
    assert client.get(url, headers={"X-API-Key": "key-b"}).json()["error"]["code"] == "TASK_NOT_FOUND"
    assert client.get(url).status_code == 401
    # AND unknown files or scans are a uniform 404
    for bad in ("/tasks/t-scope/artifacts/1/nope.png", "/tasks/t-scope/artifacts/9/overlay.png",
                "/tasks/t-scope/artifacts/1/..%2Fresult.json"):
        resp = client.get(bad, headers={"X-API-Key": "key-a"})
        assert resp.status_code == 404 and resp.json()["error"]["code"] in ("NOT_FOUND", "TASK_NOT_FOUND")
