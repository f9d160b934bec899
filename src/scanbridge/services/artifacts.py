"""Per-scan artifacts: what the worker stores beside each result, and what the API lists and serves.

Written once a scan succeeds (`ScanArtifactWriter`, injected into ProcessingService) from the scan the
worker opened once (its reader, its shared overview, a ZIP's already unpacked files), under
`tasks/{task_id}/scans/{scan_id}/artifacts/{file}` in the ArtifactStore:

- `overlay.png`     the thumbnail with outlines / points / heat map drawn (exports/overlay.py)
- `labels.npy`      int32 label mask, level 0 downsampled by a power of two to at most 2048 px a side;
                    value n is the n-th object row of objects.csv (0 = background) (exports/raster.py)
- `objects.csv`     one row per object feature with its measurements (exports/csv.py)
- `crops.zip`       RGBA PNG crops of cells / nuclei (first `max_crops`), when the features are cells
                    (exports/crops.py)
- `annotations.dcm` / `segmentation.dcm`  the DICOM ANN and SEG exports (exports/dicom.py)
- `source.dcm`  SVS/TIFF scans: the synthetic VL WSI source (blank pixels) that ANN and SEG reference

The scan's metadata.json gets the tissue figure the artifacts were drawn with (`tissue`: the scan's one
tissue mask, the figure QC and the summary state). The API serves them itself (`GET /tasks/{id}/artifacts/{scan_id}/{file}`): presigned S3 links are
not reachable from a browser in local mode (moto listens on loopback inside the stack).
The writer imports the readers, numpy and highdicom lazily: the API side imports this module too.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from scanbridge.domain.errors import NotFoundError
from scanbridge.domain.feature_spool import result_features
from scanbridge.domain.results import ScanResult
from scanbridge.domain.storage_keys import (
    ARTIFACT_KINDS,
    CROPS_ZIP,
    LABELS_NPY,
    OBJECTS_CSV,
    OVERLAY_PNG,
    artifact_key,
    artifact_of,
    scans_prefix,
)
from scanbridge.ports import ArtifactStore
from scanbridge.services.queries import QueryService

if TYPE_CHECKING:
    from scanbridge.imaging.scan import OpenedScan

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "png": "image/png", "npy": "application/octet-stream", "csv": "text/csv; charset=utf-8",
    "zip": "application/zip", "dcm": "application/dicom", "json": "application/json",
}
MASK_MAX_SIDE = 2048
OVERLAY_MAX_SIDE = 1024
ARTIFACT_THREADS = 3
ARTIFACT_MEMORY_BYTES = 1 << 20  # an artifact's first MiB is written in memory, the rest to a temporary file


def content_type(name: str) -> str:
    """The media type of an artifact file, from its suffix."""
    return CONTENT_TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")


@dataclass(frozen=True)
class Artifact:
    """One stored artifact: `name` is `{scan_id}/{file}`, `url` the API route that serves it."""

    name: str
    scan_id: str
    file: str
    kind: str
    content_type: str
    url: str

    def to_json(self) -> dict[str, str]:
        """The listing entry."""
        return {"name": self.name, "scan_id": self.scan_id, "file": self.file, "kind": self.kind,
                "content_type": self.content_type, "url": self.url}


class ArtifactService:
    """Lists and reads a task's artifacts, scoped to a tenant like every other read.

    >>> [a.name for a in artifacts.list("task-1")]
    ['8823846/labels.npy', '8823846/objects.csv', '8823846/overlay.png', ...]
    """

    def __init__(self, queries: QueryService, artifacts: ArtifactStore) -> None:
        self._queries = queries
        self._artifacts = artifacts

    def list(self, task_id: str, company_id: str | None = None, base_url: str = "") -> list[Artifact]:
        """Every artifact of the task's scans, sorted by scan then file."""
        task = self._queries.task(task_id, company_id)
        found: list[Artifact] = []
        for key in self._artifacts.list(scans_prefix(task_id)):
            parsed = artifact_of(task_id, key)
            if parsed is None or parsed[0] not in task.scans:
                continue
            scan_id, file = parsed
            name = f"{scan_id}/{file}"
            url = f"{base_url.rstrip('/')}/tasks/{quote(task_id, safe='')}/artifacts/" \
                  f"{quote(scan_id, safe='')}/{quote(file, safe='')}"
            found.append(Artifact(name=name, scan_id=scan_id, file=file, kind=ARTIFACT_KINDS.get(file, "file"),
                                  content_type=content_type(file), url=url))
        return sorted(found, key=lambda a: (a.scan_id, a.file))

    def get(self, task_id: str, scan_id: str, file: str, company_id: str | None = None) -> tuple[bytes, str]:
        """The artifact's bytes and media type; NOT_FOUND when absent."""
        task = self._queries.task(task_id, company_id)
        if scan_id not in task.scans or "/" in file or file in ("", ".", ".."):
            raise NotFoundError(f"task {task_id!r} has no artifact {scan_id}/{file}")
        body = self._artifacts.get(artifact_key(task_id, scan_id, file))
        if body is None:
            raise NotFoundError(f"task {task_id!r} has no artifact {scan_id}/{file}")
        return body, content_type(file)


