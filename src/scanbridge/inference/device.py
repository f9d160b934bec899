"""Which device a model runs on and how much work it gets per batch.

`SCANBRIDGE_DEVICE`: `auto` (CUDA when its execution provider really initialises, else the CPU, logged),
`cuda` (no working CUDA: DeviceUnavailableError before any work) or `cpu`. onnxruntime falls back to the
CPU *silently* when the CUDA provider cannot load its libraries (a CUDA/cuDNN major the wheel was not
built for, no driver), so `probe_cuda` builds a one-node session, checks `get_providers()` and runs it
on the device; `OnnxModel` checks its own session's providers again after creating it.

Also here: the provider list with its options (CUDA, optional TensorRT with FP16 and an engine cache,
CPU), the device's free memory (cudaMemGetInfo through ctypes, else nvidia-smi), the batch size that
memory allows, and how an out-of-memory error from onnxruntime is recognised.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from scanbridge.cpus import usable_cores
from scanbridge.domain.errors import DeviceUnavailableError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
DeviceName = Literal["auto", "cuda", "cpu"]
ProviderList = list[tuple[str, dict[str, str]]]

#: share of the device's free memory a batch may plan to use (the rest: cuDNN workspaces, the arena's slack)
MEMORY_SHARE = 0.5
#: device bytes per tile as a multiple of its float32 input: the live activations of a ResNet-50-class net
ACTIVATION_FACTOR = 32
MAX_GPU_BATCH = 256
#: host memory of one uint8 batch (the pipeline decodes two batches ahead): bounds huge batches of big tiles
HOST_BATCH_BYTES = 256 * 2**20
GPU_BATCH_BYTES = 96 * 2**20  # uint8 input per batch on a GPU when its free memory cannot be read
TRT_WORKSPACE_BYTES = 4 * 2**30

#: what onnxruntime's (untyped) errors say when the device or host ran out of memory: its C++ exceptions
#: reach Python as RuntimeError/Fail with only a message, so the text is all there is to go on
OOM_MARKERS = ("failed to allocate memory", "out of memory", "cudaerrormemoryallocation",
               "cudnn_status_alloc_failed", "cublas_status_alloc_failed", "bad_alloc", "available memory of")


@dataclass(frozen=True)
class CudaProbe:
    """Whether CUDA really works in this process, and why not."""

    ok: bool
    reason: str = ""


def _probe_model() -> bytes:
    """A one-node ONNX graph (y = x + x) to see whether the CUDA provider takes and runs it."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "scanbridge_cuda_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="scanbridge")
    model.ir_version = 8
    return bytes(model.SerializeToString())


