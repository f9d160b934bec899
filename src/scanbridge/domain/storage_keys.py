"""Every ArtifactStore key (S3 object key; a dict key in memory) is built here and nowhere else.

The strings are a stored contract: keys written by one release are read by the next, and tests/deploy
replays events against stored keys, so a key never changes spelling.

```
tasks/{task_id}/posted.json                                    the results body as posted (delivery)
tasks/{task_id}/scans/{scan_id}/result.json                    one scan's result (processing)
tasks/{task_id}/scans/{scan_id}/metadata.json                  its reader metadata (+ dicom_source)
tasks/{task_id}/scans/{scan_id}/checkpoints/{fp}/part-NNNNN.npz  resumable analysis parts
tasks/{task_id}/scans/{scan_id}/artifacts/{file}               overlay, label mask, CSV, crops, DICOM
models/{name}/{version}.onnx                                   a registered model's ONNX file
```
"""

from __future__ import annotations

#: the per-scan artifact files the worker writes, and the kind each is listed as
OVERLAY_PNG = "overlay.png"
LABELS_NPY = "labels.npy"
OBJECTS_CSV = "objects.csv"
CROPS_ZIP = "crops.zip"
ANNOTATIONS_DCM = "annotations.dcm"
SEGMENTATION_DCM = "segmentation.dcm"
SOURCE_DCM = "source.dcm"
ARTIFACT_KINDS = {OVERLAY_PNG: "overlay", LABELS_NPY: "label-mask", OBJECTS_CSV: "objects-csv",
                  CROPS_ZIP: "cell-crops", ANNOTATIONS_DCM: "dicom-ann", SEGMENTATION_DCM: "dicom-seg",
                  SOURCE_DCM: "dicom-source"}
_ARTIFACTS = "/artifacts/"


def posted_key(task_id: str) -> str:
    """The results body as it was posted (or would have been) for a task."""
    return f"tasks/{task_id}/posted.json"


def scans_prefix(task_id: str) -> str:
    """The prefix of every per-scan key of a task."""
    return f"tasks/{task_id}/scans/"


def scan_result_key(task_id: str, scan_id: str) -> str:
    """Where a scan's result body is stored."""
    return f"{scans_prefix(task_id)}{scan_id}/result.json"


def scan_metadata_key(task_id: str, scan_id: str) -> str:
    """Where a scan's reader metadata (dimensions, levels, mpp, DICOM source header) is stored."""
    return f"{scans_prefix(task_id)}{scan_id}/metadata.json"


def checkpoint_prefix(task_id: str, scan_id: str) -> str:
    """The prefix of a scan's checkpoints (one folder per analysis fingerprint)."""
    return f"{scans_prefix(task_id)}{scan_id}/checkpoints/"


def checkpoint_part_key(prefix: str, fingerprint: str, index: int) -> str:
    """Part `index` of the checkpoints of `fingerprint` under a scan's `checkpoint_prefix`."""
    return f"{prefix}{fingerprint}/part-{index:05d}.npz"


def artifact_key(task_id: str, scan_id: str, name: str) -> str:
    """Where one scan artifact file lives."""
    return f"{scans_prefix(task_id)}{scan_id}{_ARTIFACTS}{name}"


def artifact_of(task_id: str, key: str) -> tuple[str, str] | None:
    """(scan_id, file) of an artifact key of the task; None for any other key."""
    prefix = scans_prefix(task_id)
    if not key.startswith(prefix):
        return None
    scan_id, sep, file = key[len(prefix):].rpartition(_ARTIFACTS)
    if not sep or not scan_id or not file or "/" in file:
        return None
    return scan_id, file


def model_prefix(name: str) -> str:
    """The prefix of every stored ONNX file of a model."""
    return f"models/{name}/"


def onnx_key(name: str, version: str) -> str:
    """Where the ONNX file of `name` at `version` lives."""
    return f"{model_prefix(name)}{version}.onnx"
