"""An ONNX model ready to run: onnxruntime session with the best provider, fed as its spec says.

One code path for every device: with the CUDA execution provider the batch is bound to the GPU with
I/O binding (one host-to-device copy per batch, outputs copied back once); on CPU the session runs
with tuned intra-op threads that do not spin, so they leave the cores to the tile readers between
batches. The I/O-binding path also works on CPU (device "cpu"), which is how it is tested without a GPU.
Its buffers are kept per batch shape (and per thread) and reused: the input OrtValue is updated in place
(pinned host memory where onnxruntime exposes it for CUDA), the outputs stay bound to the device buffers
of the first run. The device is chosen as `inference/device.py` says (SCANBRIDGE_DEVICE, TensorRT); an
out-of-memory error halves the batch (for the rest of the process) and retries instead of failing.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from scanbridge.cpus import usable_cores
from scanbridge.domain.errors import DeviceUnavailableError, InferenceError
from scanbridge.domain.models import REGION_KINDS, ModelSpec
from scanbridge.inference import device as dev

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_BATCH_BYTES = dev.GPU_BATCH_BYTES  # uint8 input per batch on a GPU whose free memory cannot be read
MAX_BOUND_SHAPES = 4  # I/O-binding buffer sets kept per thread (a scan has one batch shape, plus its last batch)
CPU_BATCH_TILES = 8
#: onnxruntime's CPU layout transformer (NCHWc) blocks channels by 8 (AVX2) or 16 (AVX-512): convolutions
#: with fewer channels than a block (the filters of an image-processing graph: a Gaussian on one stain) run
#: mostly on padding, plus a reorder to and from the blocked layout around each
NCHWC_BLOCK = 8
#: a model this large is a network's weights, not a filter graph: it is not parsed to look (see channel_poor)
CHANNEL_POOR_MAX_BYTES = 16 * 2**20


def pick_providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA when onnxruntime has it, then CPU."""
    available = ort.get_available_providers()
    providers = [CPU]
    if prefer_gpu and CUDA in available:
        providers.insert(0, CUDA)
    return providers


def default_intra_op_threads() -> int:
    """Intra-op threads for the CPU provider: every core this process may use."""
    return usable_cores()


def channel_poor(model_bytes: bytes) -> bool:
    """Whether the graph has convolutions and each has fewer than NCHWC_BLOCK output channels and input
    channels per group (its weight's shape as stored or as onnx's shape inference gives it): a filter graph,
    for which onnxruntime's NCHWc layout transformer costs more than it gives (the built-in nucleus models
    ran 2x faster without it; a ResNet's 64-channel convolutions 2x slower). A model over
    CHANNEL_POOR_MAX_BYTES, one that does not parse, or a weight of unknown shape: not."""
    if len(model_bytes) > CHANNEL_POOR_MAX_BYTES:
        return False
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load_model_from_string(model_bytes))
    except Exception:  # noqa: BLE001 - onnxruntime reports a model it cannot load in its own words
        return False
    graph = model.graph
    convs = [node for node in graph.node if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1]
    if not convs:
        return False
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for info in (*graph.value_info, *graph.input):
        if info.name not in shapes:
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    for node in convs:
        dims = shapes.get(node.input[1], ())
        if len(dims) < 2 or min(dims[0], dims[1]) < 1 or max(dims[0], dims[1]) >= NCHWC_BLOCK:
            return False
    return True


def class_axis(spec: ModelSpec, shape: tuple[int, ...]) -> int:
    """The class axis of a batch of outputs: 1 (N, K, ...), or for a region model's channels-last map
    (N, h, w, K) the last, when that is unambiguous (axis 1 is not K, the last axis is)."""
    k = len(spec.labels)
    if spec.kind in REGION_KINDS and len(shape) == 4 and k > 1 and shape[1] != k and shape[3] == k:
        return 3
    return 1


