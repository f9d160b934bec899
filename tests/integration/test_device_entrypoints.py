"""SCANBRIDGE_DEVICE at the entry points: told `cuda` on a machine without a working CUDA, `scanbridge
worker`, `run-scan` and `mhs` stop before any download with DEVICE_UNAVAILABLE, and the platform is told;
`auto` runs on the CPU, logs it, and every result names the provider it ran on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scanbridge.adapters.local.memory import MemoryJobLauncher
from scanbridge.bootstrap import bootstrap
from scanbridge.config import Settings, get_settings
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.webhook import WebhookPayload
from scanbridge.entrypoints import worker
from scanbridge.inference import device as dev
from tests.conftest import fixture_path
from tests.integration.test_mhs import _mhs

pytestmark = pytest.mark.skipif(dev.probe_cuda().ok, reason="CUDA works here: the refusal cannot be seen")


def _run_scan(tmp_path: Path, device: str, *files: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANBRIDGE_")}
    env.update({"SCANBRIDGE_DEVICE": device, "SCANBRIDGE_DATA_DIR": str(tmp_path / "data")})
    return subprocess.run([sys.executable, "-m", "scanbridge.entrypoints.cli", "run-scan", *map(str, files),
                           "--out", str(tmp_path / "out"), "--no-artifacts"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)


def test_worker_told_cuda_fails_the_task_before_downloading_and_the_platform_is_told(
        tmp_path: Path, aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a platform serving a scan, a task for it in DynamoDB/S3 (moto), and a worker told to use CUDA
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}) as fake:
        for key, value in {"SCANBRIDGE_DEVICE": "cuda", "SCANBRIDGE_DATA_DIR": str(tmp_path / "data"),
                           "SCANBRIDGE_PLATFORM_URL": fake.base_url, "SCANBRIDGE_ALLOWED_SCAN_HOSTS": fake.netloc,
                           "SCANBRIDGE_PLATFORM_API_KEY": "local-key", "SCANBRIDGE_DELIVERY_BACKOFF_S": "0"}.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        container = bootstrap(Settings(), provision=True, launcher=MemoryJobLauncher())
        container.intake.accept(WebhookPayload.model_validate(
            {"task_id": "t-cuda", "scans": {"s1": fake.url_for("boxes")}, "model_name": "tissue"}))
        try:
            # WHEN the worker runs the task (what Batch runs), then its job ends FAILED (the results step)
            rc = worker.main(["--task-id", "t-cuda"])
            task = container.delivery.on_job_finished("t-cuda", False, "Essential container in task exited")
            posts = fake.wait_for_posts(1, 10)
        finally:
            get_settings.cache_clear()
        downloads = list(fake.downloads)
    # THEN it exits non-zero, saying DEVICE_UNAVAILABLE and CUDA, and nothing was downloaded
    err = capsys.readouterr().err
    assert rc == 1 and "DEVICE_UNAVAILABLE" in err and "CUDA" in err
    assert downloads == []
    # AND the task is FAILED with that code, and the platform got the scan's coded failure
    assert str(task.status) == "FAILED" and task.error_code == "DEVICE_UNAVAILABLE"
    assert task.scans["s1"].error_code == "DEVICE_UNAVAILABLE"
    (scan,) = posts[0].body["scanResults"]
    assert scan["results"]["error"]["code"] == "DEVICE_UNAVAILABLE" and "CUDA" in scan["results"]["error"]["message"]


def test_run_scan_told_cuda_stops_before_reading_and_auto_runs_on_the_cpu(tmp_path: Path) -> None:
    # GIVEN a real scan file
    scan = fixture_path("boxes.tiff")
    # WHEN run-scan is told cuda, then auto
    refused = _run_scan(tmp_path, "cuda", scan)
    wrote_nothing = not (tmp_path / "out").exists()
    ran = _run_scan(tmp_path, "auto", scan)
    # THEN cuda fails with the coded error naming CUDA and writes nothing
    assert refused.returncode == 1 and "DEVICE_UNAVAILABLE" in refused.stderr and "CUDA" in refused.stderr
    assert wrote_nothing
    # AND auto runs on the CPU, logs that choice, and the result names the provider
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "device: CPU" in ran.stderr
    result = json.loads((tmp_path / "out" / "boxes.result.json").read_text())
    assert result["results"]["model"]["provider"] == "CPUExecutionProvider"


def test_mhs_told_cuda_downloads_nothing_and_posts_the_coded_failure(tmp_path: Path) -> None:
    # GIVEN a platform serving a scan, and the container told to use CUDA
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}) as fake:
        # WHEN the MHS container runs
        proc = _mhs(fake, tmp_path, {"TASK_ID": "t-mhs-cuda", "SCAN_ID": "s1", "SCAN_URL": fake.url_for("boxes"),
                                     "SCANBRIDGE_DEVICE": "cuda", "SCANBRIDGE_PLATFORM_API_KEY": "local-key"})
        posts = fake.wait_for_posts(1, 10)
        downloads = list(fake.downloads)
    # THEN it exits 3 naming DEVICE_UNAVAILABLE and CUDA, without downloading the scan
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "DEVICE_UNAVAILABLE" in proc.stderr and "CUDA" in proc.stderr
    assert downloads == []
    # AND the platform was told why the scan was not analysed
    (scan,) = posts[0].body["scanResults"]
    assert scan["results"]["error"]["code"] == "DEVICE_UNAVAILABLE"
    assert json.loads(proc.stdout.strip().splitlines()[-1])["error_code"] == "DEVICE_UNAVAILABLE"
