"""Client side of scanbridge: an HTTP client of a running bridge, a loopback file server for local scans,
and the `scanbridge submit` / `scanbridge tasks` commands built on them.

Local files: the worker only downloads scans over HTTP(S) through the safe fetcher, which refuses
loopback hosts unless listed exactly in SCANBRIDGE_ALLOWED_SCAN_HOSTS. `submit` therefore serves local
files from a loopback server on a fixed port (`--files-port`, 8902), checks first (GET
/config/available) that the bridge allows that host, and keeps serving until the worker has them.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_FILES_PORT = 8902
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "DELIVERY_FAILED"})


class ClientError(Exception):
    """A bridge answered with its uniform error body (or could not be reached)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def is_url(value: str) -> bool:
    """Whether `value` is an http(s) URL rather than a local path."""
    return value.startswith(("http://", "https://"))


class LocalFileServer:
    """Serves registered local files on loopback behind unguessable, presigned-style URLs (streamed)."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_FILES_PORT, expires_s: int = 3600) -> None:
        self.host = host
        self.port = port
        self.expires_s = expires_s
        self.downloads: list[str] = []
        self._files: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def netloc(self) -> str:
        """host:port, as SCANBRIDGE_ALLOWED_SCAN_HOSTS takes it."""
        return f"{self.host}:{self.port}"

    def add(self, path: Path) -> str:
        """Serve `path`; returns its URL (X-Amz-Date/X-Amz-Expires, so the bridge's expiry check applies)."""
        path = Path(path).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        token = f"{secrets.token_urlsafe(16)}/{path.name}"
        with self._lock:
            self._files[token] = path
        at = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return (f"http://{self.netloc}/scans/{quote(token)}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={at}"
                f"&X-Amz-Expires={self.expires_s}&X-Amz-SignedHeaders=host&X-Amz-Signature={'0' * 64}")

    def start(self) -> Self:
        """Start serving in a daemon thread."""
        files, lock, downloads, expires_s = self._files, self._lock, self.downloads, self.expires_s

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                token = unquote(parts.path.removeprefix("/scans/"))
                with lock:
                    path = files.get(token) if parts.path.startswith("/scans/") else None
                query = parse_qs(parts.query)
                if path is None or not path.is_file():
                    self.send_error(404)
                    return
                try:
                    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                    expired = (datetime.now(UTC) - signed).total_seconds() > expires_s
                except (KeyError, ValueError):
                    expired = True
                if expired:
                    self.send_error(403, "Request has expired")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "binary/octet-stream")
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()
                with open(path, "rb") as fh:
                    shutil.copyfileobj(fh, self.wfile, 1024 * 1024)
                with lock:
                    downloads.append(token)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="scan-files", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def scan_ids(inputs: list[str]) -> list[str]:
    """One readable, unique scan id per input (file stem or the URL's last path segment)."""
    ids: list[str] = []
    for value in inputs:
        stem = Path(urlsplit(value).path).stem if is_url(value) else Path(value).stem
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:64] or "scan"
        name, n = base, 2
        while name in ids:
            name, n = f"{base}-{n}", n + 1
        ids.append(name)
    return ids


def build_webhook(scans: dict[str, str], *, model: str = "", task_id: str = "", company_id: str = "local",
                  case_id: str | None = None) -> dict[str, Any]:
    """A webhook body in the platform's shape for `scans` (scan id -> URL)."""
    return {"task_id": task_id or f"cli-{uuid.uuid4()}", "company_id": company_id, "case_id": case_id,
            "scans": scans, "model_name": model}


def summarize_results(body: dict[str, Any]) -> dict[str, Any]:
    """The readable part of a results body: caseResults and each scan's status, error and summary."""
    scans = []
    for scan in body.get("scanResults") or []:
        results = scan.get("results") or {}
        report = results.get("report") or {}
        scans.append({"scan_id": scan.get("scanId"), "qc_fail_reasons": scan.get("qcFailReasons") or [],
                      "summary": report.get("summary") or {},
                      "features": len((scan.get("geojson") or {}).get("features") or [])})
    return {"case_results": body.get("caseResults") or {}, "scans": scans}


