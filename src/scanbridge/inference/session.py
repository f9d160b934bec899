"""An ONNX model ready to run: onnxruntime session with the best provider, fed as its spec says."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnxruntime as ort

from scanbridge.domain.errors import InferenceError
from scanbridge.domain.models import ModelSpec

log = logging.getLogger(__name__)


def pick_providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA when onnxruntime has it, then CPU."""
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if prefer_gpu and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    return providers


class OnnxModel:
    """A ModelSpec plus an InferenceSession; `run` takes uint8 NHWC RGB batches."""

    def __init__(self, spec: ModelSpec, model_bytes: bytes, *, intra_op_threads: int = 0,
                 prefer_gpu: bool = True) -> None:
        self.spec = spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=options,
                                                providers=pick_providers(prefer_gpu))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"model {spec.name!r} could not be loaded: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """NHWC uint8 RGB -> the model's layout, channel order, dtype and normalisation."""
        x = batch[..., ::-1] if self.spec.channel_order == "BGR" else batch
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.spec.input_dtype == "float32":
            x = x.astype(np.float32)
            norm = self.spec.normalisation
            if norm:
                mean = np.asarray(norm.get("mean", [0.0, 0.0, 0.0]), np.float32).reshape(1, 3, 1, 1)
                std = np.asarray(norm.get("std", [1.0, 1.0, 1.0]), np.float32).reshape(1, 3, 1, 1)
                x = (x - mean) / std
        return x

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model for one batch, by name."""
        try:
            outs = self.session.run(None, {self.spec.input_name: self.prepare(batch)})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"model {self.spec.name!r} failed: {exc}") from exc
        return dict(zip(self.output_names, outs, strict=True))
