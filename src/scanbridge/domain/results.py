"""The results body posted to the platform (PLATFORM.md section 2) and GeoJSON checks."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scanbridge.domain import geojson as gj


class ScanResult(BaseModel):
    """One scan's result as the platform takes it."""

    model_config = ConfigDict(populate_by_name=True)

    scanId: str
    results: dict[str, Any] | None = None
    geojson: dict[str, Any] | None = None
    qcFailReasons: list[str] | None = None


class ResultsPayload(BaseModel):
    """The whole POST body: caseResults across scans plus one ScanResult per scan."""

    caseResults: dict[str, Any] = Field(default_factory=dict)
    scanResults: list[ScanResult] = Field(default_factory=list)

    def to_body(self) -> dict[str, Any]:
        """The JSON body exactly as it is posted."""
        return self.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class JsonBody:
    """A JSON document as chunks of its UTF-8 text, sent and stored as they are (never parsed nor joined
    on the way): a results body is each scan's stored result.json copied between a few bytes of its own."""

    chunks: tuple[bytes, ...]

    @classmethod
    def of(cls, value: Any) -> JsonBody:
        """`json.dumps(value)` as one chunk."""
        return cls((json.dumps(value).encode(),))

    @property
    def size(self) -> int:
        """The length of the text in bytes (the request's Content-Length)."""
        return sum(len(c) for c in self.chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def to_bytes(self) -> bytes:
        """The whole text."""
        return b"".join(self.chunks)

    def parsed(self) -> Any:
        """The document as Python values (json.loads)."""
        return json.loads(self.to_bytes())


class QcFinding(BaseModel):
    """One failed quality check (or scan failure) as scanbridge names it: a code and a readable message."""

    code: str
    message: str


def qc_reasons(codes: list[str], mapping: dict[str, str]) -> list[str] | None:
    """The company's qcFailReasons for scanbridge codes (unmapped codes left out; None when none map)."""
    reasons: list[str] = []
    for code in codes:
        reason = mapping.get(code)
        if reason and reason not in reasons:
            reasons.append(reason)
    return reasons or None


def failure_result(scan_id: str, code: str, message: str, qc_reason: str | None = None) -> ScanResult:
    """A scan result that explains, in the platform's UI, why the scan was not analysed."""
    summary = {"Status": "Not analysed", "Reason": message, "Error code": code}
    return ScanResult(
        scanId=scan_id,
        results={"report": {"summary": summary, "rois": None}, "error": {"code": code, "message": message}},
        geojson={"type": "FeatureCollection", "features": []},
        qcFailReasons=[qc_reason] if qc_reason else None,
    )


def qc_failure_result(scan_id: str, findings: list[QcFinding], mapping: dict[str, str],
                      qc: dict[str, Any] | None = None) -> ScanResult:
    """A scan result for a scan that failed quality control and was not analysed."""
    first = findings[0]
    summary = {"Status": "Not analysed", "Reason": "; ".join(f.message for f in findings),
               "Error code": first.code, "Quality control": "failed: " + ", ".join(f.code for f in findings)}
    results: dict[str, Any] = {"report": {"summary": summary, "rois": None},
                               "error": {"code": first.code, "message": first.message}}
    if qc is not None:
        results["qc"] = qc
    return ScanResult(scanId=scan_id, results=results, geojson={"type": "FeatureCollection", "features": []},
                      qcFailReasons=qc_reasons([f.code for f in findings], mapping))


def with_qc_findings(result: ScanResult, findings: list[QcFinding], mapping: dict[str, str],
                     qc: dict[str, Any] | None = None) -> ScanResult:
    """An analysed scan's result flagged with the quality checks it failed (the model still ran)."""
    results = dict(result.results or {})
    report = dict(results.get("report") or {})
    summary = dict(report.get("summary") or {})
    if findings:
        summary["Quality control"] = "failed: " + "; ".join(f"{f.code}: {f.message}" for f in findings)
    report["summary"] = summary
    results["report"] = report
    if qc is not None:
        results["qc"] = qc
    reasons = qc_reasons([f.code for f in findings], mapping)
    merged = list(dict.fromkeys([*(result.qcFailReasons or []), *(reasons or [])])) or None
    return result.model_copy(update={"results": results, "qcFailReasons": merged})


QUPATH_OBJECT_TYPES = frozenset({"annotation", "detection", "cell", "tile", "tmaCore"})


def qupath_problems(fc: dict[str, Any]) -> list[str]:
    """Every way `fc`'s QuPath keys break what QuPath's GeoJSON import reads (empty when none).

    QuPath (PathObjectTypeAdapters) reads a top-level `id` as a UUID, `properties.objectType` (falling
    back to `properties.type`, so a class name there becomes an unknown object type),
    `properties.classification` as {name, color: [r, g, b]} and `properties.measurements` as a flat
    map of numbers; NaN/Infinity are not JSON.
    """
    problems: list[str] = []
    for i, feature in enumerate(gj.features(fc)):
        where = f"feature {i}"
        props = gj.properties(feature)
        if "id" in feature:
            try:
                uuid.UUID(str(feature["id"]))
            except ValueError:
                problems.append(f"{where}: id is not a UUID")
        if "type" in props:
            problems.append(f"{where}: properties.type is read by QuPath as the object type")
        if "objectType" in props and props["objectType"] not in QUPATH_OBJECT_TYPES:
            problems.append(f"{where}: objectType {props['objectType']!r} is not a QuPath object type")
        cls = props.get("classification")
        if cls is not None:
            colour = cls.get("color") if isinstance(cls, dict) else None
            if not isinstance(cls, dict) or not isinstance(cls.get("name"), str):
                problems.append(f"{where}: classification needs a name")
            elif colour is not None and not (isinstance(colour, list) and len(colour) == 3 and all(
                    isinstance(c, int) and 0 <= c <= 255 for c in colour)):
                problems.append(f"{where}: classification.color must be [r, g, b] integers 0-255")
        measurements = props.get("measurements")
        if measurements is not None:
            if not isinstance(measurements, dict):
                problems.append(f"{where}: measurements must be a flat map name -> number")
            elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                         for v in measurements.values()):
                problems.append(f"{where}: measurements must be finite numbers")
    return problems


