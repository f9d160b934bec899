"""Synchronous small-image inference and segmentation quality (issue #5, "Also").

`POST /v1/infer/{model}`: one uploaded PNG / JPEG / TIFF runs through the very same `analyze_scan` the
worker uses (on an in-memory reader), in the thread pool; the answer is `{geojson, summary, metrics}`.
`POST /v1/evaluate`: AP50 / Jaccard of a prediction against ground truth (GeoJSON or .npy label masks).

Nothing heavy is imported at module scope: onnxruntime, the readers and scikit-image load on the first
call, so the API Lambda's cold start stays as it was.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from scanbridge.domain import geojson as gj
from scanbridge.domain.errors import ValidationError
from scanbridge.entrypoints.http.deps import ContainerDep, Tenant

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # one image upload
MAX_IMAGE_SIDE = 4096  # px, either side
MAX_EVALUATE_BYTES = 50 * 1024 * 1024  # an /v1/evaluate body (two GeoJSONs or two masks)
_MULTIPART_SLACK = 64 * 1024  # boundaries and the other fields around the file

router = APIRouter(prefix="/v1", tags=["inference"])

_INFER_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": f"PNG, JPEG or TIFF; at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB and "
                                f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} px"},
        "mpp": {"type": "number", "exclusiveMinimum": 0,
                "description": "µm per pixel; without it the model runs at the image's own scale"},
    }}}}}
_EVALUATE_BODY = {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["pred", "gt"], "properties": {
        "pred": {"type": "object", "description": "GeoJSON FeatureCollection (level-0 pixels)"},
        "gt": {"type": "object", "description": "GeoJSON FeatureCollection (level-0 pixels)"}}}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["pred", "gt"], "additionalProperties": False,
                                       "properties": {
        "pred": {"type": "string", "format": "binary", "description": ".npy label mask (0 = background)"},
        "gt": {"type": "string", "format": "binary", "description": ".npy label mask (0 = background)"}}}},
}}


def _too_large(what: str, limit: int) -> HTTPException:
    return HTTPException(status_code=413, detail=f"{what} is larger than the limit of {limit:,} bytes")


def _check_length(request: Request, limit: int, what: str) -> None:
    """Refuse at once (413) when the declared body is already over the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(what, limit)


async def _read_upload(upload: UploadFile, limit: int, what: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise _too_large(what, limit)
    return data


def _mpp(raw: Any) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = float(str(raw))
    except ValueError as exc:
        raise ValidationError(f"mpp must be a number (µm per pixel), got {str(raw)[:40]!r}") from exc
    if not (math.isfinite(value) and 0 < value <= 1000):
        raise ValidationError("mpp must be a pixel size in µm, > 0 and <= 1000", details={"mpp": value})
    return value


def _metrics(geojson: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per feature that has measurements: its id, annotation type, class and measurements."""
    rows: list[dict[str, Any]] = []
    for feature in gj.features(geojson):
        props = gj.properties(feature)
        measurements = props.get("measurements")
        if not isinstance(measurements, dict) or not measurements:
            continue
        classification = props.get("classification") or {}
        rows.append({"id": feature.get("id"), "annotation_type": props.get("annotation_type"),
                     "class": classification.get("name"), "measurements": measurements})
    return rows


def _infer(model: Any, data: bytes, mpp: float | None, max_side: int) -> dict[str, Any]:
    """Decode, analyse with the worker's own analyze_scan, shape the answer (runs in the thread pool)."""
    from scanbridge.imaging.readers.memory import MemoryReader, decode_image
    from scanbridge.inference.analyze import analyze_scan

    rgb, fmt = decode_image(data, max_side=max_side)
    reader = MemoryReader(rgb, mpp=mpp, fmt=fmt)
    try:
        analysis = analyze_scan("upload", reader, model)
    finally:
        reader.close()
    result = analysis.result
    geojson = result.geojson or {"type": "FeatureCollection", "features": []}
    results = result.results or {}
    spec = model.spec
    return {
        "geojson": geojson,
        "summary": (results.get("report") or {}).get("summary", {}),
        "metrics": _metrics(geojson),
        "model": {"name": spec.name, "version": spec.version},
        "image": {"width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "format": fmt, "mpp": mpp},
        "timings": {k: round(v, 4) for k, v in analysis.timings.items()},
    }


@router.post("/infer/{model}", openapi_extra={"requestBody": _INFER_BODY})
async def infer(model: str, request: Request, _caller: Tenant, container: ContainerDep) -> dict[str, Any]:
    """Run a model on one small image now: multipart `file` (PNG/JPEG/TIFF) and optional `mpp` form field.

    Answers `{geojson, summary, metrics}` (metrics: each object's measurements). 413 over the byte cap,
    422 over the pixel cap or for a file that is not an image, 404 MODEL_NOT_FOUND for an unknown model.
    """
    max_bytes = MAX_UPLOAD_BYTES
    _check_length(request, max_bytes + _MULTIPART_SLACK, "the upload")
    loader = container.model_loader()  # made on the first call (onnxruntime imported then)
    await run_in_threadpool(loader.check, model)  # 404 before the upload is read
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValidationError("send the image as multipart/form-data with a `file` field")
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationError("the multipart body needs a `file` field with the image")
        mpp = _mpp(form.get("mpp"))
        data = await _read_upload(upload, max_bytes, "the image")
    if not data:
        raise ValidationError("the uploaded file is empty")
    onnx_model = await run_in_threadpool(loader.load, model)
    return await run_in_threadpool(_infer, onnx_model, data, mpp, MAX_IMAGE_SIDE)


@router.post("/evaluate", openapi_extra={"requestBody": _EVALUATE_BODY})
async def evaluate(request: Request, _caller: Tenant) -> dict[str, Any]:
    """AP at IoU 0.5 (TP / (TP + FP + FN), as cellpose) and pixel Jaccard of `pred` against `gt`.

    JSON `{pred, gt}` (GeoJSON FeatureCollections) or multipart `pred` + `gt` (.npy label masks).
    Answers `{ap50, jaccard, tp, fp, fn, n_pred, n_gt, mean_matched_iou}`.
    """
    limit = MAX_EVALUATE_BYTES
    _check_length(request, limit, "the body")
    content_type = request.headers.get("content-type", "")
    pred: Any
    gt: Any
    if content_type.startswith("multipart/form-data"):
        from scanbridge.services.evaluation import load_npy

        async with request.form(max_files=2, max_fields=4) as form:
            parts = {}
            for name in ("pred", "gt"):
                upload = form.get(name)
                if not isinstance(upload, UploadFile):
                    raise ValidationError(f"the multipart body needs a `{name}` file (.npy label mask)")
                parts[name] = await _read_upload(upload, limit, f"`{name}`")
        pred, gt = load_npy(parts["pred"], "pred"), load_npy(parts["gt"], "gt")
    else:
        raw = await request.body()
        if len(raw) > limit:
            raise _too_large("the body", limit)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValidationError(f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or "pred" not in body or "gt" not in body:
            raise ValidationError("the body must be a JSON object {pred, gt} of GeoJSON FeatureCollections")
        pred, gt = body["pred"], body["gt"]

    def run() -> dict[str, Any]:
        from scanbridge.services.evaluation import evaluate as evaluate_sources

        return evaluate_sources(pred, gt).to_json()

    return await run_in_threadpool(run)