class BridgeClient:
    """The REST API of a running bridge (httpx); errors come back as ClientError with the bridge's code."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, webhook_secret: str | None = None,
                 timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s,
                                  transport=transport)
        self._webhook_secret = webhook_secret
        self.base_url = base_url.rstrip("/")

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError("UNREACHABLE", f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise ClientError(err["code"], err["message"], resp.status_code)
            except (ValueError, KeyError, TypeError):
                raise ClientError("HTTP_ERROR", f"HTTP {resp.status_code}: {resp.text[:200]}",
                                  resp.status_code) from None
        return resp.json()

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /webhook (signed with the Standard Webhooks secret when one is given)."""
        raw = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if self._webhook_secret:
            from standardwebhooks.webhooks import Webhook

            msg_id, at = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
            headers |= {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                        "webhook-signature": Webhook(self._webhook_secret).sign(msg_id, at, raw.decode())}
        result: dict[str, Any] = self._call("POST", "/webhook", content=raw, headers=headers)
        return result

    def task(self, task_id: str) -> dict[str, Any]:
        """GET /tasks/{task_id}."""
        result: dict[str, Any] = self._call("GET", f"/tasks/{quote(task_id, safe='')}")
        return result

    def tasks(self, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        """GET /tasks."""
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        result: dict[str, Any] = self._call("GET", "/tasks", params=params)
        return result

    def cancel(self, task_id: str) -> dict[str, Any]:
        """POST /tasks/{task_id}/cancel."""
        result: dict[str, Any] = self._call("POST", f"/tasks/{quote(task_id, safe='')}/cancel")
        return result

    def scan_metadata(self, task_id: str, scan_id: str) -> dict[str, Any]:
        """GET /tasks/{task_id}/scans/{scan_id}/metadata."""
        result: dict[str, Any] = self._call(
            "GET", f"/tasks/{quote(task_id, safe='')}/scans/{quote(scan_id, safe='')}/metadata")
        return result

    def results(self, task_id: str) -> dict[str, Any]:
        """GET /tasks/{task_id}/results."""
        result: dict[str, Any] = self._call("GET", f"/tasks/{quote(task_id, safe='')}/results")
        return result

    def models(self) -> dict[str, Any]:
        """GET /models."""
        result: dict[str, Any] = self._call("GET", "/models")
        return result

    def capabilities(self) -> dict[str, Any]:
        """GET /config/available."""
        result: dict[str, Any] = self._call("GET", "/config/available")
        return result

    def events(self, task_id: str, timeout_s: float = 900.0) -> Iterator[dict[str, Any]]:
        """Follow GET /tasks/{task_id}/events (SSE) and yield each event until the stream ends."""
        path = f"/tasks/{quote(task_id, safe='')}/events"
        timeout = httpx.Timeout(30.0, read=max(60.0, timeout_s))
        with self._http.stream("GET", path, params={"timeout": timeout_s}, timeout=timeout) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ClientError("HTTP_ERROR", f"HTTP {resp.status_code}: {resp.text[:200]}", resp.status_code)
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])


