"""An ONNX model ready to run: onnxruntime session with the best provider, fed as its spec says.

One code path for every device: with the CUDA execution provider the batch is bound to the GPU with
I/O binding (one host-to-device copy per batch, outputs copied back once); on CPU the session runs
with tuned intra-op threads that do not spin, so they leave the cores to the tile readers between
batches. The I/O-binding path also works on CPU (device "cpu"), which is how it is tested without a GPU.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import onnxruntime as ort

from scanbridge.domain.errors import InferenceError
from scanbridge.domain.models import ModelSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_BATCH_BYTES = 96 * 2**20  # uint8 input per batch on a GPU: large enough to keep it busy
CPU_BATCH_TILES = 8


def pick_providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA when onnxruntime has it, then CPU."""
    available = ort.get_available_providers()
    providers = [CPU]
    if prefer_gpu and CUDA in available:
        providers.insert(0, CUDA)
    return providers


def default_intra_op_threads() -> int:
    """Intra-op threads for the CPU provider: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxModel:
    """A ModelSpec plus an InferenceSession; `run` takes uint8 NHWC RGB batches of any size."""

    def __init__(self, spec: ModelSpec, model_bytes: bytes, *, intra_op_threads: int = 0,
                 prefer_gpu: bool = True, io_binding: bool | None = None, device_id: int = 0) -> None:
        self.spec = spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning intra-op threads would burn the cores the tile readers need while a batch is assembled.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=options,
                                                providers=pick_providers(prefer_gpu))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"model {spec.name!r} could not be loaded: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self.device_id = device_id if self.device == "cuda" else 0
        self.io_binding = (self.device == "cuda") if io_binding is None else io_binding
        self.intra_op_threads = options.intra_op_num_threads
        self.output_names = [o.name for o in self.session.get_outputs()]

    def batch_size_for(self, tile_size: int) -> int:
        """Tiles per batch for this device: fill ~GPU_BATCH_BYTES on a GPU, a few tiles on CPU."""
        if self.device == "cuda":
            return int(max(8, min(256, GPU_BATCH_BYTES // (tile_size * tile_size * 3))))
        return CPU_BATCH_TILES

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """NHWC uint8 RGB -> the model's layout, channel order, dtype and normalisation.

        Normalisation is `(pixel * scale - mean) / std` per channel in the model's channel order (after
        the BGR swap), computed in float32 and only then cast to the input dtype (float16 too).
        """
        spec = self.spec
        x = batch[..., ::-1] if spec.channel_order == "BGR" else batch
        if spec.input_dtype != "uint8":
            x = x.astype(np.float32)
            norm = spec.normalisation
            if norm:
                mean = np.asarray(norm.mean, np.float32)
                std = np.asarray(norm.std, np.float32)
                x = (x * np.float32(norm.scale) - mean) / std  # channels last here: broadcasts per channel
            if spec.input_dtype == "float16":
                x = x.astype(np.float16)
        if spec.input_layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    @functools.cached_property
    def static_batch(self) -> int | None:
        """The input's fixed batch size (a `torch.onnx.export` default is 1), or None when it is dynamic."""
        for inp in self.session.get_inputs():
            if inp.name == self.spec.input_name:
                dim = inp.shape[0] if inp.shape else None
                return dim if isinstance(dim, int) and dim > 0 else None
        return None

    def activate(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The spec's `output_activation` on the primary output (softmax over axis 1, the class axis, or
        sigmoid), in float32; the other outputs are left as the model gave them."""
        act = self.spec.output_activation
        if act == "none" or not outputs:
            return outputs
        name = self.spec.output_name if self.spec.output_name in outputs else next(iter(outputs))
        y = np.asarray(outputs[name], dtype=np.float32)
        if act == "sigmoid":
            y = (1.0 / (1.0 + np.exp(-y))).astype(np.float32)
        elif y.ndim >= 2:  # softmax over the class axis
            e = np.exp(y - y.max(axis=1, keepdims=True))
            y = e / e.sum(axis=1, keepdims=True)
        return {**outputs, name: y.astype(np.float32, copy=False)}

    def primary_output(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The output the spec names (`output_name`), else the graph's first output."""
        return outputs[self.spec.output_name] if self.spec.output_name in outputs else next(iter(outputs.values()))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model for one batch, by name (the spec's output activation applied).

        A static-batch export gets the batch in chunks of its fixed size, the last one padded with
        zero tiles, and the outputs joined back and trimmed to the batch; a dynamic batch runs whole.
        """
        fixed = self.static_batch
        n = len(batch)
        if fixed is None or n == fixed:
            return self.activate(self._run_once(batch))
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, n, fixed):
            chunk = batch[start:start + fixed]
            if len(chunk) < fixed:
                pad = np.zeros((fixed - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self._run_once(chunk))
        joined = {name: np.concatenate([p[name] for p in parts])[:n] for name in self.output_names}
        return self.activate(joined)

    def _run_once(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One session run of a batch the model takes as it is."""
        x = self.prepare(batch)
        try:
            if self.io_binding:
                outs = self._run_bound(x)
            else:
                outs = self.session.run(None, {self.spec.input_name: x})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"model {self.spec.name!r} failed: {exc}") from exc
        return dict(zip(self.output_names, outs, strict=True))

    def _run_bound(self, x: np.ndarray) -> list[np.ndarray]:
        """One batch through I/O binding: input copied to the device once, outputs allocated there."""
        binding = self.session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(x, self.device, self.device_id)
        binding.bind_ortvalue_input(self.spec.input_name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return [np.asarray(o) for o in binding.copy_outputs_to_cpu()]
