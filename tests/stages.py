"""CI in stages, as a pytest plugin (tests/conftest.py loads its hooks; tests/test_stages.py runs it on a toy suite).

One command (`python -m pytest`, what .ci/run and the README run) runs the stages in order: lint and
types, unit, integration, the deployed package, e2e. Once a stage has a failure, the later stages are
skipped with a message naming it (a lint error should not cost the e2e minutes); SCANBRIDGE_ALL_STAGES=1
runs everything regardless. The stage of a test is the first folder under `<rootdir>/tests` (static:
`tests/test_static.py`; any other top-level file: integration).

Under pytest-xdist (`-n`, the default in pyproject.toml) the tests are handed to the workers in stage order
(`--dist loadgroup --no-loadscope-reorder`), and a worker that sees a failure leaves a flag in the run's
shared temporary folder (the parent of each worker's basetemp); every worker reads the flags before each
test. So a test of a later stage that *starts* after a failure is skipped, on any worker; one that was
already running on another worker when the failure happened finishes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

STAGES = ("static", "unit", "integration", "deploy", "e2e")
_FLAG = "failed-stage-"
_failed_here: list[str] = []  # without xdist: the first stage with a failure, in this process


def stage_of(item: pytest.Item) -> str:
    """The stage a test belongs to, from its path under `<rootdir>/tests`."""
    parts = Path(str(item.fspath)).resolve().relative_to(item.config.rootpath.resolve() / "tests").parts
    if parts[0] in STAGES:
        return parts[0]
    return "static" if parts[0] == "test_static.py" else "integration"


def _shared_folder(config: pytest.Config) -> Path | None:
    """Under xdist, the folder every worker of this run shares (their basetemps' parent); else None."""
    if not hasattr(config, "workerinput") or not config.option.basetemp:
        return None
    return Path(config.option.basetemp).parent


def _first_failed(config: pytest.Config) -> str | None:
    shared = _shared_folder(config)
    if shared is None:
        return _failed_here[0] if _failed_here else None
    failed = [p.name.removeprefix(_FLAG) for p in shared.glob(_FLAG + "*")]
    return min(failed, key=STAGES.index) if failed else None


#: The e2e modules by their longest test, longest first (measured in session 14: the README loop with its second
#: test 31 s, restart 20 s, resume 17 s, delivery 16 s, reliability 12 s, live 12 s, dashboard 11 s, the hostile
#: battery 8 s): the last stage is handed out longest-first, so the run does not end with one worker on a long
#: test while the others idle (the e2e stage's workers ended 11 s apart in file order). Modules not listed
#: (test_local_stack's two tests, 5 s together) follow, in file order.
LONGEST_FIRST = ("test_readme_quickstart", "test_restart", "test_resume_e2e", "test_delivery_e2e", "test_reliability",
                 "test_live_e2e", "test_dashboard", "test_hostile_serve")


def _rank(item: pytest.Item) -> tuple[int, int]:
    stage = stage_of(item)
    stem = Path(str(item.fspath)).stem
    order = LONGEST_FIRST.index(stem) if stage == "e2e" and stem in LONGEST_FIRST else len(LONGEST_FIRST)
    return STAGES.index(stage), order


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the collected tests by stage, the e2e stage's longest modules first (stable otherwise)."""
    items.sort(key=_rank)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each stage with a failure (under xdist: for every worker of the run)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    stage = stage_of(item)
    shared = _shared_folder(item.config)
    if shared is not None:
        (shared / f"{_FLAG}{stage}").touch()
    elif not _failed_here:
        _failed_here.append(stage)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose stage comes after a stage that failed."""
    if os.environ.get("SCANBRIDGE_ALL_STAGES", "") == "1":
        return
    failed = _first_failed(item.config)
    if failed is not None and STAGES.index(stage_of(item)) > STAGES.index(failed):
        pytest.skip(f"stage {stage_of(item)!r} not run: stage {failed!r} has a failure "
                    "(SCANBRIDGE_ALL_STAGES=1 runs every stage)")
