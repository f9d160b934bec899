"""`scanbridge dev bench` on a small generated slide, pipeline invariance, I/O binding, API import weight.

No timing is asserted here: speed is measured by the scripts in bench/, never by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from scanbridge.devtools import bench, synth
from scanbridge.imaging.readers import open_scan
from scanbridge.imaging.tiling import DEFAULT_MIN_TISSUE, grid_for_model
from scanbridge.inference.analyze import analyze_scan
from scanbridge.inference.session import OnnxModel

BENCH_KEYS = {"decode_only_s", "model_only_s", "pipeline_s", "naive_s", "tiles_total", "tiles_processed",
              "peak_rss_mb", "device", "provider", "bare_onnxruntime_s", "pipeline_vs_bare", "min_tissue"}


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3072x3072 Aperio slide at 0.5 µm/px with 25 % tissue, and its truth JSON."""
    folder = tmp_path_factory.mktemp("bench")
    path, truth = folder / "s.svs", folder / "s.json"
    t = synth.make_slide(path, 3072, 3072, tissue_fraction=0.25, seed=5, mpp=0.5)
    truth.write_text(json.dumps(t.to_json()))
    return path, truth


def _geometries(analysis: Any) -> list[Any]:
    return [(f["properties"]["annotation_type"], f["geometry"]) for f in analysis.result.geojson["features"]]


