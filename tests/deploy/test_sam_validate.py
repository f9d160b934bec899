"""`sam validate --lint` on template.yaml, where the SAM CLI is installed (it is not a project dependency)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO


def test_sam_validate_lint_is_clean(tmp_path: object) -> None:
    # GIVEN the SAM CLI (skipped where it is not on PATH: `pipx install aws-sam-cli`)
    sam = os.environ.get("SCANBRIDGE_SAM") or shutil.which("sam")
    if not sam:
        pytest.skip("the sam command is not installed")
    # WHEN it validates and lints the template (offline: a region and dummy credentials are enough)
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "SAM_CLI_TELEMETRY": "0"}
    proc = subprocess.run([sam, "validate", "--lint", "--template-file", str(REPO / "template.yaml")],
                          check=False, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    # THEN it reports the template valid and nothing else
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "is a valid SAM Template" in proc.stdout + proc.stderr
