"""/docs and /redoc work without internet: every script and stylesheet they load is served by the app."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from scanbridge.bootstrap import Container
from scanbridge.entrypoints.http.app import create_app


def test_docs_pages_load_only_assets_the_app_serves(container: Container) -> None:
    # GIVEN the app (the local stack's: fastapi-offline installed with [local])
    client = TestClient(create_app(container))
    for page in ("/docs", "/redoc"):
        # WHEN the page is fetched
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r'(?:src|href|url)\s*[=:]\s*["\']([^"\']+)["\']', html.text)
        # THEN it names no host (no CDN, no Google fonts) and every asset it loads answers 200 with content
        assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
        for url in urls:
            if url.startswith("/docs-assets/"):
                asset = client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
    # AND the OpenAPI document they read is there
    assert client.get("/openapi.json").json()["info"]["title"] == "scanbridge"