def test_bench_json_reports_every_measure_and_reads_only_tissue(slide: tuple[Path, Path],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a 25 %-tissue slide
    path, truth = slide
    # WHEN `scanbridge dev bench SLIDE --model bench-conv --json` runs
    code = bench.main([str(path), "--model", "bench-conv", "--json", "--truth", str(truth), "--cpu",
                       "--repeat", "1"])  # the fastest of N: test_each_phase_reports_its_fastest_run_...
    # THEN stdout is exactly one JSON object with every key
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert set(report) >= BENCH_KEYS
    assert all(report[k] > 0 for k in ("decode_only_s", "model_only_s", "pipeline_s", "naive_s", "bare_onnxruntime_s"))
    assert report["pipeline_vs_bare"] == pytest.approx(report["bare_onnxruntime_s"] / report["pipeline_s"], rel=0.01)
    assert report["provider"] == "CPUExecutionProvider" and report["device"] == "cpu"
    assert report["repeat"] == 1
    # AND only tissue tiles ran, as many as the tissue's share of the grid (issue #9: within 10 %)
    total, done = report["tiles_total"], report["tiles_processed"]
    assert 0 < done < total and report["min_tissue"] == DEFAULT_MIN_TISSUE
    share = done / total
    assert abs(share - report["tissue_fraction"]) / report["tissue_fraction"] <= 0.10, (share, report)
    # AND the result is the tissue it was built with
    assert abs(report["result_fraction"] - report["tissue_fraction"]) < 0.03


def test_pipeline_results_do_not_depend_on_readers_or_batch_size(slide: tuple[Path, Path]) -> None:
    # GIVEN the bench model on one slide
    path, _truth = slide
    model = bench.load_model("bench-conv", prefer_gpu=False)
    runs = []
    # WHEN it is analysed with 1 reader / batch 1, 2 readers / batch 8 and 3 readers / batch 5
    for readers, batch in ((1, 1), (2, 8), (3, 5)):
        reader = open_scan([path])
        try:
            runs.append(analyze_scan("s", reader, model, readers=readers, batch_size=batch))
        finally:
            reader.close()
    # THEN every run read the same tiles and produced the same polygons and summary
    first = runs[0]
    assert first.stats.tiles_processed > 0
    for other in runs[1:]:
        assert other.stats.tiles_processed == first.stats.tiles_processed
        assert _geometries(other) == _geometries(first)
        assert other.result.results["report"] == first.result.results["report"]  # type: ignore[index]


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1536x1536 Aperio slide at 0.5 µm/px with 40 % tissue (the naive loop reads every one of its tiles)."""
    path = tmp_path_factory.mktemp("bench-small") / "s.svs"
    synth.make_slide(path, 1536, 1536, tissue_fraction=0.4, seed=7, mpp=0.5)
    return path


def _features(result: Any) -> list[Any]:
    """Every feature without its id (a fresh uuid each time)."""
    return [{k: v for k, v in f.items() if k != "id"} for f in result.geojson["features"]]


@pytest.mark.parametrize("name", ["nuclei", "ihc-positivity"])
def test_the_naive_loop_gives_the_pipelines_objects(small_slide: Path, name: str) -> None:
    # GIVEN an object model and a slide whose nuclei all lie in its tissue
    path = small_slide
    model = bench.load_model(name, prefer_gpu=False)
    reader = open_scan([path])
    try:
        # WHEN the pipeline analyses every tile with tissue (min_tissue 0: what it skips is glass) ...
        analysis = analyze_scan("s", reader, model, min_tissue=0.0)
        meta = reader.metadata
    finally:
        reader.close()
    assert model.spec.mpp and meta.mpp
    full = grid_for_model(meta.level_dimensions, meta.level_downsamples, model.spec.mpp / meta.mpp[0],
                          model.spec.input_size, None, 1.0, overlap=int(model.spec.outputs["tile_overlap"]))
    # ... and the bench's naive loop runs every tile of the slide alone, decoding each tile as it goes
    _seconds, naive = bench.naive_objects(path, model, full, min_tissue=0.0)
    # THEN the naive loop read every tile, the pipeline fewer, and both found the same objects, measured the same
    assert analysis.stats.tiles_processed < len(full.tiles) == analysis.stats.tiles_total
    assert naive.results["nuclei_count"] == analysis.result.results["nuclei_count"] > 0  # type: ignore[index]
    assert _features(naive) == _features(analysis.result)
    # AND the same figures (the pipeline adds the scan's tissue fraction and notes to them)
    for key, value in naive.results.items():  # type: ignore[union-attr]
        if key != "report":
            assert analysis.result.results[key] == value, key  # type: ignore[index]


def test_the_naive_loop_gives_the_pipelines_tissue_regions(tmp_path: Path) -> None:
    # GIVEN the tissue model and a 3 mm slide whose tissue leaves some of its tiles glass
    path = tmp_path / "t.svs"
    synth.make_slide(path, 3072, 3072, tissue_fraction=0.25, seed=5, mpp=1.0)
    model = bench.load_model("tissue", prefer_gpu=False)
    reader = open_scan([path])
    try:
        # WHEN the pipeline analyses the tiles with tissue ...
        analysis = analyze_scan("t", reader, model)
        meta = reader.metadata
    finally:
        reader.close()
    assert model.spec.mpp and meta.mpp
    full = grid_for_model(meta.level_dimensions, meta.level_downsamples, model.spec.mpp / meta.mpp[0],
                          model.spec.input_size, None, 1.0)
    # ... and the bench's naive loop runs every tile of the slide alone, then builds its result from the canvas
    _seconds, naive = bench.naive_pixels(path, model, full)
    # THEN the naive loop read every tile, the pipeline fewer, and both traced the same regions and figures
    assert naive is not None
    assert analysis.stats.tiles_processed < len(full.tiles) == analysis.stats.tiles_total
    assert naive.results["tissue_regions"] > 0  # type: ignore[index]
    assert _features(naive) == _features(analysis.result)
    assert naive.results == analysis.result.results


def test_io_binding_path_gives_the_same_outputs(slide: tuple[Path, Path]) -> None:
    # GIVEN the bench model with and without I/O binding (the binding path on the CPU device)
    spec, build = bench.BENCH_MODELS["bench-conv"]
    data = build()
    plain = OnnxModel(spec, data, prefer_gpu=False, io_binding=False)
    bound = OnnxModel(spec, data, prefer_gpu=False, io_binding=True)
    batch = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    # WHEN both run one batch / THEN the outputs agree
    np.testing.assert_allclose(bound.run(batch)["prob"], plain.run(batch)["prob"], rtol=1e-5, atol=1e-6)
    assert bound.io_binding and not plain.io_binding


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime with the CUDA execution provider")
def test_cuda_session_binds_io_on_the_gpu_and_matches_cpu() -> None:  # pragma: no cover - GPU only
    # GIVEN the bench model on CUDA (default) and on CPU
    spec, build = bench.BENCH_MODELS["bench-conv"]
    data = build()
    gpu = OnnxModel(spec, data)
    cpu = OnnxModel(spec, data, prefer_gpu=False)
    batch = np.random.default_rng(1).integers(0, 256, (gpu.batch_size_for(256), 256, 256, 3), dtype=np.uint8)
    # THEN the GPU session uses I/O binding and a device-sized batch, and agrees with the CPU
    assert gpu.provider == "CUDAExecutionProvider" and gpu.device == "cuda" and gpu.io_binding
    assert gpu.batch_size_for(256) > 8
    np.testing.assert_allclose(gpu.run(batch)["prob"], cpu.run(batch)["prob"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("module", "banned"), [
    ("scanbridge.entrypoints.lambda_api", ("onnxruntime", "openslide", "pydicom", "skimage")),
    ("scanbridge.entrypoints.lambda_webhook", ("onnxruntime", "openslide", "pydicom", "skimage", "fastapi",
                                               "starlette", "numpy")),
])
def test_lambda_modules_import_no_heavy_stack(module: str, banned: tuple[str, ...]) -> None:
    # GIVEN a fresh interpreter
    code = (f"import sys, json, {module}\n"
            f"print(json.dumps(sorted(m for m in {banned!r} if m in sys.modules)))")
    # WHEN it imports the Lambda handler module
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    # THEN none of the inference/imaging stack (nor, for the webhook function, any web framework) was loaded
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_each_phase_reports_its_fastest_run_and_stops_repeating_past_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a phase whose runs take 3, 1 and 2 s, and one whose first run alone exceeds the budget
    def scripted(times: list[float]) -> tuple[list[float], Any]:
        done: list[float] = []

        def run() -> float:
            done.append(times[len(done)])
            return done[-1]
        return done, run

    monkeypatch.setattr(bench, "REPEAT_BUDGET_S", 10.0)
    short, run_short = scripted([3.0, 1.0, 2.0, 0.5])
    long, run_long = scripted([12.0, 1.0])
    # WHEN each is timed with repeat 3 / THEN the fastest of three runs, and the long one runs once
    assert bench.fastest(run_short, 3) == 1.0 and short == [3.0, 1.0, 2.0]
    assert bench.fastest(run_long, 3) == 12.0 and long == [12.0]
    # AND repeat 1 (or less) runs a phase once
    once, run_once = scripted([4.0, 1.0])
    assert bench.fastest(run_once, 0) == 4.0 and once == [4.0]
