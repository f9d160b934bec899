"""The CI stages (tests/stages.py) on a toy suite, in one process and under xdist: tests run stage by stage,
and once a stage has a failure the later stages are skipped, on every worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

# One test per stage (two in unit, the first of which fails, two in integration and e2e), in two xdist groups
# so that under xdist each worker has tests of every later stage: "a" (the static test, test_i1, test_e1) and
# "b" (the unit tests, test_i2, test_d, test_e2). The static test waits, under xdist, until the failing test
# has failed on the other worker, so that the order of the run is known.
TOY = {
    "tests/test_static.py": """
import os, pathlib, time
import pytest
@pytest.mark.xdist_group("a")
def test_lint():
    marker = pathlib.Path({marker!r})
    deadline = time.monotonic() + 60
    while os.environ.get("PYTEST_XDIST_WORKER") and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0 if os.environ.get("PYTEST_XDIST_WORKER") else 0)  # the failure's flag follows the marker
""",
    "tests/unit/test_u.py": """
import pathlib
import pytest
pytestmark = pytest.mark.xdist_group("b")
def test_fails():
    pathlib.Path({marker!r}).touch()
    assert False, "a unit test fails"
def test_unit_passes():
    pass
""",
    "tests/integration/test_i.py": """
import pytest
@pytest.mark.xdist_group("a")
def test_i1():
    pass
@pytest.mark.xdist_group("b")
def test_i2():
    pass
""",
    "tests/deploy/test_d.py": "import pytest\n@pytest.mark.xdist_group('b')\ndef test_d():\n    pass\n",
    "tests/e2e/test_e.py": """
import pytest
@pytest.mark.xdist_group("a")
def test_e1():
    pass
@pytest.mark.xdist_group("b")
def test_e2():
    pass
""",
}
SKIPPED_BY_UNIT = (r"SKIPPED \[2\] .*stage 'integration' not run: stage 'unit' has a failure",
                   r"SKIPPED \[1\] .*stage 'deploy' not run: stage 'unit' has a failure",
                   r"SKIPPED \[2\] .*stage 'e2e' not run: stage 'unit' has a failure")
STAGE_ORDER = ["static", "unit", "integration", "deploy", "e2e"]


def _toy(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    marker = tmp_path / "failed.marker"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (root / "tests" / "conftest.py").write_text((REPO / "tests" / "stages.py").read_text())
    for rel, text in TOY.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text.replace("{marker!r}", repr(str(marker))))
    return root


def _run(root: Path, *args: str, all_stages: bool = False) -> tuple[dict[str, str], list[tuple[str, str]], str]:
    """({test name: outcome}, [(worker, test name)] in the order they ended, output) of pytest on the toy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SCANBRIDGE_"))}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only xdist (-p below): the toy needs no other plugin
    if all_stages:
        env["SCANBRIDGE_ALL_STAGES"] = "1"
    out = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "-p", "xdist",
                          *args], cwd=root, env=env, capture_output=True, text=True, timeout=180, check=False)
    # "[gw0] [ 12%] PASSED tests/x.py::test_a" under xdist, "tests/x.py::test_a PASSED [ 12%]" without
    xdist = re.findall(r"^\[(gw\d+)\] \[ *\d+%\] (PASSED|FAILED|SKIPPED) tests/\S+::(\w+)", out.stdout, re.MULTILINE)
    serial = re.findall(r"^tests/\S+::(\w+) (PASSED|FAILED|SKIPPED)", out.stdout, re.MULTILINE)
    ended = xdist or [("main", outcome, name) for name, outcome in serial]
    outcomes = {name: outcome for _w, outcome, name in ended}
    order = [(worker, name) for worker, _o, name in ended]
    return outcomes, order, out.stdout + out.stderr


def _stage(name: str) -> str:
    return {"l": "static", "f": "unit", "u": "unit", "i": "integration", "d": "deploy", "e": "e2e"}[
        name.removeprefix("test_")[0]]


