"""The export service: one scan's stored results as a file in a chosen format (the formats: `exports/`).

GeoJSON and CSV are made from the stored `result.json` with the standard library only (the API
Lambda's layer has no numpy). The DICOM files need highdicom, pydicom and numpy: the worker writes
them next to the other artifacts when a scan succeeds (`services/artifacts.py`), and the API serves
those; where the libraries are importable (the local stack), a missing one is built on demand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from scanbridge.domain.errors import NotFoundError, ResultsNotReadyError, ValidationError
from scanbridge.domain.status import ScanStatus
from scanbridge.domain.storage_keys import artifact_key, scan_metadata_key, scan_result_key
from scanbridge.exports import DICOM_ARTIFACTS, FORMATS
from scanbridge.exports.csv import features_csv
from scanbridge.ports import ArtifactStore
from scanbridge.services.queries import QueryService


@dataclass(frozen=True)
class Export:
    """One exported file: bytes, media type and a download name."""

    body: bytes
    media_type: str
    filename: str


class ExportService:
    """One scan's results as a file in a chosen format.

    >>> exports.export("task-1", "scan-7", "geojson").media_type
    'application/geo+json'
    """

    def __init__(self, queries: QueryService, artifacts: ArtifactStore) -> None:
        self._queries = queries
        self._artifacts = artifacts

    def export(self, task_id: str, scan_id: str, fmt: str, company_id: str | None = None) -> Export:
        """The export of a successfully analysed scan; NOT_FOUND / RESULTS_NOT_READY otherwise."""
        if fmt not in FORMATS:
            raise ValidationError(f"unknown export format {fmt!r}", details={"formats": sorted(FORMATS)})
        task = self._queries.task(task_id, company_id)
        scan = task.scans.get(scan_id)
        if scan is None:
            raise NotFoundError(f"task {task_id!r} has no scan {scan_id!r}")
        if scan.status != ScanStatus.SUCCEEDED:
            raise ResultsNotReadyError(f"scan {scan_id!r} has no results to export (status {scan.status})")
        raw = self._artifacts.get(scan_result_key(task_id, scan_id))
        if raw is None:
            raise ResultsNotReadyError(f"scan {scan_id!r} has no stored result")
        result: dict[str, Any] = json.loads(raw)
        media, suffix = FORMATS[fmt]
        filename = f"{_safe(task_id)}_{_safe(scan_id)}.{suffix}"
        geojson = result.get("geojson") or {"type": "FeatureCollection", "features": []}
        if fmt == "geojson":
            return Export(json.dumps(geojson).encode(), media, filename)
        if fmt == "csv":
            return Export(features_csv(geojson), media, filename)
        stored = self._artifacts.get(artifact_key(task_id, scan_id, DICOM_ARTIFACTS[fmt]))
        if stored is not None:
            return Export(stored, media, filename)
        meta_raw = self._artifacts.get(scan_metadata_key(task_id, scan_id))
        if meta_raw is None:
            raise ResultsNotReadyError(f"scan {scan_id!r} has no stored metadata")
        try:
            from scanbridge.exports.dicom import build_dicom

            body = build_dicom(fmt, result, json.loads(meta_raw), scan_id)
        except ImportError as exc:  # the API Lambda's layer has no highdicom: only stored exports there
            raise NotFoundError(f"the {fmt} export of scan {scan_id!r} was not stored by the worker") from exc
        self._artifacts.put(artifact_key(task_id, scan_id, DICOM_ARTIFACTS[fmt]), body, "application/dicom")
        return Export(body, media, filename)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80] or "_"
