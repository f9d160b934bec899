"""Safe download of scan files: the SSRF rules every URL passes before a byte is fetched.

Rules: https only (plain http only for a host listed exactly, for local mode); the host must match
SCANBRIDGE_ALLOWED_SCAN_HOSTS; every address the name resolves to must be public (loopback, private,
link-local, reserved, multicast refused) unless the host is listed exactly; the connection goes to the
address that was checked (no DNS rebinding); redirects are re-checked hop by hop; presigned expiry is
checked first; the body is streamed to disk under a size cap; 5xx and connection errors are retried.

Time and encoding: one download (every attempt and redirect together) has a total-time cap
(SCANBRIDGE_DOWNLOAD_TIMEOUT_S) and a minimum rate (SCANBRIDGE_DOWNLOAD_MIN_BYTES_PER_S, averaged
over SCANBRIDGE_DOWNLOAD_RATE_WINDOW_S), so a server trickling a byte every 20 s is cut after one
window, never after read-timeout x attempts. Requests ask for `Accept-Encoding: identity`; a response
with a compressed Content-Encoding is refused before a byte is written (never inflated: a 4 MB gzip
bomb would be GBs on disk), so the bytes on the wire are the bytes on disk and the size cap holds both.

Written on urllib3 (already a botocore dependency) rather than httpx because urllib3 lets us connect
to a pinned IP while keeping SNI and certificate checks on the real host name.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import urllib3

from scanbridge.domain.errors import (
    ScanContentEncodingError,
    ScanDownloadError,
    ScanDownloadTimeoutError,
    ScanTooLargeError,
    ScanUrlExpiredError,
    ScanUrlForbiddenError,
)

log = logging.getLogger(__name__)

ALWAYS_BLOCKED = [ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fd00:ec2::/32"),
                  ipaddress.ip_network("0.0.0.0/8")]
MAX_REDIRECTS = 3
CHUNK = 1024 * 1024

Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (getaddrinfo, so decimal/octal IPv4 spellings resolve too)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ScanDownloadError(f"cannot resolve {host!r}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class FetchPolicy:
    """The SSRF and size rules for one deployment."""

    allowed_hosts: Sequence[str]
    max_bytes: int = 20 * 1024**3
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    attempts: int = 3
    backoff_s: float = 0.5
    parallel: int = 4
    total_timeout_s: float = 3600.0  # one file, every attempt together
    min_bytes_per_s: float = 16 * 1024  # 0: no minimum rate
    rate_window_s: float = 30.0
    resolver: Resolver = field(default=system_resolver, compare=False)


@dataclass(frozen=True)
class Target:
    """A URL that passed the rules, with the address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _listed_exactly(patterns: Sequence[str], host: str, port: int, scheme: str) -> bool:
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            continue
        p_host, _, p_port = pattern.rpartition(":") if _has_port(pattern) else (pattern, "", "")
        if p_host.strip("[]") == host and (int(p_port) if p_port else _default_port(scheme)) == port:
            return True
    return False


def _has_port(pattern: str) -> bool:
    if pattern.startswith("["):
        return "]:" in pattern
    return pattern.count(":") == 1


def _allowed(patterns: Sequence[str], host: str, port: int, scheme: str) -> bool:
    for pattern in patterns:
        if _has_port(pattern):
            p_host, _, p_port = pattern.rpartition(":")
            if p_port.isdigit() and int(p_port) == port and fnmatchcase(host, p_host.strip("[]")):
                return True
        elif port == _default_port(scheme) and fnmatchcase(host, pattern):
            return True
    return False


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in ALWAYS_BLOCKED):
        return False
    return ip.is_global and not ip.is_multicast


def _always_blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in ALWAYS_BLOCKED)


