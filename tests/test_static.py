"""The code's own quality gates, run with the suite so CI enforces them: mypy on src/, ruff everywhere, and
the CI command is the README's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, unavailable


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


def test_ci_runs_exactly_the_readme_test_command_which_installs_the_browser_before_the_tests() -> None:
    # GIVEN the README's test command and the command .ci/run runs
    readme = (REPO / "README.md").read_text()
    found = re.search(r"Run the tests \(what `\.ci/run` runs\):\n\n```bash\n(.+?)\n```", readme)
    assert found, "the README has no 'Run the tests' block"
    command = found.group(1)
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    # THEN .ci/run runs that command, character for character, and nothing else
    assert ci == [command]
    # AND it installs the project and the browser before pytest starts (no test installs anything)
    steps = [step.strip() for step in command.split("&&")]
    assert steps[0].startswith("pip install -e '.[dev]'") and steps[-1] == "python -m pytest"
    assert "scripts/install-browser.sh" in steps[1:-1]
    assert os.access(REPO / "scripts" / "install-browser.sh", os.X_OK)


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                             ("", pytest.skip.Exception)])
def test_a_missing_fixture_or_browser_fails_under_ci_and_skips_on_a_checkout(
        monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]) -> None:
    # GIVEN CI set (or not) / WHEN a test finds what it needs missing / THEN it fails under CI, else skips
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no chromium"):
        unavailable("no chromium")