def follow(client: BridgeClient, task_id: str, *, timeout_s: float, out: Callable[[str], None],
           until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Print the task's events as they come; returns the task once it ended (or `until` said stop)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            for event in client.events(task_id, timeout_s=max(1.0, deadline - time.monotonic())):
                out(describe(event))
                if until is not None and until(client.task(task_id)):
                    return client.task(task_id)
        except (httpx.HTTPError, ClientError) as exc:  # a dropped stream: read the task and go on
            out(f"(event stream interrupted: {exc}; resuming)")
            time.sleep(0.5)
        task = client.task(task_id)
        if task["status"] in TERMINAL:
            return task
    return client.task(task_id)


def describe(event: dict[str, Any]) -> str:
    """One readable line for a live event."""
    if event["type"] == "status":
        p = event["progress"]
        eta = f", ETA {p['eta_s']:.0f} s" if p.get("eta_s") else ""
        return f"[{p['percent']:5.1f}%] task {event['status']}{eta}"
    if event["type"] == "scan":
        tiles = f" {event['tiles_done']}/{event['tiles_total']} tiles" if event.get("tiles_total") else ""
        err = f" {event['error_code']}" if event.get("error_code") else ""
        return (f"[{event['task_progress']['percent']:5.1f}%] scan {event['scan_id']}: {event['status']} "
                f"{event['step']} {event['percent']:.0f}%{tiles}{err}")
    return f"({event['type']})"


def _downloaded(task: dict[str, Any]) -> bool:
    """Every scan has left PENDING/DOWNLOADING (the local file server is no longer needed)."""
    return task["status"] in TERMINAL or all(
        s["status"] not in ("PENDING", "DOWNLOADING") for s in task["scans"].values())


def submit_main(inputs: list[str], *, url: str = DEFAULT_URL, api_key: str | None = None,
                webhook_secret: str | None = None, files_port: int = DEFAULT_FILES_PORT, model: str = "",
                wait: bool = False, timeout: float = 1800.0, task_id: str = "", company_id: str = "local",
                out: Callable[[str], None] = print) -> int:
    """`scanbridge submit`: send files/URLs to a running bridge; with `wait`, follow it to the end.

    Exit 0 accepted (with `wait`: COMPLETED), 1 another end, 2 refused or unreachable, 3 timed out."""
    client = BridgeClient(url, api_key=api_key, webhook_secret=webhook_secret)
    local = [v for v in inputs if not is_url(v)]
    missing = [v for v in local if not Path(v).is_file()]
    if missing:
        out(f"error: no such file: {', '.join(missing)}")
        return 2
    server = LocalFileServer(port=files_port) if local else None
    try:
        if server is not None:
            try:
                allowed = client.capabilities()["limits"]["allowed_scan_hosts"]
            except (ClientError, KeyError) as exc:
                out(f"error: cannot read {url}/config/available: {exc}")
                return 2
            netloc = f"127.0.0.1:{files_port}"
            if netloc not in allowed:
                out(f"error: the bridge does not allow scans from {netloc}. Restart it with "
                    f"SCANBRIDGE_ALLOWED_SCAN_HOSTS={','.join([*allowed, netloc])} (or pass --files-port "
                    "with a port it lists)")
                return 2
            server.start()
        urls = [server.add(Path(v)) if server is not None and not is_url(v) else v for v in inputs]
        body = build_webhook(dict(zip(scan_ids(inputs), urls, strict=True)), model=model or "",
                             task_id=task_id or "", company_id=company_id)
        accepted = client.submit(body)
        task_id = accepted["task_id"]
        out(json.dumps({"task_id": task_id, "status": accepted["status"], "created": accepted["created"]}))
        if not wait and server is None:
            return 0
        if not wait:
            out(f"serving {len(local)} local file(s) from {server.netloc if server else ''} until the worker has them")
            follow(client, task_id, timeout_s=timeout, out=out, until=_downloaded)
            return 0
        task = follow(client, task_id, timeout_s=timeout, out=out)
        if task["status"] not in TERMINAL:
            out(f"timed out after {timeout:.0f} s; the task is {task['status']}")
            return 3
        try:
            summary: dict[str, Any] = summarize_results(client.results(task_id))
        except ClientError as exc:
            summary = {"results": exc.code}
        out(json.dumps({"task_id": task_id, "status": task["status"], "error_code": task.get("error_code"),
                        **summary}, indent=2))
        return 0 if task["status"] == "COMPLETED" else 1
    except ClientError as exc:
        out(f"error: {exc}")
        return 2
    finally:
        if server is not None:
            server.stop()
        client.close()


def tasks_main(*, url: str = DEFAULT_URL, api_key: str | None = None, status: str | None = None, limit: int = 50,
               as_json: bool = False, out: Callable[[str], None] = print) -> int:
    """`scanbridge tasks`: the running bridge's tasks, newest first (a table, or JSON with --json)."""
    client = BridgeClient(url, api_key=api_key)
    try:
        page = client.tasks(status=status, limit=limit)
    except ClientError as exc:
        out(f"error: {exc}")
        return 2
    finally:
        client.close()
    if as_json:
        out(json.dumps(page, indent=2))
        return 0
    out(f"{'TASK':40} {'STATUS':16} {'PROGRESS':>8}  {'STEP':18} {'MODEL':12} CREATED")
    for t in page["tasks"]:
        p = t.get("progress") or {}
        out(f"{t['task_id'][:40]:40} {t['status']:16} {p.get('percent', 0.0):7.1f}%  {str(p.get('step', ''))[:18]:18} "
            f"{str(t.get('model') or '')[:12]:12} {t['created_at']}")
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - the CLI wires the same functions
    """Run `submit` directly (python -m scanbridge.entrypoints.client FILE...)."""
    from scanbridge.entrypoints.cli import main as cli_main

    return cli_main(["submit", *(argv if argv is not None else sys.argv[1:])])