def check_expiry(url: str, now: datetime | None = None) -> None:
    """Raise ScanUrlExpiredError when a presigned URL's X-Amz-Date + X-Amz-Expires has passed."""
    query = {k.lower(): v for k, v in parse_qs(urlsplit(url).query).items()}
    date, expires = query.get("x-amz-date"), query.get("x-amz-expires")
    if not date or not expires:
        return
    try:
        signed = datetime.strptime(date[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        until = signed + timedelta(seconds=int(expires[0]))
    except ValueError:
        return
    if (now or datetime.now(UTC)) > until:
        raise ScanUrlExpiredError(f"the presigned URL expired at {until.isoformat()}",
                                  details={"expired_at": until.isoformat()})


def check_url(url: str, policy: FetchPolicy) -> Target:
    """Apply every SSRF rule to `url`; returns where to connect, or raises ScanUrlForbiddenError."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ScanUrlForbiddenError(f"malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("https", "http") or not host:
        raise ScanUrlForbiddenError(f"scheme {scheme or '(none)'!r} is not allowed; use https")
    if parts.username or parts.password:
        raise ScanUrlForbiddenError("URLs with credentials are not allowed")
    port = port or _default_port(scheme)
    patterns = [p.lower() for p in policy.allowed_hosts]
    exact = _listed_exactly(patterns, host, port, scheme)
    if scheme == "http" and not exact:
        raise ScanUrlForbiddenError("plain http is only allowed for a host listed in SCANBRIDGE_ALLOWED_SCAN_HOSTS")
    if not _allowed(patterns, host, port, scheme):
        raise ScanUrlForbiddenError(f"host {host}:{port} is not in SCANBRIDGE_ALLOWED_SCAN_HOSTS",
                                    details={"host": host, "port": port})
    addresses = policy.resolver(host, port)
    if not addresses:
        raise ScanDownloadError(f"{host!r} resolves to no address")
    for address in addresses:
        if _always_blocked(address) or (not exact and not _is_public(address)):
            raise ScanUrlForbiddenError(f"{host} resolves to a non-public address",
                                        details={"host": host})
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme=scheme, host=host, port=port, path=path, address=addresses[0])


IDENTITY = frozenset({"", "identity"})


def _pool(target: Target, policy: FetchPolicy, left_s: float) -> urllib3.HTTPConnectionPool:
    read = min(policy.read_timeout_s, left_s)
    if policy.min_bytes_per_s > 0:  # a silent server is below any rate: cut it after one window
        read = min(read, policy.rate_window_s)
    timeout = urllib3.Timeout(connect=max(0.1, min(policy.connect_timeout_s, left_s)), read=max(0.1, read))
    retries = urllib3.Retry(total=0, redirect=False, raise_on_status=False)
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(target.address, target.port, timeout=timeout, retries=retries,
                                           server_hostname=target.host, assert_hostname=target.host,
                                           cert_reqs="CERT_REQUIRED", maxsize=1)
    return urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout, retries=retries, maxsize=1)


class SafeFetcher:
    """Downloads scan files under a FetchPolicy."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def fetch(self, url: str, dest: Path) -> Path:
        """Download `url` to `dest`, obeying every rule; returns `dest`."""
        check_expiry(url)
        deadline = time.monotonic() + self.policy.total_timeout_s
        last: Exception | None = None
        for attempt in range(1, max(1, self.policy.attempts) + 1):
            try:
                return self._fetch_once(url, dest, deadline)
            except ScanDownloadError as exc:
                last = exc
                if not exc.details.get("retryable") or attempt == self.policy.attempts:
                    raise
                delay = self.policy.backoff_s * (2 ** (attempt - 1))
                if time.monotonic() + delay >= deadline:
                    raise self._timed_out() from exc
                log.warning("download attempt %d failed (%s); retrying in %.1fs", attempt, exc.message, delay)
                time.sleep(delay)
        raise ScanDownloadError(str(last))  # pragma: no cover - loop always returns or raises

    def fetch_all(self, urls: Sequence[str], dest_dir: Path) -> list[Path]:
        """Download every file of a scan in parallel (bounded); names are indexes, never from URLs."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        for url in urls:
            check_url(url, self.policy)  # refuse the whole series before any byte is fetched
        with ThreadPoolExecutor(max_workers=max(1, min(self.policy.parallel, len(urls)))) as pool:
            futures = [pool.submit(self.fetch, url, dest_dir / f"file-{i:04d}") for i, url in enumerate(urls)]
            return [f.result() for f in futures]

    def _timed_out(self) -> ScanDownloadTimeoutError:
        return ScanDownloadTimeoutError(f"the download took longer than {self.policy.total_timeout_s:g} s",
                                        details={"limit_s": self.policy.total_timeout_s})

    def _fetch_once(self, url: str, dest: Path, deadline: float) -> Path:
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            target = check_url(current, self.policy)
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out()
            pool = _pool(target, self.policy, left)
            host_header = target.host if target.port == _default_port(target.scheme) else f"{target.host}:{target.port}"
            try:
                resp = pool.urlopen("GET", target.path, headers={"Host": host_header, "Accept-Encoding": "identity"},
                                    preload_content=False, decode_content=False, redirect=False,
                                    assert_same_host=False)
            except urllib3.exceptions.HTTPError as exc:
                if time.monotonic() >= deadline:
                    raise self._timed_out() from exc
                raise ScanDownloadError(f"connection to {target.host} failed: {type(exc).__name__}",
                                        details={"retryable": True}) from exc
            try:
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise ScanDownloadError(f"redirect {resp.status} without Location")
                    current = urljoin(current, location)
                    continue
                if resp.status >= 500:
                    raise ScanDownloadError(f"server answered {resp.status}",
                                            details={"retryable": True, "status": resp.status})
                if resp.status == 403 and b"expired" in (resp.read(4096) or b"").lower():
                    raise ScanUrlExpiredError("the storage refused the URL as expired")
                if resp.status != 200:
                    raise ScanDownloadError(f"server answered {resp.status}", details={"status": resp.status})
                return self._stream(resp, dest, deadline)
            finally:
                resp.release_conn()
                pool.close()
        raise ScanUrlForbiddenError(f"more than {MAX_REDIRECTS} redirects")

    def _stream(self, resp: urllib3.BaseHTTPResponse, dest: Path, deadline: float) -> Path:
        encoding = (resp.headers.get("Content-Encoding") or "").strip().lower()
        if encoding not in IDENTITY:
            raise ScanContentEncodingError(f"the server sent Content-Encoding {encoding!r}; only identity is "
                                           "accepted", details={"content_encoding": encoding})
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.policy.max_bytes:
            raise ScanTooLargeError(f"the scan is {int(length)} bytes; the limit is {self.policy.max_bytes}")
        cap, min_rate, window = self.policy.max_bytes, self.policy.min_bytes_per_s, self.policy.rate_window_s
        written = 0
        window_start, window_bytes = time.monotonic(), 0
        tmp = dest.with_suffix(".part")
        try:
            with open(tmp, "wb") as fh:
                while True:
                    # read1: whatever arrived (up to CHUNK), so the clock is checked on a trickle too;
                    # decode_content=False: the raw bytes, never inflated
                    chunk = resp.read1(CHUNK, decode_content=False)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > cap or resp.tell() > cap:  # bytes on disk, bytes on the wire
                        raise ScanTooLargeError(f"the scan exceeds the limit of {cap} bytes")
                    fh.write(chunk)
                    now = time.monotonic()
                    if now >= deadline:
                        raise self._timed_out()
                    if min_rate > 0 and now - window_start >= window:
                        rate = (written - window_bytes) / (now - window_start)
                        if rate < min_rate:
                            raise ScanDownloadTimeoutError(
                                f"the download slowed to {rate:.0f} B/s; the minimum is {min_rate:g} B/s",
                                details={"retryable": True, "bytes_per_s": round(rate, 1)})
                        window_start, window_bytes = now, written
        except urllib3.exceptions.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            if time.monotonic() >= deadline:
                raise self._timed_out() from exc
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError) and min_rate > 0:
                raise ScanDownloadTimeoutError(f"the server sent nothing for {window:g} s",
                                               details={"retryable": True}) from exc
            raise ScanDownloadError(f"download interrupted: {type(exc).__name__}",
                                    details={"retryable": True}) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        return dest