@lru_cache(maxsize=8)
def probe_cuda(device_id: int = 0) -> CudaProbe:
    """Create a CUDA session, check onnxruntime kept CUDA (it falls back silently) and run it on the device."""
    available = ort.get_available_providers()
    if CUDA not in available:
        return CudaProbe(False, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
                                f"{', '.join(available)}): the CPU-only 'onnxruntime' package is installed, "
                                "not 'onnxruntime-gpu'")
    try:
        session = ort.InferenceSession(_probe_model(), providers=[(CUDA, {"device_id": str(device_id)}), CPU])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        return CudaProbe(False, f"the CUDA execution provider failed to start: {exc}")
    if session.get_providers()[0] != CUDA:
        return CudaProbe(False, "onnxruntime fell back to the CPU: the CUDA execution provider did not initialise "
                                "(its CUDA/cuDNN libraries are missing or of another major version, or there is no "
                                "NVIDIA driver/GPU; onnxruntime's warning on stderr names what it needs)")
    try:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        binding = session.io_binding()
        binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x, "cuda", device_id))
        binding.bind_output("y", "cuda", device_id)
        session.run_with_iobinding(binding)
        y = binding.copy_outputs_to_cpu()[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        return CudaProbe(False, f"a probe run on CUDA device {device_id} failed: {exc}")
    if not np.array_equal(y, x + x):
        return CudaProbe(False, f"a probe run on CUDA device {device_id} returned wrong values")
    return CudaProbe(True)


def resolve_device(requested: str, device_id: int = 0) -> str:
    """`cuda` or `cpu` for SCANBRIDGE_DEVICE (`auto`, `cuda`, `cpu`); raises DeviceUnavailableError for an
    unusable `cuda`, and logs which device `auto` chose."""
    wanted = (requested or "auto").strip().lower()
    if wanted not in ("auto", "cuda", "cpu"):
        raise DeviceUnavailableError(f"SCANBRIDGE_DEVICE={requested!r}: choose auto, cuda or cpu",
                                     details={"device": requested})
    if wanted == "cpu":
        return "cpu"
    probe = probe_cuda(device_id)
    if probe.ok:
        log.info("device: CUDA (device %d)", device_id, extra={"device": "cuda"})
        return "cuda"
    if wanted == "cuda":
        raise DeviceUnavailableError(
            f"SCANBRIDGE_DEVICE=cuda but CUDA is not usable here: {probe.reason}",
            details={"device": "cuda", "device_id": device_id, "reason": probe.reason,
                     "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()})
    log.info("device: CPU (no usable CUDA: %s)", probe.reason, extra={"device": "cpu"})
    return "cpu"


def cuda_options(device_id: int = 0) -> dict[str, str]:
    """CUDA provider options: the arena grows by what is asked (a halved batch after an OOM then fits)."""
    return {"device_id": str(device_id), "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_use_max_workspace": "1", "do_copy_in_default_stream": "1"}


def tensorrt_options(device_id: int, cache_dir: Path) -> dict[str, str]:
    """TensorRT provider options: FP16, engines and timing cached under `cache_dir` (built once per shape)."""
    return {"device_id": str(device_id), "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir),
            "trt_max_workspace_size": str(TRT_WORKSPACE_BYTES)}


def providers_for(device: str, *, device_id: int = 0, tensorrt: bool = False, cache_dir: Path | None = None,
                  available: list[str] | None = None) -> ProviderList:
    """The session's providers with options, best first: [TensorRT,] CUDA, CPU on `cuda`; CPU on `cpu`.

    TensorRT comes only when asked (SCANBRIDGE_TENSORRT) and onnxruntime has it; CUDA stays behind it as
    the fallback for the nodes (or shapes) TensorRT does not take, and the CPU behind both.
    """
    if device != "cuda":
        return [(CPU, {})]
    providers: ProviderList = [(CUDA, cuda_options(device_id)), (CPU, {})]
    if tensorrt:
        names = ort.get_available_providers() if available is None else available
        if TENSORRT in names:
            folder = cache_dir if cache_dir is not None else Path(".scanbridge") / "tensorrt"
            folder.mkdir(parents=True, exist_ok=True)
            providers.insert(0, (TENSORRT, tensorrt_options(device_id, folder)))
        else:
            log.warning("SCANBRIDGE_TENSORRT=1 but onnxruntime has no TensorrtExecutionProvider: using CUDA")
    return providers


def _loaded_cudart() -> str | None:
    """Path of the libcudart this process already loaded (onnxruntime's CUDA provider), if any."""
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.rsplit(" ", 1)[-1].strip()
                if re.search(r"/libcudart\.so(\.\d+)*$", path):
                    return path
    except OSError:
        pass
    return None


def cuda_free_bytes(device_id: int = 0) -> int | None:
    """Free memory of the CUDA device: cudaMemGetInfo (through the loaded libcudart), else nvidia-smi."""
    names = [n for n in (_loaded_cudart(), "libcudart.so.13", "libcudart.so.12", "libcudart.so") if n]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if lib.cudaSetDevice(ctypes.c_int(device_id)) == 0 and \
                lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(free.value)
        break
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i",
                                  str(device_id)], capture_output=True, text=True, timeout=10, check=True)
            return int(float(out.stdout.strip().splitlines()[0]) * 2**20)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return None


def device_batch_size(tile_size: int, *, free_bytes: int | None, value_bytes: int = 4) -> int:
    """Tiles per batch on a GPU: what MEMORY_SHARE of its free memory holds for this tile size (each tile
    ~ACTIVATION_FACTOR x its input tensor), capped by MAX_GPU_BATCH and HOST_BATCH_BYTES of uint8 input;
    without a free-memory reading, ~GPU_BATCH_BYTES of uint8 input. A multiple of 8 from 8 on."""
    pixels = tile_size * tile_size * 3
    host_cap = max(1, HOST_BATCH_BYTES // pixels)
    if free_bytes is None:
        fit = max(8, GPU_BATCH_BYTES // pixels)
    else:
        fit = int(free_bytes * MEMORY_SHARE) // (pixels * value_bytes * ACTIVATION_FACTOR)
    batch = max(1, min(MAX_GPU_BATCH, host_cap, fit))
    return batch - batch % 8 if batch >= 8 else batch


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an onnxruntime error is an allocation failure (device or host), by its message."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(marker in text for marker in OOM_MARKERS)


def pinned_memory_info(device_id: int = 0) -> Any | None:
    """The CUDA provider's host-accessible (pinned) memory info, where this onnxruntime exposes it."""
    try:  # the CUDA EP's devices in enumeration order (OrtHardwareDevice.device_id is the PCI id, not this)
        cuda_eps = [ep for ep in ort.get_ep_devices() if ep.ep_name == CUDA]
        if device_id < len(cuda_eps):
            return cuda_eps[device_id].memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE)
    except Exception:  # noqa: BLE001 - older onnxruntime: no EP device API; pageable staging it is
        return None
    return None


#: the most tile reader threads: past this the model, not decoding, is the limit on any machine measured
MAX_READER_THREADS = 16


def default_reader_threads() -> int:
    """Tile reader threads: the cores this process may use, less one for the model's feeding thread
    (2..MAX_READER_THREADS); SCANBRIDGE_READER_THREADS overrides it where the worker builds its analyzer."""
    return max(2, min(MAX_READER_THREADS, usable_cores() - 1))


#: how far post-processing threads step back behind the model's (nice levels; Linux sets nice per thread)
POST_NICENESS = 10
MAX_POST_THREADS = 4


def default_post_threads() -> int:
    """Object post-processing threads: the cores this process may use less one (1..MAX_POST_THREADS). On 2
    cores one thread beside the model's beat four (nuclei at 400 MP, five rounds alternating: the tiles phase
    median 4.66 s against 5.03 s, and less CPU): the extra threads only took turns at the GIL."""
    return max(1, min(MAX_POST_THREADS, usable_cores() - 1))


def yield_to_model() -> None:
    """Lower the calling thread's scheduling priority by POST_NICENESS (Linux; elsewhere nothing): the
    model's intra-op threads then get the cores first and a post-processing thread runs on what they leave
    (their waits between operators, the batch hand-over), instead of delaying the model's slowest shard."""
    if not sys.platform.startswith("linux"):  # elsewhere a thread id is not what setpriority takes
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + POST_NICENESS))
    except OSError:  # not permitted here: the thread keeps its priority
        log.debug("post-processing thread keeps its priority")
