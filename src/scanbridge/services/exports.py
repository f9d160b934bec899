"""The export service: one scan's stored results as a file in a chosen format (the formats: `exports/`).

GeoJSON and CSV are made from the stored `result.json` with the standard library only (the API
Lambda's layer has no numpy), read from its text a feature at a time (`StoredResult`: never parsed
whole) into a spooled temporary file that the API then sends in chunks. The DICOM files need highdicom,
pydicom and numpy: the worker writes them next to the other artifacts when a scan succeeds
(`services/artifacts.py`), and the API serves those; where the libraries are importable (the local
stack), a missing one is built on demand, from the same features.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from scanbridge.domain.errors import NotFoundError, ResultsNotReadyError, ValidationError
from scanbridge.domain.feature_spool import StoredResult
from scanbridge.domain.status import ScanStatus
from scanbridge.domain.storage_keys import artifact_key, scan_metadata_key, scan_result_key
from scanbridge.exports import DICOM_ARTIFACTS, FORMATS
from scanbridge.exports.csv import write_csv
from scanbridge.ports import ArtifactStore
from scanbridge.services.queries import QueryService

EXPORT_MEMORY_BYTES = 1 << 20  # an export's first MiB stays in memory, the rest goes to a temporary file
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Export:
    """One exported file: a binary file read from its start, its size in bytes, media type and a download
    name. `chunks()` reads it and closes it."""

    file: IO[bytes]
    size: int
    media_type: str
    filename: str

    @classmethod
    def written(cls, write: Callable[[IO[bytes]], object], media_type: str, filename: str) -> Export:
        """The file `write` writes (spooled: in memory up to EXPORT_MEMORY_BYTES, then on disk)."""
        out = tempfile.SpooledTemporaryFile(max_size=EXPORT_MEMORY_BYTES, mode="w+b")  # noqa: SIM115 - chunks() closes it
        try:
            write(out)
            size = out.tell()
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return cls(out, size, media_type, filename)

    @classmethod
    def of(cls, body: bytes, media_type: str, filename: str) -> Export:
        """An export of bytes already made (a stored DICOM file)."""
        return cls(io.BytesIO(body), len(body), media_type, filename)

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, a chunk at a time; the file is closed at the end."""
        try:
            while chunk := self.file.read(_CHUNK):
                yield chunk
        finally:
            self.file.close()


class ExportService:
    """One scan's results as a file in a chosen format.

    >>> exports.export("task-1", "scan-7", "geojson").media_type
    'application/geo+json'
    """

    def __init__(self, queries: QueryService, artifacts: ArtifactStore) -> None:
        self._queries = queries
        self._artifacts = artifacts

    def export(self, task_id: str, scan_id: str, fmt: str, company_id: str | None = None) -> Export:
        """The export of a successfully analysed scan; NOT_FOUND / RESULTS_NOT_READY otherwise.

        GeoJSON is `json.dumps` of the stored result's `geojson` (an empty FeatureCollection without one),
        byte for byte; the CSV and DICOM files are those the worker writes from the same features."""
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
        stored = StoredResult(raw)
        del raw  # the text is kept (decoded), not the bytes too
        media, suffix = FORMATS[fmt]
        filename = f"{_safe(task_id)}_{_safe(scan_id)}.{suffix}"
        if fmt == "geojson":
            return Export.written(lambda out: _write_all(out, stored.geojson_chunks()), media, filename)
        if fmt == "csv":
            return Export.written(lambda out: write_csv(out, stored.features), media, filename)
        key = artifact_key(task_id, scan_id, DICOM_ARTIFACTS[fmt])
        made = self._artifacts.get(key)
        if made is not None:
            return Export.of(made, media, filename)
        meta_raw = self._artifacts.get(scan_metadata_key(task_id, scan_id))
        if meta_raw is None:
            raise ResultsNotReadyError(f"scan {scan_id!r} has no stored metadata")
        results = stored.member("results")
        model = (results.get("model") if isinstance(results, dict) else None) or {}
        try:
            from scanbridge.exports.dicom import write_dicom

            export = Export.written(lambda out: write_dicom(out, fmt, stored.features, json.loads(meta_raw),
                                                            scan_id, model=model), media, filename)
        except ImportError as exc:  # the API Lambda's layer has no highdicom: only stored exports there
            raise NotFoundError(f"the {fmt} export of scan {scan_id!r} was not stored by the worker") from exc
        self._artifacts.put_file(key, export.file, "application/dicom")
        export.file.seek(0)
        return export


def _write_all(out: IO[bytes], chunks: Iterator[bytes]) -> None:
    for chunk in chunks:  # one write each: a spooled file moves to disk on the write that passes its size
        out.write(chunk)   # (`writelines` checks only once all is written)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80] or "_"
