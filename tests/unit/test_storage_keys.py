"""Artifact-store keys: one module builds them, and their spelling is a stored contract."""

from __future__ import annotations

from scanbridge.domain import storage_keys as keys


def test_every_key_keeps_the_spelling_stored_objects_have() -> None:
    # GIVEN ids as the platform sends them (a base64 task id with '=', a numeric scan id)
    task, scan = "dGFzazoxODU4MzU=", "8823846"
    # WHEN each key is built / THEN it is exactly the key earlier releases wrote (S3 objects and replayed events)
    assert keys.posted_key(task) == "tasks/dGFzazoxODU4MzU=/posted.json"
    assert keys.scan_result_key(task, scan) == "tasks/dGFzazoxODU4MzU=/scans/8823846/result.json"
    assert keys.scan_metadata_key(task, scan) == "tasks/dGFzazoxODU4MzU=/scans/8823846/metadata.json"
    prefix = keys.checkpoint_prefix(task, scan)
    assert prefix == "tasks/dGFzazoxODU4MzU=/scans/8823846/checkpoints/"
    assert keys.checkpoint_part_key(prefix, "nuclei@1-ab12", 7) == prefix + "nuclei@1-ab12/part-00007.npz"
    assert keys.artifact_key(task, scan, keys.OVERLAY_PNG) == \
        "tasks/dGFzazoxODU4MzU=/scans/8823846/artifacts/overlay.png"
    assert keys.onnx_key("acme-tissue", "1") == "models/acme-tissue/1.onnx"
    assert keys.onnx_key("acme-tissue", "1").startswith(keys.model_prefix("acme-tissue"))


def test_artifact_keys_parse_back_and_other_keys_do_not() -> None:
    # GIVEN a task's artifact key, its result key, a nested file and another task's artifact
    key = keys.artifact_key("t1", "s/with/slashes", keys.LABELS_NPY)
    # WHEN parsed / THEN only the artifact gives (scan id, file) back
    assert keys.artifact_of("t1", key) == ("s/with/slashes", "labels.npy")
    assert keys.artifact_of("t1", keys.scan_result_key("t1", "s1")) is None
    assert keys.artifact_of("t1", keys.artifact_key("t1", "s1", "") + "sub/x.png") is None
    assert keys.artifact_of("t1", keys.artifact_key("t2", "s1", keys.OVERLAY_PNG)) is None
    # AND every artifact file the worker writes has a listing kind
    assert set(keys.ARTIFACT_KINDS) == {"overlay.png", "labels.npy", "objects.csv", "crops.zip",
                                        "annotations.dcm", "segmentation.dcm", "source.dcm"}