def geojson_problems(fc: dict[str, Any], width: int | None = None, height: int | None = None) -> list[str]:
    """Every way `fc` breaks the platform's GeoJSON rules (empty when it follows them)."""
    problems: list[str] = []
    if fc.get("type") != "FeatureCollection":
        return ["not a FeatureCollection"]
    for i, feature in enumerate(gj.features(fc)):
        where = f"feature {i}"
        if feature.get("type") != "Feature":
            problems.append(f"{where}: type is not Feature")
            continue
        props = gj.properties(feature)
        if not isinstance(props.get("annotation_type"), str):
            problems.append(f"{where}: properties.annotation_type missing")
        geometry = gj.geometry(feature)
        if geometry.get("type") == "MultiPolygon" and len(geometry.get("coordinates", [])) == 1:
            problems.append(f"{where}: a single polygon must be a Polygon")
        if gj.is_heatmap(feature):
            colours = props.get("contour_colors")
            if not isinstance(colours, list) or not all(isinstance(c, str) for c in colours):
                problems.append(f"{where}: heat map without properties.contour_colors")
        for ring in (r for part in gj.parts(geometry) for r in gj.rings(part)):
            if len(ring) < 4 or ring[0] != ring[-1]:
                problems.append(f"{where}: a ring is not closed")
                break
        try:
            positions = gj.positions(geometry)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if width is not None and height is not None:
            for x, y in positions:
                if not (0 <= x <= width and 0 <= y <= height):
                    problems.append(f"{where}: ({x}, {y}) lies outside the {width}x{height} slide")
                    break
    return problems
