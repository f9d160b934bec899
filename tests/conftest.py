"""Shared fixtures: the real scan files, AWS under moto, containers wired with in-memory adapters."""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import os
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from scanbridge.adapters.local.memory import (
    FernetSecretBox,
    MemoryArtifactStore,
    MemoryJobLauncher,
    MemoryTaskStore,
)
from scanbridge.bootstrap import Container, bootstrap
from scanbridge.config import Settings
from scanbridge.domain.results import JsonBody
from scanbridge.heap import freeze_heap
from scanbridge.ports import PlatformResponse

# CI in stages (ordered; a failed stage skips the later ones, on every xdist worker): tests/stages.py
from tests import stages
from tests.stages import pytest_runtest_makereport, pytest_runtest_setup  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
EVENTS = REPO / "events"

SAMPLE_WEBHOOK: dict[str, Any] = {
    "company_id": "2380941",
    "scans": {"8823846": "https://techcyteci-preprod.s3.us-west-2.amazonaws.com/redacted"},
    "case_id": "aHVtYW5DYXNlOjI0MjEzNjY=",
    "task_id": "dGFzazoxODU4MzU=",
    "model_name": "",
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): three xdist workers per two cores (at least 2, at most 8). Much of the
    suite waits on other processes and sockets (stacks, workers, platforms), so the cores have room for more
    workers than there are cores: on 2 busy cores tests/e2e took 235 s on 4 workers and 304 s on 2. But each
    worker collects the whole suite (~5 s of CPU) and the run is CPU-bound throughout: the whole suite on 2
    cores, four pairs of runs alternating, took 211-216 s (373-387 s of CPU) on 3 workers against 215-232 s
    (392-431 s) on 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, max(2, 3 * cores // 2))


#: the cyclic garbage collector's thresholds in a test process (Python's default: 700, 10, 10); see below
GC_THRESHOLDS = (50_000, 20, 10)


def pytest_configure(config: pytest.Config) -> None:
    """Young collections every 50,000 allocations instead of 700: with Python's defaults the collector took
    ~21 % of a test process's CPU (9.9 of 47.3 s on a sample of modules in one process, mostly full collections
    walking the ~600,000 objects of the imported libraries, the collected tests and schemathesis' cases; 4.4 of
    39.1 s with this and the freeze below, the same peak RSS). Cyclic garbage is still collected, in fewer and
    larger young collections; full collections keep their default rhythm.

    Bytecode is cached even where the environment says PYTHONDONTWRITEBYTECODE (this machine does): the run
    starts ~200 Python processes (stacks, workers, CLIs, xdist's workers, which inherit this) that import
    scanbridge from src/, and without a cache each compiles the modules it imports again (all 1.1 MB: 0.2 s of
    CPU; serve's API process 332 kB, ~0.1 s), and each worker rewrites every test module's asserts again
    (its collection 6.4 -> 5.1 s with them cached). `__pycache__/` is gitignored."""
    gc.set_threshold(*GC_THRESHOLDS)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection made (modules, test items, fixtures' definitions) lives as long as the run: frozen out
    of the collector's reach (gc.freeze), so a full collection walks only what the tests allocated since.
    Without xdist, this process also starts the layer's background build (`_prefetch_layer`)."""
    if not session.config.pluginmanager.hasplugin("dsession"):
        _prefetch_layer(session.config, [item.nodeid for item in session.items])
    freeze_heap()


_prefetch: list[threading.Thread | None] = []  # the layer's background build (tests/deploy/conftest.py), once


def _prefetch_layer(config: pytest.Config, nodeids: list[str]) -> None:
    """In the controlling process (xdist's, or the only one), once: when the run has deploy tests, build the
    layer while the earlier stages run, instead of two workers idling on its lock when they reach them."""
    if _prefetch or hasattr(config, "workerinput") or config.option.collectonly \
            or not any(i.startswith("tests/deploy/") for i in nodeids):
        return
    from tests.deploy.conftest import prefetch_layer

    _prefetch.append(prefetch_layer())


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """xdist's controller: a worker has collected (the controller collects nothing itself)."""
    _prefetch_layer(node.config, ids)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Wait for the layer's background build (bounded by its own timeout), so no pip outlives the run.

    Then collect until a pass finds nothing, and freeze what is left: pytest's unraisable-exception plugin
    ends every process with five full collections (so that each finalizer's exception is reported), which
    walked the 200,000-500,000 objects a worker holds by then five times, 0.6-1.5 s of CPU per worker at the
    run's end. A pass that finds nothing shows the garbage is gone; the plugin's passes then walk nothing."""
    for thread in _prefetch:
        if thread is not None:
            thread.join()
    for _ in range(5):
        if not gc.collect():
            break
    gc.freeze()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the xdist_group marks into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests in stage order (tests/stages.py); then the tests of a module that use a module-scoped fixture
    of that module share one xdist group, i.e. one worker, so that the fixture (a generated slide, a model) is
    made once per run, not once on each worker that is handed one of those tests."""
    stages.pytest_collection_modifyitems(config, items)
    for item in items:
        module = item.getparent(pytest.Module)
        if module is None or item.get_closest_marker("xdist_group") is not None:
            continue
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures is not None else ()
        if any(d.scope == "module" and d.baseid == module.nodeid for chain in defs for d in chain):
            item.add_marker(pytest.mark.xdist_group(module.path.stem))


@contextmanager
def logged(caplog: pytest.LogCaptureFixture, name: str, level: int = logging.INFO) -> Iterator[None]:
    """caplog on the logger `name` itself, at `level`: importing a Lambda handler in-process (Powertools'
    `copy_config_to_registered_loggers`) stops the "scanbridge" logger propagating to the root, where caplog
    listens, so a test that runs after one on the same worker would see nothing."""
    logger = logging.getLogger(name)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(level, logger=name):
            yield
    finally:
        logger.removeHandler(caplog.handler)


def unavailable(message: str) -> NoReturn:
    """What a test needs is not on this machine: the test fails under CI (CI=true: a clean clone must not
    silently skip tests), and is skipped on a developer's checkout."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def fixture_path(name: str) -> Path:
    """A file of ../shared/fixtures; missing, see `unavailable` (a checkout without shared/ beside it)."""
    path = FIXTURES / name
    if not path.exists():
        unavailable(f"fixture {name} not found at {path} (the real scan files live in ../shared/fixtures)")
    return path


class ScriptedPlatform:
    """A PlatformClient that answers with scripted status codes and records every POST."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.delivery_ids: list[str] = []

    def post_results(self, task_id: str, body: JsonBody, bearer: str, *, delivery_id: str = "",
                     timeout_s: float | None = None) -> PlatformResponse:
        self.delivery_ids.append(delivery_id)
        self.calls.append((task_id, body.parsed(), bearer))
        status = self.statuses.pop(0) if self.statuses else 200
        return PlatformResponse(status_code=status, body=json.dumps({"status": status}))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for an in-process container, data under tmp_path."""
    return Settings(data_dir=tmp_path / "data", platform_url="http://127.0.0.1:9", delivery_backoff_s=0.0,
                    delivery_retry_window_s=0.0)  # one burst of retries, then DELIVERY_FAILED (no schedule)


@pytest.fixture
def launcher() -> MemoryJobLauncher:
    """A launcher that records what was submitted and runs nothing."""
    return MemoryJobLauncher()


@pytest.fixture
def platform() -> ScriptedPlatform:
    return ScriptedPlatform()


@pytest.fixture
def container(settings: Settings, launcher: MemoryJobLauncher, platform: ScriptedPlatform) -> Container:
    """Every service over in-memory adapters and the fakes above."""
    return bootstrap(settings, tasks=MemoryTaskStore(), artifacts=MemoryArtifactStore(), secrets=FernetSecretBox(),
                     launcher=launcher, platform=platform, sleep=lambda _s: None)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's mock_aws with fake credentials; Batch jobs do not need Docker."""
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_SECURITY_TOKEN": "testing",
                       "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SCANBRIDGE_AWS_ENDPOINT_URL", raising=False)
    with mock_aws(config={"batch": {"use_docker": False}}):
        yield


# --- files made once per run ----------------------------------------------------------------------


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this run that every xdist worker shares (the workers' basetemps' parent), else the basetemp."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def busy_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 4096 x 4096 slide at 0.5 µm/px, half tissue, with nuclei: it keeps a worker running the nuclei
    model busy for a while. Made once per run (the first worker to need it makes it, under a lock)."""
    from scanbridge.devtools import synth

    path = run_folder(tmp_path_factory) / "busy.svs"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            part = path.with_suffix(".part.svs")
            synth.make_slide(part, 4096, 4096, tissue_fraction=0.5, seed=2, mpp=0.5)
            part.rename(path)
    return path


def traced_peak(run: Callable[[], object]) -> int:
    """The peak of Python allocations (numpy's included) while `run()` runs, over what was live before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
