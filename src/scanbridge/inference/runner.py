"""The worker's analyzer: run a (cached) model over the scan the worker opened once."""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanbridge.domain.errors import ModelNotFoundError
from scanbridge.domain.models import ModelSpec
from scanbridge.domain.results import ScanResult
from scanbridge.inference import device as dev
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.pipeline import ProgressFn
from scanbridge.inference.resume import CheckpointStore
from scanbridge.inference.session import OnnxModel
from scanbridge.inference.zoo import BUILTINS, builtin_model_bytes
from scanbridge.ports import ModelSource

if TYPE_CHECKING:
    from scanbridge.imaging.scan import OpenedScan


class ModelLoader:
    """Loads models by name once per process (built-ins are built from their graphs in memory).

    With a `source`, names that are not built-in are fetched from it (spec + ONNX bytes); a model is
    cached per (name, version), so a new version registered while the worker lives is picked up.
    `device` is SCANBRIDGE_DEVICE (auto / cuda / cpu; default auto, or cpu when not `prefer_gpu`);
    `check_device()` resolves it once, before any download, and raises DeviceUnavailableError.
    """

    def __init__(self, *, intra_op_threads: int = 0, prefer_gpu: bool = True,
                 source: ModelSource | None = None, device: str | None = None, tensorrt: bool = False,
                 cache_dir: Path | None = None) -> None:
        self._models: dict[tuple[str, str], OnnxModel] = {}
        self._lock = threading.Lock()
        self._threads = intra_op_threads
        self._prefer_gpu = prefer_gpu
        self._source = source
        self.requested_device = device or ("auto" if prefer_gpu else "cpu")
        self._tensorrt = tensorrt
        self._cache_dir = cache_dir

    @cached_property
    def device(self) -> str:
        """`cuda` or `cpu`, resolved once (a CUDA probe); raises DeviceUnavailableError for an unusable cuda."""
        return dev.resolve_device(self.requested_device)

    def check_device(self) -> str:
        """The device models will run on; raises DeviceUnavailableError (before any work) when
        SCANBRIDGE_DEVICE=cuda and CUDA does not really work here."""
        return self.device

    def check(self, name: str) -> None:
        """Raise ModelNotFoundError unless `name` can be loaded."""
        if name in BUILTINS:
            return
        if self._source is None:
            raise ModelNotFoundError(f"model {name!r} not found", details={"available": sorted(BUILTINS)})
        self._source.spec(name)

    def load(self, name: str) -> OnnxModel:
        """The ready-to-run model (on the checked device)."""
        self.check_device()
        self.check(name)
        if name in BUILTINS:
            return self._cached(BUILTINS[name][0], lambda: builtin_model_bytes(name))
        assert self._source is not None  # check() raised otherwise
        source = self._source
        spec = source.spec(name)
        return self._cached(spec, lambda: source.onnx_bytes(name, spec.version))

    def _cached(self, spec: ModelSpec, data: Any) -> OnnxModel:
        key = (spec.name, spec.version)
        with self._lock:
            if key not in self._models:
                # the device resolved once for the loader (one probe, one log line), not again per model
                self._models[key] = OnnxModel(spec, data(), intra_op_threads=self._threads,
                                              device=self.device, tensorrt=self._tensorrt,
                                              cache_dir=self._cache_dir)
            return self._models[key]


class Analyzer:
    """A ScanAnalyzer: an open scan + model name -> ScanResult and reader metadata."""

    def __init__(self, loader: ModelLoader, *, tile_size: int | None = None, batch_size: int | None = None,
                 readers: int | None = None, max_tiles: int | None = None,
                 min_tissue: float | None = None) -> None:
        """`batch_size` None: sized to the model's input and the device (OnnxModel.batch_size_for);
        `readers` None: the cores this process may use, less one (device.default_reader_threads)."""
        self.loader = loader
        self._min_tissue = min_tissue
        self._max_tiles = max_tiles
        self._tile_size = tile_size
        self._batch = batch_size
        self.readers = readers or dev.default_reader_threads()

    def __call__(self, scan_id: str, scan: OpenedScan, model_name: str,
                 progress: ProgressFn, *, checkpoint: CheckpointStore | None = None) -> tuple[ScanResult, dict[str, Any]]:
        """Analyse the open scan (its shared tissue mask; resuming from `checkpoint`)."""
        model = self.loader.load(model_name)
        analysis = analyze_scan(scan_id, scan, model, tile_size=self._tile_size, batch_size=self._batch,
                                readers=self.readers, progress=progress, max_tiles=self._max_tiles,
                                min_tissue=self._min_tissue, checkpoint=checkpoint)
        return analysis.result, analysis.metadata
