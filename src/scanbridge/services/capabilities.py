"""What this bridge can do: models and their specs, scan formats, DICOM transfer syntaxes, limits, routes.

The API side must not import the readers (Lambda cold start), so the formats and transfer syntaxes are
constants here; `tests/integration/test_live.py` checks them against `imaging/readers` so they cannot
drift apart.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from scanbridge.config import Settings
from scanbridge.ports import ModelCatalog

#: scan formats `imaging.readers.open_scan()` routes by content (magic bytes, never file names)
FORMATS: list[dict[str, str]] = [
    {"format": "aperio-svs", "detected_by": "TIFF header", "reader": "openslide + tifffile tiles",
     "notes": "Aperio SVS pyramids: metadata from OpenSlide, regions from the compressed tiles (imagecodecs)"},
    {"format": "tiff", "detected_by": "TIFF header", "reader": "openslide or tifffile",
     "notes": "page pyramids via OpenSlide (regions from the compressed tiles); SubIFD pyramids, WebP, "
              "JPEG 2000, JPEG XL, zstd and stripped TIFF via tifffile"},
    {"format": "ome-tiff", "detected_by": "TIFF header", "reader": "tifffile",
     "notes": "OME-TIFF, tiled or not, SubIFD pyramids as pyramids"},
    {"format": "dicom-wsi", "detected_by": "DICM preamble", "reader": "pydicom",
     "notes": "VL Whole Slide Microscopy series (TILED_FULL/SPARSE, one or many files; scan_urls lists them)"},
    {"format": "dicom", "detected_by": "DICM preamble", "reader": "pydicom",
     "notes": "plain (non-WSI) DICOM images read as a single level"},
    {"format": "zip", "detected_by": "PK header", "reader": "any of the above",
     "notes": "unpacked with guards (size, count, ratio, paths), then routed by content"},
]

#: DICOM transfer syntaxes the readers decode: UID -> (name, reader)
DICOM_TRANSFER_SYNTAXES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2": ("Implicit VR Little Endian", "pydicom"),
    "1.2.840.10008.1.2.1": ("Explicit VR Little Endian", "pydicom"),
    "1.2.840.10008.1.2.1.99": ("Deflated Explicit VR Little Endian", "pydicom"),
    "1.2.840.10008.1.2.2": ("Explicit VR Big Endian", "pydicom"),
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline (Process 1)", "pydicom"),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended (Process 2 and 4)", "pydicom"),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless, Non-Hierarchical (Process 14)", "pydicom"),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless, Non-Hierarchical, First-Order Prediction", "pydicom"),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless Image Compression", "pydicom"),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Lossy (Near-Lossless) Image Compression", "pydicom"),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Image Compression (Lossless Only)", "pydicom"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000 Image Compression", "pydicom"),
    "1.2.840.10008.1.2.4.201": ("High-Throughput JPEG 2000 (Lossless Only)", "pydicom"),
    "1.2.840.10008.1.2.4.202": ("High-Throughput JPEG 2000 with RPCL Options (Lossless Only)", "pydicom"),
    "1.2.840.10008.1.2.4.203": ("High-Throughput JPEG 2000 Image Compression", "pydicom"),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "pydicom"),
}

#: the routes a client may discover here (ultrack-style "meta endpoint": id -> link + title)
ENDPOINTS: dict[str, dict[str, str]] = {
    "webhook": {"method": "POST", "link": "/webhook", "human_name": "Submit a platform task"},
    "tasks": {"method": "GET", "link": "/tasks", "human_name": "List tasks"},
    "task": {"method": "GET", "link": "/tasks/{task_id}", "human_name": "A task with its progress"},
    "events": {"method": "GET", "link": "/tasks/{task_id}/events",
               "human_name": "Live status (Server-Sent Events)"},
    "websocket": {"method": "WEBSOCKET", "link": "/ws/tasks/{task_id}", "human_name": "Live status (WebSocket)"},
    "logs": {"method": "GET", "link": "/tasks/{task_id}/logs", "human_name": "The worker's log lines of a task"},
    "results": {"method": "GET", "link": "/tasks/{task_id}/results", "human_name": "The results posted"},
    "metadata": {"method": "GET", "link": "/tasks/{task_id}/scans/{scan_id}/metadata",
                 "human_name": "What the reader found in a scan"},
    "cancel": {"method": "POST", "link": "/tasks/{task_id}/cancel", "human_name": "Cancel a task"},
    "artifacts": {"method": "GET", "link": "/tasks/{task_id}/artifacts", "human_name": "Per-scan artifacts"},
    "models": {"method": "GET", "link": "/models", "human_name": "Models"},
    "export": {"method": "GET", "link": "/tasks/{task_id}/scans/{scan_id}/export?format=geojson|csv|dicom-ann|dicom-seg",
               "human_name": "Export a scan's results"},
    "infer": {"method": "POST", "link": "/v1/infer/{model}", "human_name": "Synchronous inference on one image"},
    "evaluate": {"method": "POST", "link": "/v1/evaluate", "human_name": "AP50 and Jaccard against ground truth"},
    "mcp": {"method": "POST", "link": "/mcp", "human_name": "Model Context Protocol (streamable HTTP)"},
    "model_upload": {"method": "PUT", "link": "/admin/models/{name}",
                     "human_name": "Register a model (admin; the ONNX file is checked with onnxruntime)"},
}

_LOCAL = "`scanbridge serve` (the local stack: pip install 'scanbridge[dev]')"

#: the routes the API Lambda cannot run (its layer is scanbridge[api]: no numpy, onnxruntime or mcp) and
#: where they do run; `entrypoints/lambda_api.py` answers them with 501 ROUTE_NOT_AVAILABLE saying so
LAMBDA_UNAVAILABLE: dict[str, str] = {
    "infer": f"POST /v1/infer runs a model inside the API process and needs scanbridge[worker] (numpy, "
             f"onnxruntime), which the API Lambda does not have. It runs in {_LOCAL}; on AWS send the image "
             "as a task (POST /webhook): the Batch worker image runs the same analysis.",
    "evaluate": f"POST /v1/evaluate needs numpy and scipy (scanbridge[worker]), which the API Lambda does not "
                f"have. It runs in {_LOCAL}, and `scanbridge evaluate PRED GT` runs it anywhere "
                "scanbridge[worker] is installed (the worker image included).",
    "mcp": "POST /mcp needs the mcp package (scanbridge[local]), which the API Lambda does not have. Run "
           "`scanbridge mcp --url <this API's URL>` (a stdio MCP server over this API's REST routes) or "
           f"{_LOCAL}.",
    "model_upload": "PUT /admin/models/{name} checks the ONNX file with onnxruntime (scanbridge[worker]) "
                    f"before storing it, which the API Lambda cannot. Register models through {_LOCAL} or any "
                    "process with scanbridge[worker] whose SCANBRIDGE_MODELS_TABLE_NAME / SCANBRIDGE_BUCKET_NAME "
                    "are the deployment's; PATCH and DELETE work here.",
}

#: the packages each of those routes imports when it runs (what `unavailable_here` looks for)
ROUTE_NEEDS: dict[str, tuple[str, ...]] = {
    "infer": ("numpy", "onnxruntime", "PIL"),
    "evaluate": ("numpy", "scipy"),
    "mcp": ("mcp",),
    "model_upload": ("numpy", "onnxruntime"),
}


def unavailable_here() -> dict[str, str]:
    """The routes whose packages this process cannot import, each with where it does run."""
    missing: dict[str, str] = {}
    for route, packages in ROUTE_NEEDS.items():
        if any(importlib.util.find_spec(name) is None for name in packages):
            missing[route] = LAMBDA_UNAVAILABLE[route]
    return missing


def endpoints(unavailable: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """ENDPOINTS, each marked `available` here, with `runs_on` for those that are not."""
    unavailable = unavailable or {}
    out: dict[str, dict[str, Any]] = {}
    for key, entry in ENDPOINTS.items():
        out[key] = {**entry, "available": key not in unavailable}
        if key in unavailable:
            out[key]["runs_on"] = unavailable[key]
    return out


def capabilities(settings: Settings, catalog: ModelCatalog, version: str,
                 unavailable: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything a client needs to know before submitting: models, formats, syntaxes, limits, routes.

    `unavailable`: routes this deployment answers with 501 (route id -> where they run); listed in
    `endpoints` (`available: false`, `runs_on`) and in `unavailable_routes`.
    """
    models = []
    for name in catalog.names():
        try:
            models.append(catalog.spec(name).model_dump(mode="json"))
        except Exception:  # noqa: BLE001,S112 - a model removed between names() and spec(): leave it out
            continue
    return {
        "version": version,
        "launcher": settings.launcher,
        "default_model": settings.default_model,
        "models": models,
        "formats": FORMATS,
        "dicom_transfer_syntaxes": [{"uid": uid, "name": name, "reader": reader}
                                    for uid, (name, reader) in DICOM_TRANSFER_SYNTAXES.items()],
        "limits": {
            "max_scan_bytes": settings.max_scan_bytes,
            "max_scans_per_task": settings.max_scans_per_task,
            "max_body_bytes": settings.max_body_bytes,
            "max_tiles_per_scan": settings.max_tiles_per_scan,
            "max_workers": settings.max_workers,
            "scan_parallelism": settings.scan_parallelism,
            "fetch_attempts": settings.fetch_attempts,
            "fetch_connect_timeout_s": settings.fetch_connect_timeout_s,
            "fetch_read_timeout_s": settings.fetch_read_timeout_s,
            "allowed_scan_hosts": settings.scan_host_patterns(),
        },
        "qc": {"enabled": settings.qc_enabled, "min_tissue_fraction": settings.qc_min_tissue_fraction,
               "blur_mpp": settings.qc_blur_mpp, "min_sharpness": settings.qc_min_sharpness,
               "min_laplacian_var": settings.qc_min_laplacian_var},
        "endpoints": endpoints(unavailable),
        "unavailable_routes": dict(unavailable or {}),
    }
