"""Resumable scans: a worker killed mid-scan resumes from its checkpoint, reads only the rest, same result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanbridge.adapters.local.memory import MemoryArtifactStore
from scanbridge.bootstrap import Container, build_processing
from scanbridge.devtools import synth
from scanbridge.devtools.byom_models import build_pattern, write_class_slide
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.models import ModelSpec
from scanbridge.domain.results import ScanResult
from scanbridge.domain.status import ScanStatus
from scanbridge.domain.storage_keys import checkpoint_prefix, scan_result_key
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.scan import OpenedScan
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.resume import CheckpointStore
from scanbridge.inference.runner import ModelLoader
from scanbridge.inference.session import OnnxModel
from scanbridge.services.checkpoints import ArtifactCheckpoints

LOADER = ModelLoader(prefer_gpu=False)


class Killed(BaseException):  # stands for the process being killed (not an error the code handles)
    """The fault injected: the worker process dies (SIGKILL, a host termination) after some batches."""


class CountingReader:
    """A ScanReader that counts region reads, full-size or DCT-scaled (everything else is the real reader's)."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.reads = 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        self.reads += 1
        return self._reader.read_region(location, level, size)

    def read_region_scaled(self, location: tuple[int, int], level: int, size: tuple[int, int],
                           scale: int) -> np.ndarray | None:
        """The real reader's scaled read, counted when it serves one (None: read_region follows, counted)."""
        region = self._reader.read_region_scaled(location, level, size, scale)
        self.reads += region is not None
        return region

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def _killer(after_batches: int | None) -> Callable[[int, int], None]:
    calls = [0]

    def progress(_done: int, _total: int) -> None:
        calls[0] += 1
        if after_batches is not None and calls[0] >= after_batches:
            raise Killed()

    return progress


def _comparable(result: ScanResult) -> Any:
    """The result without per-feature random ids (uuid4 per GeoJSON feature)."""
    data = result.model_dump(mode="json", exclude_none=True)

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "id"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(data)


def _analyse(path: Path, model: str | OnnxModel, checkpoint: CheckpointStore | None, kill_after: int | None,
             **kw: Any) -> tuple[ScanResult | None, int, int]:
    """(result or None when killed, read_region calls, tiles run) of one attempt at the scan."""
    reader = CountingReader(open_scan([path]))
    onnx = LOADER.load(model) if isinstance(model, str) else model
    try:
        analysis = analyze_scan("s1", reader, onnx, progress=_killer(kill_after),
                                checkpoint=checkpoint, readers=2, **kw)
    except Killed:
        return None, reader.reads, -1
    finally:
        reader.close()
    return analysis.result, reader.reads, analysis.stats.tiles_processed


@pytest.mark.parametrize(("model", "kw"), [("tissue", {"tile_size": 64, "batch_size": 2}),
                                       ("nuclei", {"tile_size": 256, "batch_size": 2})])
def test_a_killed_scan_resumes_from_its_checkpoint_with_the_same_result(
        tmp_path: Path, model: str, kw: dict[str, Any]) -> None:
    # GIVEN a synthetic slide and its uninterrupted result (a map kind and an object kind)
    path = tmp_path / "s.svs"
    synth.make_slide(path, 1536, 1024, tissue_fraction=0.4, seed=4, mpp=0.5)
    full, full_reads, full_tiles = _analyse(path, model, None, None, **kw)
    assert full is not None and full_tiles >= 8, full_tiles
    assert full.geojson and full.geojson["features"]  # something found, so the comparison means something
    # WHEN a first attempt checkpointing after every batch is killed after 3 batches
    store = ArtifactCheckpoints(MemoryArtifactStore(), "tasks/t/scans/s1/checkpoints/", interval_s=0.0)
    killed, _reads, _ = _analyse(path, model, store, 3, **kw)
    assert killed is None
    # AND a second attempt runs with the same checkpoint
    resumed, resumed_reads, resumed_tiles = _analyse(path, model, store, None, **kw)
    # THEN it read and ran only the tiles the first did not finish (3 batches of 2 were checkpointed)
    assert resumed is not None
    assert resumed_tiles == full_tiles - 6
    assert full_reads - resumed_reads == 6
    # AND its result is the uninterrupted one
    assert _comparable(resumed) == _comparable(full)


@pytest.mark.parametrize("pattern", ["segmenter", "tile-classifier"])
def test_region_kinds_resume_their_class_maps(tmp_path: Path, pattern: str) -> None:
    # GIVEN a slide of known class regions and a bring-your-own region model (semantic-segmentation with
    # an output downsample, or one class per tile), and its uninterrupted result
    path = tmp_path / "classes.svs"
    write_class_slide(path, 2048, 1536, mpp=1.0)
    data, spec = build_pattern(pattern)
    model = OnnxModel(ModelSpec.model_validate(spec), data, prefer_gpu=False)
    full, full_reads, full_tiles = _analyse(path, model, None, None, batch_size=2)
    assert full is not None and full_tiles >= 8 and full.geojson and full.geojson["features"]
    # WHEN a first attempt is killed after 2 batches and a second one resumes
    store = ArtifactCheckpoints(MemoryArtifactStore(), "tasks/t/scans/s1/checkpoints/", interval_s=0.0)
    assert _analyse(path, model, store, 2, batch_size=2)[0] is None
    resumed, resumed_reads, resumed_tiles = _analyse(path, model, store, None, batch_size=2)
    # THEN 4 tiles fewer were read and run, and the class regions are the uninterrupted ones
    assert resumed is not None and resumed_tiles == full_tiles - 4 and full_reads - resumed_reads == 4
    assert _comparable(resumed) == _comparable(full)


def test_a_changed_grid_never_resumes_from_another_grids_checkpoint(tmp_path: Path) -> None:
    # GIVEN a checkpoint written with 64 px tiles by a killed attempt
    path = tmp_path / "s.svs"
    synth.make_slide(path, 1024, 768, tissue_fraction=0.4, seed=7, mpp=0.5)
    store = ArtifactCheckpoints(MemoryArtifactStore(), "tasks/t/scans/s1/checkpoints/", interval_s=0.0)
    assert _analyse(path, "tissue", store, 2, tile_size=64, batch_size=2)[0] is None
    # WHEN the scan runs again with 128 px tiles
    full, _, full_tiles = _analyse(path, "tissue", None, None, tile_size=128, batch_size=2)
    again, _, tiles = _analyse(path, "tissue", store, None, tile_size=128, batch_size=2)
    # THEN every tile runs and the result is the fresh one
    assert again is not None and full is not None and tiles == full_tiles
    assert _comparable(again) == _comparable(full)


class _KillableAnalyzer:
    """The worker's analyzer on the open scan, read through a counting reader, with a kill switch: the fault."""

    def __init__(self, kill_after: int | None) -> None:
        self.kill_after = kill_after
        self.reads = 0

    def __call__(self, scan_id: str, scan: OpenedScan, model_name: str, progress: Callable[[int, int], None], *,
                 checkpoint: CheckpointStore | None = None) -> tuple[ScanResult, dict[str, Any]]:
        reader = CountingReader(scan.reader)  # the worker's open scan, read through the counter
        kill = _killer(self.kill_after)

        def both(done: int, total: int) -> None:
            progress(done, total)
            kill(done, total)

        try:
            analysis = analyze_scan(scan_id, reader, LOADER.load(model_name), tile_size=64, batch_size=2,
                                    progress=both, checkpoint=checkpoint)
        finally:
            self.reads = reader.reads
        return analysis.result, analysis.metadata


def test_a_retried_worker_resumes_the_scan_it_was_killed_in(container: Container, tmp_path: Path) -> None:
    # GIVEN a task whose scan a loopback platform serves, checkpoints every batch (the artifact store)
    path = tmp_path / "s.svs"
    synth.make_slide(path, 1536, 1024, tissue_fraction=0.4, seed=4, mpp=0.5)
    container.settings.checkpoint_interval_s = 1e-6
    container.settings.qc_enabled = False
    with FakePlatform(files={"s": path}) as fake:
        container.settings.allowed_scan_hosts = fake.netloc
        for tid in ("t-killed", "t-whole"):
            container.intake.accept(WebhookPayload.model_validate(
                {"task_id": tid, "jwt_token": "a.b.c", "model_name": "tissue", "scans": {"s1": fake.url_for("s")}}))
        whole = _KillableAnalyzer(None)
        build_processing(container, analyzer=whole, qc=None).run("t-whole")
        # WHEN the worker is killed after 4 batches, then retried (a new worker process: a new service)
        with pytest.raises(Killed):
            build_processing(container, analyzer=_KillableAnalyzer(4), qc=None).run("t-killed")
        mid = container.tasks.get("t-killed")
        assert mid is not None and mid.scans["s1"].status == ScanStatus.RUNNING
        retried = _KillableAnalyzer(None)
        task = build_processing(container, analyzer=retried, qc=None).run("t-killed")
    # THEN the retry read 8 tiles fewer (4 batches of 2 were checkpointed) and the scan succeeded
    assert task.scans["s1"].status == ScanStatus.SUCCEEDED
    assert whole.reads - retried.reads == 8
    # AND its stored result is the uninterrupted task's (the checkpoint parts sit under the scan's prefix)
    stored = {tid: ScanResult.model_validate(json.loads(container.artifacts.get(scan_result_key(tid, "s1")) or b""))
              for tid in ("t-killed", "t-whole")}
    assert _comparable(stored["t-killed"]) == _comparable(stored["t-whole"])
    parts = container.artifacts.list(checkpoint_prefix("t-killed", "s1"))
    assert len(parts) >= 4 and all(k.endswith(".npz") for k in parts)