def dicom_source_header(paths: list[Path]) -> dict[str, Any] | None:
    """DICOM JSON of the scan's level-0 image header when the scan is DICOM (None otherwise); `paths` are
    the files the reader reads (a ZIP's unpacked entries: a ZIP scan is referenced as the instances it holds)."""
    import pydicom

    from scanbridge.exports.dicom import dicom_header_json

    best: tuple[int, int, Any] | None = None
    for path in paths:
        try:
            with open(path, "rb") as fh:
                fh.seek(128)
                if fh.read(4) != b"DICM":
                    continue
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError):
            continue
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        volume = 1 if "VOLUME" in image_type or not image_type else 0
        size = int(ds.get("TotalPixelMatrixColumns") or ds.get("Columns") or 0) * \
            int(ds.get("TotalPixelMatrixRows") or ds.get("Rows") or 0)
        if best is None or (volume, size) > best[:2]:
            best = (volume, size, ds)
    return dicom_header_json(best[2]) if best else None


class ScanArtifactWriter:
    """Writes a succeeded scan's artifacts; returns extra metadata (`dicom_source`) for metadata.json.

    Never raises: an artifact that cannot be made is logged and left out (the scan's result stands).

    >>> with OpenedScan.open([Path("scan.svs")]) as scan:
    ...     writer("task-1", "scan-7", scan, result)
    {'tissue': {'fraction': 0.1094, 'percent': '10.94 %', 'area_mm2': 1.2, 'mask_downsample': 16.0}}
    """

    def __init__(self, artifacts: ArtifactStore, *, max_crops: int = 200, dicom: bool = True) -> None:
        self._artifacts = artifacts
        self._max_crops = max_crops
        self._dicom = dicom

    def __call__(self, task_id: str, scan_id: str, scan: OpenedScan, result: ScanResult) -> dict[str, Any]:
        """Draw and store every artifact from the open scan.

        Every artifact reads the result's features one at a time from the one FeatureSource
        (`result_features`: a streamed result's spool, never built whole), is written into a spooled
        temporary file and stored from it (`ArtifactStore.put_file`)."""
        extra: dict[str, Any] = {"tissue": scan.tissue.to_json()}
        source = result_features(result)

        def put(name: str, make: Callable[[IO[bytes]], bool | None]) -> None:
            with tempfile.SpooledTemporaryFile(max_size=ARTIFACT_MEMORY_BYTES, mode="w+b") as out:
                try:
                    if make(out) is False:  # nothing to store (e.g. no cells to crop)
                        return
                except Exception:  # one artifact failing must fail neither the scan nor the other artifacts
                    log.warning("artifact %s not written", name, exc_info=True,
                                extra={"task_id": task_id, "scan_id": scan_id})
                    return
                out.seek(0)
                self._artifacts.put_file(artifact_key(task_id, scan_id, name), out, content_type(name))

        try:
            dicom_source = dicom_source_header(scan.files)
        except Exception:
            log.warning("DICOM source header not read", exc_info=True, extra={"task_id": task_id})
            dicom_source = None
        if dicom_source:
            extra["dicom_source"] = dicom_source
        from scanbridge.exports import DICOM_ARTIFACTS, crops, dicom, raster
        from scanbridge.exports.csv import object_features, write_csv
        from scanbridge.exports.overlay import write_overlay

        reader, meta = scan.reader, scan.metadata
        width, height = meta.dimensions

        def overlay_png(out: IO[bytes]) -> None:
            thumb, ds = scan.thumbnail(OVERLAY_MAX_SIDE)  # from the scan's one overview
            write_overlay(out, thumb, ds, source)

        def labels(out: IO[bytes]) -> None:
            raster.write_npy(out, raster.label_mask(object_features(source), width, height, MASK_MAX_SIDE))

        def cell_crops(out: IO[bytes]) -> bool:
            cells = (f for f in object_features(source) if crops.is_cell_feature(f))
            first = next(cells, None)
            if first is None:
                return False  # not a cell / nucleus result: no crops.zip
            crops.write_cell_crops(out, reader, itertools.chain([first], cells), max_crops=self._max_crops)
            return True

        jobs: list[tuple[str, Callable[[IO[bytes]], bool | None]]] = [
            (OVERLAY_PNG, overlay_png), (LABELS_NPY, labels), (OBJECTS_CSV, lambda out: write_csv(out, source)),
            (CROPS_ZIP, cell_crops)]
        if self._dicom:
            metadata = {**meta.to_json(), **extra}
            model = (result.results or {}).get("model") or {}

            def dicom_file(fmt: str) -> Callable[[IO[bytes]], None]:
                return lambda out: dicom.write_dicom(out, fmt, source, metadata, scan_id, model=model)

            jobs.extend((name, dicom_file(fmt)) for fmt, name in DICOM_ARTIFACTS.items()
                        if not (fmt == "dicom-source" and dicom_source))  # a DICOM scan's own files are its source
        # Independent artifacts in a few threads: PNG/zlib, numpy and the readers release the GIL; each
        # reads the features itself (the spool is safe to read from threads).
        with ThreadPoolExecutor(max_workers=ARTIFACT_THREADS, thread_name_prefix="artifact") as pool:
            list(pool.map(lambda job: put(*job), jobs))
        return extra
