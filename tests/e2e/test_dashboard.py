"""The dashboard in a real headless Chromium (playwright) against the real `scanbridge serve`.

Chromium is Debian's `/usr/bin/chromium` (playwright's own browser download is not used), installed
before the tests by `scripts/install-browser.sh`, a step of the README's test command: no test installs
anything. Missing, the test fails under CI and is skipped on a developer's checkout (`unavailable`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scanbridge.devtools.local_platform import FakePlatform
from tests.conftest import fixture_path, unavailable
from tests.e2e.test_local_stack import _wait_terminal, start_stack

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium (scripts/install-browser.sh puts it there) and the playwright package ([dev])."""
    if importlib.util.find_spec("playwright") is None:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        unavailable(f"no {CHROMIUM}: run scripts/install-browser.sh (the README's test command runs it)")
    return CHROMIUM


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    with FakePlatform(files={"boxes": fixture_path("boxes.tiff"), "small": fixture_path("small.svs")}) as p:
        yield p


def test_dashboard_shows_live_tasks_summaries_and_overlays(chromium: Path, platform: FakePlatform,
                                                           tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with start_stack(platform, tmp_path) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console_errors: list[str] = []
            failed: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            # GIVEN the dashboard open in a browser before any task exists
            page.goto(f"{url}/")
            expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
            expect(page.locator("#models li")).to_contain_text(["tissue"])
            # WHEN the platform sends a task with two scans and it runs to the end
            task_id = "dash-task-1"
            resp = httpx.post(f"{url}/webhook", timeout=10, json={
                "task_id": task_id, "company_id": "2380941", "jwt_token": "local.test.token",
                "scans": {"boxes": platform.url_for("boxes"), "small": platform.url_for("small")}})
            assert resp.status_code == 202
            assert _wait_terminal(url, task_id)["status"] == "COMPLETED"
            # THEN, without a reload, the task's row shows COMPLETED and a full progress bar
            row = page.locator(f'tr.task-row[data-task-id="{task_id}"]')
            expect(row.locator("td.status")).to_have_text("COMPLETED", timeout=15_000)
            expect(row).to_contain_text("100 %")
            expect(row).to_contain_text("2/2")
            # AND each scan shows the summary the platform was sent
            results = httpx.get(f"{url}/tasks/{task_id}/results").json()
            summary = next(s for s in results["scanResults"] if s["scanId"] == "boxes")["results"]["report"]["summary"]
            card = page.locator('.scan[data-scan-id="boxes"]')
            for key, value in summary.items():
                expect(card.locator("dl.summary")).to_contain_text(key, timeout=15_000)
                expect(card.locator("dl.summary")).to_contain_text(value)
            # AND each scan's overlay image has loaded (the browser decoded the PNG)
            for scan_id in ("boxes", "small"):
                page.wait_for_function(
                    """(id) => { const img = document.querySelector(`.scan[data-scan-id="${id}"] img.overlay`);
                                  return img !== null && img.complete && img.naturalWidth > 0; }""",
                    arg=scan_id, timeout=15_000)
            expect(card.locator(".links").first).to_contain_text("DICOM SEG")
            expect(card).to_contain_text("overlay.png")
            shot = Path(os.environ.get("SCANBRIDGE_DASHBOARD_SCREENSHOT", str(tmp_path / "dashboard.png")))
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not console_errors and not failed, (console_errors, failed)
        finally:
            browser.close()
