"""The results body posted to the platform (PLATFORM.md section 2) and GeoJSON checks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ScanResult(BaseModel):
    """One scan's result as the platform takes it."""

    model_config = ConfigDict(populate_by_name=True)

    scanId: str  # noqa: N815 - the platform's key
    results: dict[str, Any] | None = None
    geojson: dict[str, Any] | None = None
    qcFailReasons: list[str] | None = None  # noqa: N815 - the platform's key


class ResultsPayload(BaseModel):
    """The whole POST body: caseResults across scans plus one ScanResult per scan."""

    caseResults: dict[str, Any] = Field(default_factory=dict)  # noqa: N815 - the platform's key
    scanResults: list[ScanResult] = Field(default_factory=list)  # noqa: N815 - the platform's key

    def to_body(self) -> dict[str, Any]:
        """The JSON body exactly as it is posted."""
        return self.model_dump(mode="json", exclude_none=True)


def failure_result(scan_id: str, code: str, message: str, qc_reason: str | None = None) -> ScanResult:
    """A scan result that explains, in the platform's UI, why the scan was not analysed."""
    summary = {"Status": "Not analysed", "Reason": message, "Error code": code}
    return ScanResult(
        scanId=scan_id,
        results={"report": {"summary": summary, "rois": None}, "error": {"code": code, "message": message}},
        geojson={"type": "FeatureCollection", "features": []},
        qcFailReasons=[qc_reason] if qc_reason else None,
    )


def _positions(geometry: dict[str, Any]) -> list[list[float]]:
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "Point":
        return [coords]  # type: ignore[list-item]
    if kind in ("MultiPoint", "LineString"):
        return list(coords or [])
    if kind in ("Polygon", "MultiLineString"):
        return [p for ring in coords or [] for p in ring]
    if kind == "MultiPolygon":
        return [p for poly in coords or [] for ring in poly for p in ring]
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries", []) for p in _positions(g)]
    raise ValueError(f"unknown geometry type {kind!r}")


def geojson_problems(fc: dict[str, Any], width: int | None = None, height: int | None = None) -> list[str]:
    """Every way `fc` breaks the platform's GeoJSON rules (empty when it follows them)."""
    problems: list[str] = []
    if fc.get("type") != "FeatureCollection":
        return ["not a FeatureCollection"]
    for i, feature in enumerate(fc.get("features", [])):
        where = f"feature {i}"
        if feature.get("type") != "Feature":
            problems.append(f"{where}: type is not Feature")
            continue
        props = feature.get("properties") or {}
        if not isinstance(props.get("annotation_type"), str):
            problems.append(f"{where}: properties.annotation_type missing")
        geometry = feature.get("geometry") or {}
        if geometry.get("type") == "MultiPolygon" and len(geometry.get("coordinates", [])) == 1:
            problems.append(f"{where}: a single polygon must be a Polygon")
        rings: list[list[list[float]]] = []
        if geometry.get("type") == "Polygon":
            rings = geometry.get("coordinates", [])
        elif geometry.get("type") == "GeometryCollection":
            for g in geometry.get("geometries", []):
                if g.get("type") == "Polygon":
                    rings.extend(g.get("coordinates", []))
            colours = props.get("contour_colors")
            if not isinstance(colours, list) or not all(isinstance(c, str) for c in colours):
                problems.append(f"{where}: heat map without properties.contour_colors")
        for ring in rings:
            if len(ring) < 4 or ring[0] != ring[-1]:
                problems.append(f"{where}: a ring is not closed")
                break
        try:
            positions = _positions(geometry)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if width is not None and height is not None:
            for x, y in positions:
                if not (0 <= x <= width and 0 <= y <= height):
                    problems.append(f"{where}: ({x}, {y}) lies outside the {width}x{height} slide")
                    break
    return problems
