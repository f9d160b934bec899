"""The code's own quality gates, run with the suite so CI enforces them: mypy on src/, ruff everywhere."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=600)


def test_mypy_finds_no_type_errors_in_src() -> None:
    # GIVEN the package / WHEN mypy checks it (config in pyproject.toml) / THEN no errors
    out = _run("mypy", "src")
    assert out.returncode == 0, out.stdout[-3000:]


def test_ruff_finds_nothing() -> None:
    # GIVEN the package, tests and benchmarks / WHEN ruff checks them / THEN nothing to report
    out = _run("ruff", "check", "src", "tests", "bench")
    assert out.returncode == 0, out.stdout[-3000:]