def test_in_one_process_stages_run_in_order_and_a_failure_skips_the_later_ones(tmp_path: Path) -> None:
    # GIVEN a toy suite whose folders sort otherwise (deploy, e2e, integration before unit), one unit test failing
    root = _toy(tmp_path)
    # WHEN it runs in one process
    outcomes, order, out = _run(root, "-n", "0")
    # THEN the tests ran stage by stage
    stages = [_stage(name) for _w, name in order]
    assert stages == sorted(stages, key=STAGE_ORDER.index) and len(order) == 8, out
    # AND the failing stage ran to its end, every later stage was skipped with a message naming the failure
    assert outcomes == {"test_lint": "PASSED", "test_fails": "FAILED", "test_unit_passes": "PASSED",
                        "test_i1": "SKIPPED", "test_i2": "SKIPPED", "test_d": "SKIPPED", "test_e1": "SKIPPED",
                        "test_e2": "SKIPPED"}, out
    assert all(re.search(line, out) for line in SKIPPED_BY_UNIT), out


def test_under_xdist_a_failure_on_one_worker_skips_the_later_stages_on_every_worker(tmp_path: Path) -> None:
    """xdist decides which worker takes which test: the toy suite runs again (at most 5 times) until a
    later-stage test lands on the worker that did not fail, which is what shows the skip crossing workers
    (seen in a fresh clone: one run gave every skipped test to the failing worker)."""
    for attempt in range(5):
        # GIVEN the toy suite
        root = _toy(tmp_path / f"run{attempt}")
        # WHEN it runs on two xdist workers, as the suite's own settings run it
        outcomes, order, out = _run(root, "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder")
        # THEN both workers took part and each one ran its tests stage by stage
        workers = {w for w, _n in order}
        assert workers == {"gw0", "gw1"}, out
        for worker in workers:
            stages = [_stage(name) for w, name in order if w == worker]
            assert stages == sorted(stages, key=STAGE_ORDER.index), out
        # AND the failure skipped every later stage, with a message naming it
        assert outcomes == {"test_lint": "PASSED", "test_fails": "FAILED", "test_unit_passes": "PASSED",
                            "test_i1": "SKIPPED", "test_i2": "SKIPPED", "test_d": "SKIPPED", "test_e1": "SKIPPED",
                            "test_e2": "SKIPPED"}, out
        assert all(re.search(line, out) for line in SKIPPED_BY_UNIT), out
        worker_of = {name: w for w, name in order}
        later = [n for n in ("test_i1", "test_i2", "test_d", "test_e1", "test_e2")
                 if worker_of[n] != worker_of["test_fails"]]
        if later:  # AND some of them were skipped on the other worker: the flag crossed workers
            return
    pytest.fail(f"in 5 runs xdist never gave a later-stage test to the worker that did not fail: {order}")


def test_all_stages_runs_every_stage_despite_a_failure(tmp_path: Path) -> None:
    # GIVEN the toy suite / WHEN it runs with SCANBRIDGE_ALL_STAGES=1 / THEN nothing is skipped
    outcomes, _order, out = _run(_toy(tmp_path), "-n", "0", all_stages=True)
    assert outcomes["test_fails"] == "FAILED" and list(outcomes.values()).count("PASSED") == 7, out


def test_the_e2e_stage_is_handed_out_longest_modules_first() -> None:
    # GIVEN tests of several stages, the e2e ones in file order
    from types import SimpleNamespace

    from tests import stages

    config = SimpleNamespace(rootpath=REPO)
    paths = ["tests/e2e/test_local_stack.py", "tests/e2e/test_hostile_serve.py", "tests/e2e/test_resume_e2e.py",
             "tests/unit/test_x.py", "tests/e2e/test_readme_quickstart.py", "tests/integration/test_y.py",
             "tests/e2e/test_dashboard.py"]
    items: Any = [SimpleNamespace(fspath=REPO / p, config=config) for p in paths]
    # WHEN they are ordered for the run
    stages.pytest_collection_modifyitems(config, items)  # type: ignore[arg-type]
    # THEN stage by stage; in e2e the listed long modules first, in their order, then the rest in file order
    assert [str(i.fspath.relative_to(REPO)) for i in items] == [
        "tests/unit/test_x.py", "tests/integration/test_y.py", "tests/e2e/test_readme_quickstart.py",
        "tests/e2e/test_resume_e2e.py", "tests/e2e/test_dashboard.py", "tests/e2e/test_hostile_serve.py",
        "tests/e2e/test_local_stack.py"]
    # AND every listed module is one of tests/e2e (a renamed one would silently lose its place)
    assert {p.stem for p in (REPO / "tests" / "e2e").glob("test_*.py")} >= set(stages.LONGEST_FIRST)
