"""bench/gpu_check.sh: `--small` runs the GPU check's path on the CPU and prints one JSON object; without
`--small` on a machine with no working CUDA it stops with exit 3 and says what is missing (never the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from scanbridge.inference import device as dev

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _check(tmp_path: Path, *args: str, timeout: float, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANBRIDGE_", "GPU_CHECK_"))}
    env.update({"GPU_CHECK_DIR": str(tmp_path / "work"), **extra})
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_small_check_runs_the_path_on_the_cpu_and_prints_one_json_object(tmp_path: Path) -> None:
    # GIVEN this checkout and this machine's Python
    # WHEN the small GPU check runs
    proc = _check(tmp_path, "--small", timeout=300)  # a hang guard: ~5 s on 2 quiet cores (a 2048 x 1536 slide)
    # THEN it succeeds and prints exactly one JSON object on stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    # AND the object names the provider, the batch, the throughput and the pipeline's share of bare onnxruntime
    assert report["provider"] == "CPUExecutionProvider" and report["device"] == "cpu"
    assert report["model"] == "bench-resnet50-slim" and report["batch_size"] >= 1
    assert report["tiles_processed"] > 0 and report["tiles_per_s"] > 0 and report["pipeline_vs_bare"] > 0
    # AND it ran on the slide it generated: 60 % tissue (its time is the script's own report, not a test bound)
    assert (report["slide"]["width"], report["slide"]["height"]) == (2048, 1536)
    assert abs(report["slide"]["tissue_fraction"] - 0.6) < 0.05
    assert report["total_s"] > 0


@pytest.mark.skipif(dev.probe_cuda().ok, reason="CUDA works here: the refusal cannot be seen")
def test_gpu_check_without_cuda_says_what_is_missing_and_does_not_fall_back(tmp_path: Path) -> None:
    # GIVEN a machine whose onnxruntime has no CUDA provider (and no onnxruntime-gpu wheel carried)
    empty = tmp_path / "wheels"
    empty.mkdir()
    # WHEN the full GPU check runs
    proc = _check(tmp_path, timeout=120, GPU_CHECK_WHEELS=str(empty))
    # THEN it stops with exit 3 naming onnxruntime-gpu and CUDA, prints no report, and writes no slide
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "onnxruntime-gpu" in proc.stderr and "CUDA" in proc.stderr
    assert proc.stdout.strip() == ""
    assert not list((tmp_path / "work").glob("slide-*"))
