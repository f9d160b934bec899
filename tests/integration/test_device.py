"""Device choice, provider options, batch sizing, out-of-memory halving and reused I/O-binding buffers,
on the real onnxruntime of this machine (CPU). Faults (a silent CUDA fallback, an allocation failure) are
injected where a CPU cannot produce them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from scanbridge.cpus import usable_cores
from scanbridge.devtools import bench, synth
from scanbridge.domain.errors import DeviceUnavailableError, InferenceError
from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.tiling import grid_for_model
from scanbridge.inference import device as dev
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.pipeline import iter_tiles
from scanbridge.inference.runner import Analyzer, ModelLoader
from scanbridge.inference.session import OnnxModel, channel_poor
from scanbridge.inference.zoo import BUILTINS
from tests.conftest import fixture_path, logged

OOM_MESSAGE = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
               "Name:'/conv1/Conv' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 "
               "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) "
               "Failed to allocate memory for requested buffer of size 3221225472")

needs_no_cuda = pytest.mark.skipif(dev.probe_cuda().ok, reason="CUDA works here: the no-CUDA paths cannot be seen")


@pytest.fixture(autouse=True)
def _fresh_probe() -> Iterator[None]:
    dev.probe_cuda.cache_clear()
    yield
    dev.probe_cuda.cache_clear()


class AllocFailingSession:
    """Wraps an InferenceSession: batches larger than `limit` fail as onnxruntime's arena does on a full GPU."""

    def __init__(self, inner: ort.InferenceSession, limit: int) -> None:
        self.inner, self.limit, self.sizes = inner, limit, []  # type: list[int]

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
        n = len(next(iter(feed.values())))
        self.sizes.append(n)
        if n > self.limit:
            raise RuntimeError(OOM_MESSAGE)
        return self.inner.run(names, feed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _bench_conv(**kwargs: Any) -> OnnxModel:
    spec, build = bench.BENCH_MODELS["bench-conv"]
    return OnnxModel(spec, build(), device="cpu", **kwargs)


@needs_no_cuda
def test_probe_names_the_missing_cuda_provider_and_cuda_is_refused() -> None:
    # GIVEN this machine's onnxruntime (no CUDA provider)
    # WHEN the device is resolved for each SCANBRIDGE_DEVICE value
    probe = dev.probe_cuda()
    # THEN the probe says why, auto and cpu give the CPU, and cuda is a coded error naming CUDA
    assert not probe.ok and "CUDAExecutionProvider" in probe.reason
    assert dev.resolve_device("auto") == "cpu" and dev.resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceUnavailableError) as err:
        dev.resolve_device("cuda")
    assert err.value.code == "DEVICE_UNAVAILABLE" and "CUDA" in err.value.message
    assert err.value.details["available_providers"] == ort.get_available_providers()


@needs_no_cuda
def test_probe_sees_onnxruntime_silently_falling_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an onnxruntime that claims a CUDA provider it cannot start (the image/wheel mismatch of issue #21)
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [dev.CUDA, *real])
    # WHEN the probe creates its CUDA session (onnxruntime puts it on the CPU without an error)
    probe = dev.probe_cuda()
    # THEN the fallback is caught from the session's providers, and cuda is refused
    assert not probe.ok and "fell back to the CPU" in probe.reason
    with pytest.raises(DeviceUnavailableError):
        dev.resolve_device("cuda")


