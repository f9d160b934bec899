"""The worker's analyzer: open a scan, run a (cached) model over it, close it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from scanbridge.domain.errors import ModelNotFoundError
from scanbridge.domain.results import ScanResult
from scanbridge.imaging.readers import open_scan
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.pipeline import ProgressFn
from scanbridge.inference.session import OnnxModel
from scanbridge.inference.zoo import BUILTINS


class ModelLoader:
    """Loads models by name once per process (built-ins are built from their graphs in memory)."""

    def __init__(self, *, intra_op_threads: int = 0, prefer_gpu: bool = True) -> None:
        self._models: dict[str, OnnxModel] = {}
        self._lock = threading.Lock()
        self._threads = intra_op_threads
        self._prefer_gpu = prefer_gpu

    def check(self, name: str) -> None:
        """Raise ModelNotFoundError unless `name` can be loaded."""
        if name not in BUILTINS:
            raise ModelNotFoundError(f"model {name!r} not found", details={"available": sorted(BUILTINS)})

    def load(self, name: str) -> OnnxModel:
        """The ready-to-run model."""
        self.check(name)
        with self._lock:
            if name not in self._models:
                spec, build = BUILTINS[name]
                self._models[name] = OnnxModel(spec, build(), intra_op_threads=self._threads,
                                               prefer_gpu=self._prefer_gpu)
            return self._models[name]


class Analyzer:
    """A ScanAnalyzer: scan files + model name -> ScanResult and reader metadata."""

    def __init__(self, loader: ModelLoader, *, tile_size: int | None = None, batch_size: int = 8,
                 readers: int = 2) -> None:
        self.loader = loader
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
                                    readers=self._readers, progress=progress)
        finally:
            reader.close()
        return analysis.result, analysis.metadata
