"""The worker's analyzer: open a scan, run a (cached) model over it, close it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from scanbridge.domain.errors import ModelNotFoundError
from scanbridge.domain.models import ModelSpec
from scanbridge.domain.results import ScanResult
from scanbridge.imaging.readers import open_scan
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.pipeline import ProgressFn
from scanbridge.inference.session import OnnxModel
from scanbridge.inference.zoo import BUILTINS


class ModelSource(Protocol):
    """Where registered (non built-in) models come from: services.models.ModelService fits."""

    def spec(self, name: str) -> ModelSpec:
        """The spec of `name`; raises ModelNotFoundError."""

    def onnx_bytes(self, name: str, version: str) -> bytes:
        """The ONNX file of `name` at `version`; raises ModelNotFoundError."""


class ModelLoader:
    """Loads models by name once per process (built-ins are built from their graphs in memory).

    With a `source`, names that are not built-in are fetched from it (spec + ONNX bytes); a model is
    cached per (name, version), so a new version registered while the worker lives is picked up.
    """

    def __init__(self, *, intra_op_threads: int = 0, prefer_gpu: bool = True,
                 source: ModelSource | None = None) -> None:
        self._models: dict[tuple[str, str], OnnxModel] = {}
        self._lock = threading.Lock()
        self._threads = intra_op_threads
        self._prefer_gpu = prefer_gpu
        self._source = source

    def check(self, name: str) -> None:
        """Raise ModelNotFoundError unless `name` can be loaded."""
        if name in BUILTINS:
            return
        if self._source is None:
            raise ModelNotFoundError(f"model {name!r} not found", details={"available": sorted(BUILTINS)})
        self._source.spec(name)

    def load(self, name: str) -> OnnxModel:
        """The ready-to-run model."""
        self.check(name)
        if name in BUILTINS:
            spec, build = BUILTINS[name]
            return self._cached(spec, build)
        assert self._source is not None  # check() raised otherwise
        source = self._source
        spec = source.spec(name)
        return self._cached(spec, lambda: source.onnx_bytes(name, spec.version))

    def _cached(self, spec: ModelSpec, data: Any) -> OnnxModel:
        key = (spec.name, spec.version)
        with self._lock:
            if key not in self._models:
                self._models[key] = OnnxModel(spec, data(), intra_op_threads=self._threads,
                                              prefer_gpu=self._prefer_gpu)
            return self._models[key]


class Analyzer:
    """A ScanAnalyzer: scan files + model name -> ScanResult and reader metadata."""

    def __init__(self, loader: ModelLoader, *, tile_size: int | None = None, batch_size: int = 8,
                 readers: int = 2, max_tiles: int | None = None, min_tissue: float | None = None) -> None:
        self.loader = loader
        self._min_tissue = min_tissue
        self._max_tiles = max_tiles
        self._tile_size = tile_size
        self._batch = batch_size
        self._readers = readers

    def __call__(self, scan_id: str, paths: list[Path], model_name: str,
                 progress: ProgressFn) -> tuple[ScanResult, dict[str, Any]]:
        """Open the scan, analyse it, close it."""
        model = self.loader.load(model_name)
        reader = open_scan(paths)
        try:
            analysis = analyze_scan(scan_id, reader, model, tile_size=self._tile_size, batch_size=self._batch,
                                    readers=self._readers, progress=progress, max_tiles=self._max_tiles,
                                    min_tissue=self._min_tissue)
        finally:
            reader.close()
        return analysis.result, analysis.metadata