class OnnxModel:
    """A ModelSpec plus an InferenceSession; `run` takes uint8 NHWC RGB batches of any size."""

    def __init__(self, spec: ModelSpec, model_bytes: bytes, *, intra_op_threads: int = 0,
                 prefer_gpu: bool = True, io_binding: bool | None = None, device_id: int = 0,
                 device: str | None = None, tensorrt: bool = False, cache_dir: Path | None = None) -> None:
        """`device`: auto / cuda / cpu (default: auto, or cpu when not `prefer_gpu`); `cuda` that does not
        work raises DeviceUnavailableError. `tensorrt`: TensorRT (FP16, engines cached in `cache_dir`) first."""
        self.spec = spec
        requested = device or ("auto" if prefer_gpu else "cpu")
        resolved = dev.resolve_device(requested, device_id)
        providers = dev.providers_for(resolved, device_id=device_id, tensorrt=tensorrt, cache_dir=cache_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's own warnings go to stderr, raw (ANSI colours, not our log format): the one every start
        # printed is that the built-ins' STAIN_INPUT is an overridable initializer, which is on purpose; a
        # device fallback is caught and logged below in words
        options.log_severity_level = 3  # errors only
        # Spinning intra-op threads would burn the cores the tile readers need while a batch is assembled.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        #: onnxruntime optimizers left out for this model (channel_poor: NCHWc, on the CPU only)
        self.disabled_optimizers = ["NchwcTransformer"] if resolved == "cpu" and channel_poor(model_bytes) else []
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers,
                                                disabled_optimizers=self.disabled_optimizers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"model {spec.name!r} could not be loaded: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        self.providers = providers  # what the session was asked for, with options (the bench's bare session)
        if resolved == "cuda" and self.provider not in dev.GPU_PROVIDERS:  # onnxruntime fell back silently
            if requested == "cuda":
                raise DeviceUnavailableError(f"model {spec.name!r}: onnxruntime put the session on the CPU "
                                             "although SCANBRIDGE_DEVICE=cuda (the CUDA provider did not initialise)",
                                             details={"device": "cuda", "providers": self.session.get_providers()})
            log.warning("model %s runs on the CPU: the CUDA provider did not take the session", spec.name)
        self.device = "cuda" if self.provider in dev.GPU_PROVIDERS else "cpu"
        #: the largest batch the device took after an out-of-memory error (None: no limit met yet)
        self.max_batch: int | None = None
        self._local = threading.local()
        self.device_id = device_id if self.device == "cuda" else 0
        self.io_binding = (self.device == "cuda") if io_binding is None else io_binding
        self.intra_op_threads = options.intra_op_num_threads
        self.output_names = [o.name for o in self.session.get_outputs()]

    def batch_size_for(self, tile_size: int, free_bytes: int | None = None) -> int:
        """Tiles per batch for this device: on a GPU what its free memory holds for this tile size
        (`free_bytes`, default: read from the device; dev.device_batch_size), a few tiles on CPU; never more
        than an out-of-memory error left (`max_batch`). The device's reading is taken once per tile size:
        later scans would otherwise see the memory this model's own arena keeps, and shrink."""
        if self.device == "cuda":
            sized: dict[int, int] = self.__dict__.setdefault("_gpu_batches", {})
            if free_bytes is None and tile_size in sized:
                batch = sized[tile_size]
            else:
                free = dev.cuda_free_bytes(self.device_id) if free_bytes is None else free_bytes
                value_bytes = 2 if self.spec.input_dtype == "float16" else 4  # uint8 inputs compute in float
                batch = dev.device_batch_size(tile_size, free_bytes=free, value_bytes=value_bytes)
                if free_bytes is None:
                    sized[tile_size] = batch
        else:
            batch = CPU_BATCH_TILES
        return min(batch, self.max_batch) if self.max_batch else batch

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
    def optional_inputs(self) -> frozenset[str]:
        """Inputs a run may feed besides the image: the graph's other inputs and its overridable
        initialisers (a built-in graph's `stain_deconvolution`, inference/stains.py)."""
        names = {i.name for i in self.session.get_inputs()} | {i.name for i in self.session.get_overridable_initializers()}
        return frozenset(names - {self.spec.input_name})

    @functools.cached_property
    def static_batch(self) -> int | None:
        """The input's fixed batch size (a `torch.onnx.export` default is 1), or None when it is dynamic."""
        for inp in self.session.get_inputs():
            if inp.name == self.spec.input_name:
                dim = inp.shape[0] if inp.shape else None
                return dim if isinstance(dim, int) and dim > 0 else None
        return None

    def activate(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The spec's `output_activation` on the primary output (softmax over the class axis, or sigmoid),
        in float32; the other outputs are left as the model gave them."""
        act = self.spec.output_activation
        if act == "none" or not outputs:
            return outputs
        name = self.spec.output_name if self.spec.output_name in outputs else next(iter(outputs))
        y = np.asarray(outputs[name], dtype=np.float32)
        if act == "sigmoid":
            y = (1.0 / (1.0 + np.exp(-y))).astype(np.float32)
        elif y.ndim >= 2:  # softmax over the class axis
            axis = class_axis(self.spec, y.shape)
            e = np.exp(y - y.max(axis=axis, keepdims=True))
            y = e / e.sum(axis=axis, keepdims=True)
        return {**outputs, name: y.astype(np.float32, copy=False)}

    def primary_output(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The output the spec names (`output_name`), else the graph's first output."""
        return outputs[self.spec.output_name] if self.spec.output_name in outputs else next(iter(outputs.values()))

    def run(self, batch: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every output of the model for one batch, by name (the spec's output activation applied).

        `inputs`: values for `optional_inputs` (the same for every tile of the batch, e.g. a scan's stain
        matrix); a name the graph does not take is an InferenceError. A static-batch export gets the
        batch in chunks of its fixed size, the last one padded with zero tiles, and the outputs joined
        back and trimmed to the batch; a dynamic batch runs whole.

        On the CPU the arrays may be views of onnxruntime's arena: one kept while the next batch runs keeps
        the arena from reusing its memory plan, and it grows by a whole plan (copy what is kept: objects.py).
        """
        extra = dict(inputs or {})
        unknown = sorted(set(extra) - self.optional_inputs)
        if unknown:
            raise InferenceError(f"model {self.spec.name!r} takes no input {unknown[0]!r}")
        fixed = self.static_batch
        n = len(batch)
        if fixed is None or n == fixed:
            return self.activate(self._run_once(batch, extra))
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, n, fixed):
            chunk = batch[start:start + fixed]
            if len(chunk) < fixed:
                pad = np.zeros((fixed - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self._run_once(chunk, extra))
        joined = {name: np.concatenate([p[name] for p in parts])[:n] for name in self.output_names}
        return self.activate(joined)

    def _run_once(self, batch: np.ndarray, extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session run of a batch the model takes as it is (plus the `extra` inputs); on an out-of-memory
        error (dynamic batch only) the batch is halved, remembered in `max_batch`, and run in halves
        instead of failing."""
        n = len(batch)
        if self.max_batch and n > self.max_batch and self.static_batch is None:
            return self._run_split(batch, self.max_batch, extra)
        x = self.prepare(batch)
        try:
            if self.io_binding:
                outs = self._run_bound(x, extra)
            else:
                outs = self.session.run(None, {self.spec.input_name: x, **extra})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            if n > 1 and self.static_batch is None and dev.is_out_of_memory(exc):
                half = (n + 1) // 2
                self.max_batch = half if not self.max_batch else min(self.max_batch, half)
                log.warning("model %s: out of memory at batch %d; batches of %d from now on", self.spec.name, n,
                            self.max_batch, extra={"batch": n, "max_batch": self.max_batch})
                self._local.__dict__.clear()  # drop the bound buffers of the batch that did not fit
                return self._run_split(batch, self.max_batch, extra)
            raise InferenceError(f"model {self.spec.name!r} failed: {exc}") from exc
        return dict(zip(self.output_names, outs, strict=True))

    def _run_split(self, batch: np.ndarray, size: int, extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch in chunks of `size` (each may halve again), outputs joined in order."""
        parts = [self._run_once(batch[i:i + size], extra) for i in range(0, len(batch), size)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _run_bound(self, x: np.ndarray, extra: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One batch through I/O binding, reusing this thread's buffers for the batch's shape: the input
        OrtValue is updated in place, the outputs land in the device buffers of the first run, and come
        back as new host arrays (callers keep them while the next batch runs). The `extra` inputs (a few
        numbers) are bound from host memory on every run."""
        bound: dict[tuple[Any, ...], tuple[Any, Any]] = self._local.__dict__.setdefault("bound", {})
        key = (x.shape, x.dtype.str, tuple(sorted(extra)))  # a binding keeps its inputs: one set per names fed
        entry = bound.get(key)
        if entry is None:
            if len(bound) >= MAX_BOUND_SHAPES:
                bound.clear()
            binding = self.session.io_binding()
            value = self._input_value(x)
            binding.bind_ortvalue_input(self.spec.input_name, value)
            for name, arr in extra.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr)))
            for name in self.output_names:
                binding.bind_output(name, self.device, self.device_id)
            self.session.run_with_iobinding(binding)
            outs = binding.copy_outputs_to_cpu()
            for name, out in zip(self.output_names, binding.get_outputs(), strict=True):
                binding.bind_ortvalue_output(name, out)  # the next batch of this shape reuses them
            bound[key] = (binding, value)
            return [np.asarray(o) for o in outs]
        binding, value = entry
        value.update_inplace(x)
        for name, arr in extra.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr)))
        self.session.run_with_iobinding(binding)
        return [np.asarray(o) for o in binding.copy_outputs_to_cpu()]

    def _input_value(self, x: np.ndarray) -> Any:
        """The input buffer for `x`'s shape, holding `x`: pinned host memory on CUDA where onnxruntime
        offers it (the copy to the device is then a DMA), else device memory."""
        if self.device == "cuda":
            pinned = dev.pinned_memory_info(self.device_id)
            if pinned is not None:
                try:
                    value = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), x.dtype.type,
                                                                      memory_info=pinned)
                    value.update_inplace(x)
                    return value
                except Exception:  # noqa: BLE001 - an onnxruntime without pinned OrtValues: device memory
                    log.debug("pinned input buffer not available; using device memory")
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), x.dtype.type, self.device, self.device_id)
        value.update_inplace(x)
        return value
