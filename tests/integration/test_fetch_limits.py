"""Download time caps, minimum rate and compressed encodings, against real loopback HTTP servers."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from scanbridge.client.files import LoopbackServer
from scanbridge.domain.errors import ScanContentEncodingError, ScanDownloadTimeoutError, ScanTooLargeError
from scanbridge.imaging.fetch import FetchPolicy, SafeFetcher

Handler = Callable[[BaseHTTPRequestHandler], None]


class Scripted(LoopbackServer):
    """Answers every GET with `handle` (HTTP/1.1: chunked bodies allowed); records each request's headers."""

    protocol_version = "HTTP/1.1"

    def __init__(self, handle: Handler) -> None:
        super().__init__()
        self.handle = handle
        self.seen: list[dict[str, str]] = []

    def handle_get(self, request: BaseHTTPRequestHandler) -> None:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        self.handle(request)


@contextmanager
def serving(handle: Handler) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback server answering every GET with `handle`; yields its base URL and each request's headers."""
    with Scripted(handle) as server:
        yield server.base_url, server.seen


def _policy(base: str, **kw: float) -> FetchPolicy:
    return FetchPolicy(allowed_hosts=[base.removeprefix("http://")], backoff_s=0.01, **kw)  # type: ignore[arg-type]


def test_a_trickle_is_cut_by_the_minimum_rate_not_by_read_timeout_times_attempts(tmp_path: Path) -> None:
    # GIVEN a server that announces 1 MB and sends one byte every 0.1 s (each read is well within the read timeout)
    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 20))
        h.end_headers()
        for _ in range(1 << 20):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.1)

    with serving(trickle) as (base, seen):
        fetcher = SafeFetcher(_policy(base, min_bytes_per_s=1000, rate_window_s=0.5, read_timeout_s=60,
                                      attempts=3, total_timeout_s=30))
        # WHEN fetched
        t0 = time.monotonic()
        with pytest.raises(ScanDownloadTimeoutError) as err:
            fetcher.fetch(f"{base}/slow.svs", tmp_path / "slow")
        took = time.monotonic() - t0
    # THEN it fails as SCAN_DOWNLOAD_TIMEOUT, cut by the rate window on each attempt (~1.5 s in all; the total
    # cap would take 30 s, the read timeout 60 s: under 15 s is the rate window whatever the load), no partial file
    assert err.value.code == "SCAN_DOWNLOAD_TIMEOUT"
    assert len(seen) == 3 and took < 15, (len(seen), took)
    assert list(tmp_path.iterdir()) == []


def test_the_total_time_cap_holds_across_attempts(tmp_path: Path) -> None:
    # GIVEN a server fast enough for the minimum rate but endless (10 kB every 0.05 s)
    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 30))
        h.end_headers()
        while True:
            h.wfile.write(b"y" * 10_000)
            h.wfile.flush()
            time.sleep(0.05)

    with serving(endless) as (base, _seen):
        fetcher = SafeFetcher(_policy(base, min_bytes_per_s=1000, rate_window_s=0.5, total_timeout_s=1.5,
                                      attempts=3))
        # WHEN fetched
        t0 = time.monotonic()
        with pytest.raises(ScanDownloadTimeoutError) as err:
            fetcher.fetch(f"{base}/endless.svs", tmp_path / "e")
        took = time.monotonic() - t0
    # THEN cut at the total cap (not retried past it)
    assert err.value.details["limit_s"] == 1.5
    assert 1.4 < took < 10.0, took  # an endless body with no cap would never end: any bound shows the cut


def test_a_gzip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # GIVEN a server that answers with Content-Encoding gzip: 4 MB on the wire, 4 GB inflated
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9) * 64  # concatenated members: 4 GiB inflated

    def gzipped(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(bomb)))
        h.end_headers()
        h.wfile.write(bomb)

    with serving(gzipped) as (base, seen):
        fetcher = SafeFetcher(_policy(base, attempts=3))
        # WHEN fetched
        with pytest.raises(ScanContentEncodingError) as err:
            fetcher.fetch(f"{base}/bomb.svs", tmp_path / "bomb")
    # THEN refused once (not retried), identity was asked for, and nothing is on disk
    assert err.value.code == "SCAN_CONTENT_ENCODING_REFUSED" and err.value.details["content_encoding"] == "gzip"
    assert len(seen) == 1 and seen[0]["accept-encoding"] == "identity"
    assert list(tmp_path.iterdir()) == []


def test_the_size_cap_counts_the_bytes_on_the_wire_of_a_chunked_body(tmp_path: Path) -> None:
    # GIVEN a chunked answer without Content-Length, larger than the cap
    def chunked(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for _ in range(50):
            h.wfile.write(b"2710\r\n" + b"z" * 10_000 + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    with serving(chunked) as (base, _seen):
        small = SafeFetcher(_policy(base, attempts=1, max_bytes=100_000))
        # WHEN fetched under a 100 kB cap / THEN SCAN_TOO_LARGE and no partial file
        with pytest.raises(ScanTooLargeError):
            small.fetch(f"{base}/big.svs", tmp_path / "big")
        assert list(tmp_path.iterdir()) == []
        # AND under a larger cap the same body arrives byte-exact
        path = SafeFetcher(_policy(base, attempts=1)).fetch(f"{base}/big.svs", tmp_path / "ok")
        assert path.read_bytes() == b"z" * 500_000
