"""The documentation site: `mkdocs build --strict` builds docs/ offline, every page is in the nav, the
README's links land on real pages, and the built pages load nothing from another host."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly_offline(tmp_path: Path) -> None:
    # GIVEN mkdocs.yml over docs/
    # WHEN the site is built strictly (broken links, pages missing from the nav and warnings fail it)
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    # THEN it succeeds and every page of docs/ became a page of the site
    assert out.returncode == 0, out.stderr[-4000:]
    for page in (REPO / "docs").glob("*.md"):
        built = tmp_path / "site" / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), page.name
        # AND no built page pulls a script or stylesheet from the internet
        html = built.read_text()
        assert not re.search(r'(?:src|href)="https?://(?!www\.mkdocs\.org)', html), page.name


def test_every_page_is_in_the_nav_and_every_readme_link_resolves() -> None:
    # GIVEN the nav and the README
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav = {next(iter(item.values())) for item in config["nav"]}
    # THEN the nav names exactly the pages docs/ holds
    assert nav == {p.name for p in (REPO / "docs").glob("*.md")}
    # AND each relative link the README makes points at a file of the checkout (or beside it)
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert len([link for link in links if link.startswith("docs/")]) >= len(nav) - 1
    for link in links:
        if not link.startswith("http"):
            assert (REPO / link).exists(), link
