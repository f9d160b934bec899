"""Object results streamed as JSON text (FeatureSpool) give the same body as the features built in memory."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from scanbridge.devtools import synth
from scanbridge.domain.feature_spool import FeatureSpool, StreamedScanResult, result_json_bytes
from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.scan import OpenedScan
from scanbridge.inference.objects import objects_result, run_objects
from scanbridge.inference.runner import ModelLoader


def _without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """The body with each feature's random UUID taken out (checked to be a UUID)."""
    out = json.loads(json.dumps(body))
    for feature in (out.get("geojson") or {}).get("features", []):
        uuid.UUID(feature.pop("id"))
    return out


@pytest.fixture(scope="module")
def ki67(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "ki67.svs"
    synth.make_slide(path, 1024, 1024, mpp=0.5, tissue_fraction=0.4, seed=5, positive_fraction=0.3)
    return path


@pytest.mark.parametrize(("model_name", "kinds", "least"), [("nuclei", {"Polygon"}, 50),
                                                            ("ihc-positivity", {"MultiPoint"}, 2)])
def test_streamed_body_equals_the_in_memory_body(ki67: Path, model_name: str, kinds: set[str], least: int) -> None:
    # GIVEN one run of a built-in object model (nuclei: a polygon per nucleus; ihc: positive/negative points)
    model = ModelLoader(prefer_gpu=False).load(model_name)
    reader = open_scan([ki67])
    try:
        tissue = OpenedScan(reader, owned=False).tissue
        run = run_objects(reader, model, tissue.mask, tissue.downsample)
        meta = reader.metadata
    finally:
        reader.close()
    kw: dict[str, Any] = {"bounds": meta.dimensions, "mpp": meta.mpp, "tissue_mm2": 1.0}
    # WHEN its result is built both ways and the streamed one serialised as the worker stores it
    streamed = objects_result("s1", model, run, **kw)
    in_memory = objects_result("s1", model, run, stream=False, **kw)
    body = json.loads(result_json_bytes(streamed))
    old = json.loads(json.dumps(in_memory.model_dump(mode="json", exclude_none=True)))
    # THEN the features were never a list in the result, yet the JSON is the same (ids aside), in the same order
    assert isinstance(streamed, StreamedScanResult) and streamed.spool is not None
    assert streamed.__dict__["geojson"] is None
    assert len(streamed.spool) == len(old["geojson"]["features"]) >= least
    assert {f["geometry"]["type"] for f in old["geojson"]["features"]} == kinds
    assert _without_ids(body) == _without_ids(old)
    assert list(body) == list(old)  # scanId, results, geojson: the platform's order
    # AND reading .geojson or model_dump (the artifacts, the CLI) gives that same FeatureCollection
    assert streamed.geojson == body["geojson"]
    assert json.loads(json.dumps(streamed.model_dump(mode="json", exclude_none=True))) == body
    # AND a copy with a field changed (the worker adds external_url) keeps the features
    copy = streamed.model_copy(update={"results": {**(streamed.results or {}), "external_url": "x"}})
    assert json.loads(result_json_bytes(copy))["geojson"] == body["geojson"]


def test_a_spool_past_its_memory_cap_reads_back_the_same_text_from_threads() -> None:
    # GIVEN a spool with a 1-byte memory cap (it rolls over to a temporary file) and 500 features
    spool = FeatureSpool(max_memory=1)
    features = [{"type": "Feature", "id": str(i), "geometry": {"type": "Point", "coordinates": [i + 0.25, 2.5]},
                 "properties": {"name": "µ" * (i % 3)}} for i in range(500)]
    for f in features:
        spool.append(f)
    # WHEN four threads read it at once, and its array text is joined
    seen: list[list[dict[str, Any]]] = []
    threads = [threading.Thread(target=lambda: seen.append(list(spool))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = b"".join(spool.array_chunks())
    # THEN every reader saw every feature in order, and the text is json.dumps's, byte for byte
    assert spool._file._rolled  # type: ignore[attr-defined]  # on disk, not in memory
    assert seen == [features] * 4
    assert text == json.dumps(features).encode()
    spool.close()