def test_model_session_that_falls_back_is_refused_under_cuda_and_logged_under_auto(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a probe that (wrongly) reports CUDA as working, so only the model's own session check is left
    monkeypatch.setattr(dev, "probe_cuda", lambda device_id=0: dev.CudaProbe(True))
    spec, build = BUILTINS["tissue"]
    # WHEN a model is created on cuda / on auto and onnxruntime puts the session on the CPU
    with pytest.raises(DeviceUnavailableError) as err:
        OnnxModel(spec, build(), device="cuda")
    with logged(caplog, "scanbridge.inference.session", logging.WARNING):
        auto = OnnxModel(spec, build(), device="auto")
    # THEN cuda fails with the coded error, and auto runs on the CPU and says so
    assert err.value.code == "DEVICE_UNAVAILABLE" and "CUDA" in err.value.message
    assert auto.device == "cpu" and auto.provider == dev.CPU
    assert "runs on the CPU" in caplog.text


def test_provider_options_for_cpu_cuda_and_tensorrt(tmp_path: Path) -> None:
    # GIVEN an onnxruntime with TensorRT, CUDA and CPU providers
    available = [dev.TENSORRT, dev.CUDA, dev.CPU]
    cache = tmp_path / "data" / "tensorrt"
    # WHEN the provider lists are built
    cpu = dev.providers_for("cpu", tensorrt=True, cache_dir=cache, available=available)
    cuda = dev.providers_for("cuda", device_id=1, available=available)
    trt = dev.providers_for("cuda", device_id=1, tensorrt=True, cache_dir=cache, available=available)
    no_trt = dev.providers_for("cuda", tensorrt=True, cache_dir=cache, available=[dev.CUDA, dev.CPU])
    # THEN the CPU gets the CPU only; CUDA its device and an arena that grows by what is asked
    assert cpu == [(dev.CPU, {})]
    assert [name for name, _ in cuda] == [dev.CUDA, dev.CPU]
    assert cuda[0][1]["device_id"] == "1" and cuda[0][1]["arena_extend_strategy"] == "kSameAsRequested"
    # AND TensorRT comes first with FP16 and its engine and timing caches in the data dir, CUDA as fallback
    assert [name for name, _ in trt] == [dev.TENSORRT, dev.CUDA, dev.CPU]
    opts = trt[0][1]
    assert opts["device_id"] == "1" and opts["trt_fp16_enable"] == "True"
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == str(cache)
    assert opts["trt_timing_cache_path"] == str(cache) and cache.is_dir()
    assert all(isinstance(v, str) for _, o in trt for v in o.values())  # onnxruntime takes strings only
    # AND without a TensorRT provider, asking for it falls back to CUDA
    assert [name for name, _ in no_trt] == [dev.CUDA, dev.CPU]


def test_gpu_batch_follows_tile_size_and_free_memory() -> None:
    # GIVEN devices with 80 GB, 16 GB and 2 GB free, and one whose free memory is unknown
    gb = 10**9
    # WHEN batches are sized for 224, 512 and 1024 px tiles
    sizes = {(free, tile): dev.device_batch_size(tile, free_bytes=free)
             for free in (80 * gb, 16 * gb, 2 * gb) for tile in (224, 512, 1024)}
    # THEN a bigger tile or less memory never gets a bigger batch, and each batch fits its share of memory
    for tile in (224, 512, 1024):
        assert sizes[(80 * gb, tile)] >= sizes[(16 * gb, tile)] >= sizes[(2 * gb, tile)] >= 1
    for free in (80 * gb, 16 * gb, 2 * gb):
        assert sizes[(free, 224)] >= sizes[(free, 512)] >= sizes[(free, 1024)]
        for tile in (224, 512, 1024):
            need = sizes[(free, tile)] * tile * tile * 3 * 4 * dev.ACTIVATION_FACTOR
            assert need <= free * dev.MEMORY_SHARE or sizes[(free, tile)] == 1
    assert sizes[(80 * gb, 224)] == dev.MAX_GPU_BATCH and sizes[(2 * gb, 1024)] < 8
    # AND an unknown free memory falls back to ~GPU_BATCH_BYTES of input, a float16 model packs more tiles
    assert dev.device_batch_size(512, free_bytes=None) == 128
    assert dev.device_batch_size(512, free_bytes=16 * gb, value_bytes=2) > sizes[(16 * gb, 512)]


def test_out_of_memory_halves_the_batch_and_gives_the_same_outputs() -> None:
    # GIVEN the bench model whose session fails for batches above 3, and the same model unhindered
    model, plain = _bench_conv(io_binding=False), _bench_conv(io_binding=False)
    flaky = AllocFailingSession(model.session, limit=3)
    model.session = flaky  # type: ignore[assignment]
    batch = np.random.default_rng(2).integers(0, 256, (10, 256, 256, 3), dtype=np.uint8)
    # WHEN a batch of 10 runs
    out = model.run(batch)["prob"]
    # THEN it ran in halves down to what fits, the limit is kept, and the outputs are the full batch's
    assert model.max_batch == 3 and max(n for n in flaky.sizes if n <= 3) == 3
    np.testing.assert_allclose(out, plain.run(batch)["prob"], rtol=1e-5, atol=1e-6)
    assert model.batch_size_for(256) == 3
    # AND later batches go straight to the smaller size
    flaky.sizes.clear()
    model.run(batch[:7])
    assert flaky.sizes == [3, 3, 1]


def test_out_of_memory_on_a_single_tile_is_an_inference_error() -> None:
    # GIVEN a session that cannot take even one tile
    model = _bench_conv(io_binding=False)
    model.session = AllocFailingSession(model.session, limit=0)  # type: ignore[assignment]
    # WHEN one tile runs / THEN the scan fails with the coded inference error
    with pytest.raises(InferenceError) as err:
        model.run(np.zeros((1, 256, 256, 3), np.uint8))
    assert err.value.code == "INFERENCE_FAILED"


def test_scan_survives_out_of_memory_with_the_same_result(tmp_path: Path) -> None:
    # GIVEN a synthetic slide, and the bench model failing above 4 tiles per batch
    path = tmp_path / "s.svs"
    synth.make_slide(path, 3072, 2048, tissue_fraction=0.5, seed=4)
    flaky_model, plain_model = _bench_conv(io_binding=False), _bench_conv(io_binding=False)
    flaky_model.session = AllocFailingSession(flaky_model.session, limit=4)  # type: ignore[assignment]
    # WHEN the scan is analysed with batches of 16
    results = []
    for model in (flaky_model, plain_model):
        reader = open_scan([path])
        try:
            results.append(analyze_scan("s", reader, model, batch_size=16))
        finally:
            reader.close()
    # THEN the faulted run finishes with the unfaulted run's tiles and result
    faulted, clean = results
    assert faulted.stats.tiles_processed == clean.stats.tiles_processed > 4
    assert faulted.result.results["report"] == clean.result.results["report"]  # type: ignore[index]
    assert flaky_model.max_batch == 4


def test_io_binding_reuses_buffers_and_hands_out_fresh_arrays() -> None:
    # GIVEN the bench model with I/O binding on the CPU device, and without
    bound, plain = _bench_conv(io_binding=True), _bench_conv(io_binding=False)
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8) for _ in range(2))
    # WHEN two batches of one shape run, then a shorter one
    out_a = bound.run(a)["prob"]
    kept = out_a.copy()
    out_b = bound.run(b)["prob"]
    bound.run(b[:3])
    # THEN one buffer set serves each shape, results match the plain session, and the first batch's
    # arrays are untouched by the second (the object pipeline's post threads keep them)
    assert len(bound._local.bound) == 2
    np.testing.assert_allclose(out_b, plain.run(b)["prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out_a, kept)
    assert not np.shares_memory(out_a, out_b)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_result_kind_names_the_provider_it_ran_on(name: str) -> None:
    # GIVEN a built-in model of each kind on this machine's device, and a real scan
    spec, build = BUILTINS[name]
    model = OnnxModel(spec, build(), device="auto")
    reader = open_scan([fixture_path("boxes.tiff")])
    try:
        # WHEN the scan is analysed
        result = analyze_scan("s", reader, model, min_tissue=0.0).result
    finally:
        reader.close()
    # THEN its result says which execution provider ran it
    assert result.results is not None
    assert result.results["model"]["provider"] == model.provider == model.session.get_providers()[0]


def test_reader_threads_follow_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN processes allowed 16, 4 and 1 cores
    counts = {}
    for cores in (16, 4, 1):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        # WHEN the worker's analyzer is built without SCANBRIDGE_READER_THREADS, and with it
        counts[cores] = Analyzer(ModelLoader(device="cpu")).readers
    pinned = Analyzer(ModelLoader(device="cpu"), readers=5).readers
    # THEN the readers are the cores less one (at least 2), and the setting wins
    assert counts == {16: 15, 4: 3, 1: 2}
    assert pinned == 5


def test_object_post_processing_threads_are_the_cores_less_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN processes allowed 1, 2, 3, 5 and 16 cores
    counts = {}
    for cores in (1, 2, 3, 5, 16):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        monkeypatch.setattr("os.process_cpu_count", lambda n=cores: n, raising=False)
        # WHEN the object pipeline sizes its post-processing pool
        counts[cores] = dev.default_post_threads()
    # THEN it leaves the model a core (at least one thread, at most MAX_POST_THREADS): on 2 cores one thread,
    # which beat four there (the others only took turns at the GIL)
    assert counts == {1: 1, 2: 1, 3: 2, 5: 4, 16: dev.MAX_POST_THREADS} and dev.MAX_POST_THREADS == 4


def test_the_pipeline_starts_as_many_reader_threads_as_the_cores_allow_unless_told(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a process allowed 6 cores (Python 3.13's process_cpu_count where it exists, else the affinity
    # mask) and a grid of 64-px tiles over a real JPEG pyramid
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(6)))
    monkeypatch.setattr("os.process_cpu_count", lambda: 6, raising=False)
    reader = open_scan([fixture_path("thirdparty/vips_pyramid_jpeg.tif")])
    meta = reader.metadata
    grid = grid_for_model(meta.level_dimensions, meta.level_downsamples, 1.0, 64, None, 1.0)
    names: list[str] = []
    start = threading.Thread.start

    def recording_start(self: threading.Thread) -> None:
        names.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    try:
        # WHEN every tile is read without a reader count, and then with 2
        auto = sum(1 for _ in iter_tiles(reader, grid))
        auto_names = sorted(n for n in names if n.startswith("tile-reader-"))
        names.clear()
        told = sum(1 for _ in iter_tiles(reader, grid, readers=2))
    finally:
        reader.close()
    # THEN the first read ran the cores less one (5) threads, the second the 2 it was given, every tile once
    assert usable_cores() == 6 and dev.default_reader_threads() == 5
    assert auto == told == len(grid.tiles) > 5
    assert auto_names == [f"tile-reader-{i}" for i in range(5)]
    assert sorted(n for n in names if n.startswith("tile-reader-")) == ["tile-reader-0", "tile-reader-1"]


@pytest.mark.gpu
@pytest.mark.skipif(not dev.probe_cuda().ok, reason="needs a working CUDA execution provider")
def test_cuda_is_used_for_real_with_a_memory_sized_batch() -> None:  # pragma: no cover - GPU only
    # GIVEN a machine where CUDA works
    free = dev.cuda_free_bytes()
    # WHEN the bench model is created on cuda and runs a device-sized batch twice (reused buffers)
    gpu = OnnxModel(bench.BENCH_MODELS["bench-conv"][0], bench.model_bytes("bench-conv"), device="cuda")
    cpu = _bench_conv()
    batch = np.random.default_rng(5).integers(0, 256, (gpu.batch_size_for(256), 256, 256, 3), dtype=np.uint8)
    first, second = gpu.run(batch)["prob"], gpu.run(batch)["prob"]
    # THEN the session is on CUDA with I/O binding, the batch follows the free memory, results match the CPU
    assert gpu.provider in dev.GPU_PROVIDERS and gpu.device == "cuda" and gpu.io_binding
    assert free is not None and free > 0
    assert gpu.batch_size_for(256, free_bytes=free) == dev.device_batch_size(256, free_bytes=free)
    assert 8 <= gpu.batch_size_for(256) <= dev.MAX_GPU_BATCH
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, cpu.run(batch)["prob"], rtol=1e-3, atol=1e-4)


def _conv_with_input_weight() -> bytes:
    """A one-convolution graph whose weight is a graph input of unknown output channels."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "weight-input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, ["K", 3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def test_filter_graphs_run_without_the_nchwc_layout_and_networks_keep_it() -> None:
    # GIVEN the built-in nucleus graphs (one-channel filters, the deconvolution's weight computed in the
    # graph), the tissue graph (no convolution), the bench's convolutional nets and a weight of unknown shape
    models = {name: BUILTINS[name][1]() for name in ("nuclei", "ihc-positivity", "tissue")}
    models |= {name: bench.BENCH_MODELS[name][1]() for name in ("bench-conv", "bench-resnet50-slim")}
    # WHEN / THEN only the filter graphs are channel-poor
    assert {name: channel_poor(raw) for name, raw in models.items()} == {
        "nuclei": True, "ihc-positivity": True, "tissue": False, "bench-conv": False, "bench-resnet50-slim": False}
    assert not channel_poor(_conv_with_input_weight()) and not channel_poor(b"not an onnx model")
    # WHEN the nuclei model is loaded on the CPU
    model = OnnxModel(BUILTINS["nuclei"][0], models["nuclei"], device="cpu")
    # THEN its session leaves the NCHWc transformer out, and gives what a default session gives (to float rounding)
    assert model.disabled_optimizers == ["NchwcTransformer"]
    assert _bench_conv().disabled_optimizers == []
    tile = np.random.default_rng(4).integers(60, 250, (2, 3, 96, 96), dtype=np.uint8)
    default = ort.InferenceSession(models["nuclei"], providers=["CPUExecutionProvider"])
    want = default.run(None, {"image": tile})
    got = model.session.run(None, {"image": tile})
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
