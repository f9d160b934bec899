"""Safe download: the SSRF rules, expiry, size cap and retries, against a real loopback server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scanbridge.devtools.local_platform import FakePlatform
from scanbridge.domain.errors import (
    ScanDownloadError,
    ScanTooLargeError,
    ScanUrlExpiredError,
    ScanUrlForbiddenError,
)
from scanbridge.imaging.fetch import FetchPolicy, SafeFetcher, check_url
from tests.conftest import fixture_path

S3 = ["*.s3.amazonaws.com", "*.s3.*.amazonaws.com"]


def _resolver(mapping: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, _port: int) -> list[str]:
        return mapping.get(host, ["52.92.1.1"])
    return resolve


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "https://169.254.169.254/latest/meta-data/",
    "https://127.0.0.1/x", "https://2130706433/x", "https://0177.0.0.1/x", "https://[::ffff:127.0.0.1]/x",
    "https://[::1]/x", "file:///etc/passwd", "ftp://bucket.s3.amazonaws.com/x", "gopher://x",
    "http://bucket.s3.amazonaws.com/x",            # plain http to an allowed host
    "https://evil.example.com/x",                   # not in the allowlist
    "https://user:pw@bucket.s3.amazonaws.com/x",    # credentials
    "https://bucket.s3.amazonaws.com:8443/x",       # another port
])
def test_forbidden_urls_are_refused(url: str) -> None:
    # GIVEN the production allowlist / WHEN a hostile URL is checked / THEN it is refused
    policy = FetchPolicy(allowed_hosts=[*S3, "*"] if "evil" not in url else S3)
    with pytest.raises(ScanUrlForbiddenError):
        check_url(url, policy)


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    # GIVEN an allowed name that resolves to a private address (DNS rebinding or a hostile record)
    policy = FetchPolicy(allowed_hosts=S3, resolver=_resolver({"bucket.s3.amazonaws.com": ["10.0.0.5"]}))
    # WHEN checked / THEN refused
    with pytest.raises(ScanUrlForbiddenError):
        check_url("https://bucket.s3.amazonaws.com/scan.svs", policy)
    # AND a public answer is accepted and pinned
    ok = FetchPolicy(allowed_hosts=S3, resolver=_resolver({}))
    target = check_url("https://bucket.s3.us-west-2.amazonaws.com/k?X-Amz-Expires=1", ok)
    assert target.address == "52.92.1.1" and target.host == "bucket.s3.us-west-2.amazonaws.com"


def test_expired_presigned_url_is_refused_before_any_connection(tmp_path: Path) -> None:
    # GIVEN a loopback platform and a URL signed two hours ago for one hour
    with FakePlatform(files={"a": fixture_path("small.svs")}) as platform:
        url = platform.url_for("a", expires_s=3600, signed_at=datetime.now(UTC) - timedelta(hours=2))
        fetcher = SafeFetcher(FetchPolicy(allowed_hosts=[platform.netloc]))
        # WHEN fetched / THEN SCAN_URL_EXPIRED and the server saw nothing
        with pytest.raises(ScanUrlExpiredError):
            fetcher.fetch(url, tmp_path / "f")
        assert platform.downloads == []


def test_listed_loopback_host_downloads_byte_exact(tmp_path: Path) -> None:
    # GIVEN a loopback host listed exactly (local mode) serving two files of a series
    files = {"a": fixture_path("boxes_0.dcm"), "b": fixture_path("boxes_1.dcm")}
    with FakePlatform(files=files) as platform:
        fetcher = SafeFetcher(FetchPolicy(allowed_hosts=[platform.netloc]))
        # WHEN fetched in parallel
        paths = fetcher.fetch_all([platform.url_for("a"), platform.url_for("b")], tmp_path / "scan")
        # THEN both arrive, byte-exact, under names that do not come from the URL
        assert [p.name for p in paths] == ["file-0000", "file-0001"]
        assert paths[0].read_bytes() == files["a"].read_bytes() and paths[1].read_bytes() == files["b"].read_bytes()
        # AND another port of the same host is still refused
        other = platform.url_for("a").replace(f":{platform.port}", f":{platform.port + 1}")
        with pytest.raises(ScanUrlForbiddenError):
            fetcher.fetch(other, tmp_path / "g")


def test_size_cap_and_http_errors(tmp_path: Path) -> None:
    # GIVEN a file larger than the cap, and a missing file
    with FakePlatform(files={"big": fixture_path("boxes.tiff")}) as platform:
        small_cap = SafeFetcher(FetchPolicy(allowed_hosts=[platform.netloc], max_bytes=1000, attempts=1))
        # WHEN fetched / THEN SCAN_TOO_LARGE and no partial file is left
        with pytest.raises(ScanTooLargeError):
            small_cap.fetch(platform.url_for("big"), tmp_path / "big")
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(ScanDownloadError) as err:
            small_cap.fetch(platform.url_for("missing"), tmp_path / "m")
        assert err.value.details.get("status") == 404


def test_connection_errors_are_retried_then_reported(tmp_path: Path) -> None:
    # GIVEN a listed loopback port where nothing listens
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetcher = SafeFetcher(FetchPolicy(allowed_hosts=[f"127.0.0.1:{port}"], attempts=2, backoff_s=0.01))
    # WHEN fetched / THEN a retryable download error after the attempts
    with pytest.raises(ScanDownloadError) as err:
        fetcher.fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x")
    assert err.value.code == "SCAN_DOWNLOAD_FAILED" and err.value.details.get("retryable")


def test_redirects_are_rechecked_hop_by_hop(tmp_path: Path) -> None:
    # GIVEN a listed loopback server that redirects to the metadata service, to a private address, and to
    # another loopback port that is not listed
    from http.server import BaseHTTPRequestHandler

    from scanbridge.client.files import LoopbackServer

    targets = {"/meta": "http://169.254.169.254/latest/meta-data/", "/private": "https://10.1.2.3/scan",
               "/other": "http://127.0.0.1:1/scan"}
    hits: list[str] = []

    class Redirector(LoopbackServer):
        def handle_get(self, request: BaseHTTPRequestHandler) -> None:
            hits.append(request.path)
            request.send_response(302)
            request.send_header("Location", targets[request.path])
            request.send_header("Content-Length", "0")
            request.end_headers()

    with Redirector() as server:
        port = server.port
        fetcher = SafeFetcher(FetchPolicy(allowed_hosts=[f"127.0.0.1:{port}", "*.amazonaws.com"], attempts=1))
        # WHEN each is fetched / THEN the hop is refused before any connection to it, nothing is written
        for path in targets:
            with pytest.raises(ScanUrlForbiddenError):
                fetcher.fetch(f"http://127.0.0.1:{port}{path}", tmp_path / "x")
        assert sorted(hits) == sorted(targets) and list(tmp_path.iterdir()) == []
