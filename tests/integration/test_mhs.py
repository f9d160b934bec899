"""`scanbridge mhs` end to end: a subprocess configured only by environment variables, a loopback platform."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jwt
import pytest
from PIL import Image

from scanbridge.devtools import synth
from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.results import geojson_problems, qupath_problems
from scanbridge.entrypoints.mhs import MhsEnv, api_base_url, run
from scanbridge.exports.overlay import MIN_OVERLAY_SIDE
from tests.conftest import fixture_path

REASONS = json.dumps({"NO_TISSUE": "no tissue", "BLURRY": "blurry", "SCAN_CORRUPT": "unreadable"})


def _mhs(platform: FakePlatform, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SCANBRIDGE_")}
    base.update({"SCANBRIDGE_PLATFORM_URL": platform.base_url, "SCANBRIDGE_ALLOWED_SCAN_HOSTS": platform.netloc,
                 "SCANBRIDGE_DATA_DIR": str(tmp_path / "data"), "SCANBRIDGE_DELIVERY_BACKOFF_S": "0.01",
                 "SCANBRIDGE_QC_FAIL_REASONS": REASONS, "HOST": "ci.techcyte.com", "PYTHONUNBUFFERED": "1"})
    base.update(env)
    return subprocess.run([sys.executable, "-m", "scanbridge.entrypoints.cli", "mhs"], env=base, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)


def test_api_key_pair_scan_results_and_debug_zip(tmp_path: Path) -> None:
    # GIVEN a platform serving boxes.tiff, knowing an API key pair, and taking a debug upload
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}, api_keys={"key-id": "key-secret-123"}) as fake:
        # WHEN the container runs with the platform's environment and the local-test key pair
        proc = _mhs(fake, tmp_path, {"TASK_ID": "dGFzazoxODU4MzU=", "SCAN_ID": "8823846",
                                     "SCAN_URL": fake.url_for("boxes"), "API_KEY_ID": "key-id",
                                     "API_KEY_SECRET": "key-secret-123",
                                     "DEBUG_FILE_UPLOAD_URL": fake.upload_url_for("debug.zip")})
        posts, uploads = fake.wait_for_posts(1, 5), fake.wait_for_uploads(1, 5)
    # THEN it exits 0 after one POST, with the Bearer the key pair was exchanged for
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(posts) == 1 and len(fake.issued_tokens) == 1
    post = posts[0]
    assert post.path == "/api/v3/external/results/dGFzazoxODU4MzU="
    assert post.authorization == f"Bearer {fake.issued_tokens[0]}"
    # AND the body is one scan result with a valid level-0 GeoJSON that QuPath reads
    (scan,) = post.body["scanResults"]
    assert scan["scanId"] == "8823846" and scan["geojson"]["features"]
    assert geojson_problems(scan["geojson"], 300, 250) == [] and qupath_problems(scan["geojson"]) == []
    assert "qcFailReasons" not in scan and scan["results"]["qc"]["passed"] is True
    # AND the debug ZIP holds the overlay PNG, the run's log lines and the posted results
    assert len(uploads) == 1 and uploads[0].content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(uploads[0].data)) as zf:
        names = set(zf.namelist())
        assert {"overlay.png", "log.txt", "results.json"} <= names
        overlay = Image.open(io.BytesIO(zf.read("overlay.png")))
        assert json.loads(zf.read("results.json")) == post.body
        log_text = zf.read("log.txt").decode()
    assert "processing scan 8823846" in log_text
    # AND the overlay is the artifacts' one (exports/overlay.py): the 300x250 scan scaled up pixel-sharp
    # to at least MIN_OVERLAY_SIDE, with the legend's white box in the top-left corner
    assert overlay.format == "PNG" and max(overlay.size) >= MIN_OVERLAY_SIDE
    assert overlay.convert("RGB").getpixel((3, 3)) == (255, 255, 255)
    # AND the secret and the token never appear in any output
    for text in (proc.stdout, proc.stderr, log_text):
        assert "key-secret-123" not in text and fake.issued_tokens[0] not in text


def test_jwt_and_a_blank_scan_give_a_qc_failure_that_is_still_delivered(tmp_path: Path) -> None:
    # GIVEN a blank slide and a task JWT valid for an hour
    blank = tmp_path / "blank.svs"
    synth.make_slide(blank, 1024, 1024, blank=True)
    import time

    token = jwt.encode({"exp": int(time.time()) + 3600}, "k" * 32, algorithm="HS256")
    with FakePlatform(files={"blank": blank}) as fake:
        # WHEN the container runs
        proc = _mhs(fake, tmp_path, {"TASK_ID": "t-blank", "SCAN_ID": "s1", "SCAN_URL": fake.url_for("blank"),
                                     "JWT_TOKEN": token})
        posts = fake.wait_for_posts(1, 5)
    # THEN the scan is answered with the company's QC reason, with the JWT as Bearer, and exit 0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert posts[0].authorization == f"Bearer {token}"
    (scan,) = posts[0].body["scanResults"]
    assert scan["qcFailReasons"] == ["no tissue"]
    assert scan["results"]["report"]["summary"]["Error code"] == "NO_TISSUE"
    assert token not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "FAILED"


def test_delivery_failure_exits_non_zero(tmp_path: Path) -> None:
    # GIVEN a platform that answers 503 to every results POST
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff")}, responses=[503, 503]) as fake:
        # WHEN the container runs with two delivery attempts
        proc = _mhs(fake, tmp_path, {"TASK_ID": "t-503", "SCAN_ID": "s1", "SCAN_URL": fake.url_for("boxes"),
                                     "JWT_TOKEN": "a.b.c", "SCANBRIDGE_DELIVERY_ATTEMPTS": "2"})
    # THEN both attempts reached the platform and the exit status says the results were not delivered
    assert len(fake.posts) == 2
    assert proc.returncode == 1, proc.stderr[-3000:]


def test_environment_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the platform's variables / WHEN read / THEN the API URL comes from HOST unless overridden
    env = MhsEnv.from_env({"HOST": "ci.techcyte.com", "TASK_ID": "t", "SCAN_ID": "s",
                           "SCAN_URL": "https://b.s3.amazonaws.com/x.dcm", "SCAN_URL_ZIP": "https://b.s3.amazonaws.com/x.zip"})
    assert api_base_url(env, "") == "https://api.ci.techcyte.com"
    assert api_base_url(env, "http://127.0.0.1:9/") == "http://127.0.0.1:9"
    # AND a DICOM scan is fetched from its ZIP (every layer), an SVS from SCAN_URL
    assert env.scan_file_url().endswith("x.zip")
    svs = MhsEnv.from_env({"HOST": "h", "TASK_ID": "t", "SCAN_ID": "s", "SCAN_URL": "https://b/x.svs",
                           "SCAN_URL_ZIP": "https://b/x.zip"})
    assert svs.scan_file_url() == "https://b/x.svs"
    # AND missing variables are named and exit 2 before any work
    with pytest.raises(ValueError, match="TASK_ID"):
        MhsEnv.from_env({"HOST": "h"})
    monkeypatch.delenv("SCANBRIDGE_PLATFORM_URL", raising=False)
    assert run({"HOST": "h"}) == 2
