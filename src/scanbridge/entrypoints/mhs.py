"""`scanbridge mhs`: run as the platform's Model Hosting Service container, one scan per run.

The platform starts the container with everything in the environment (PLATFORM.md section 4):
`HOST`, `TASK_ID`, `SCAN_ID`, `SCAN_URL`, `SCAN_URL_ZIP`, `JWT_TOKEN` (or, for local tests,
`API_KEY_ID` + `API_KEY_SECRET`) and `DEBUG_FILE_UPLOAD_URL`. The scan goes through the same pipeline
as the webhook path (intake -> processing with QC -> delivery), over in-memory stores, and the
container posts the results itself to `https://api.{HOST}` (or `SCANBRIDGE_PLATFORM_URL`).

An API key pair becomes a Bearer the way the platform's own client does it (Techcyte devkit,
`techcyte_client.py`): `POST {api}/api/v3/token` with `Authorization: Basic base64(id:secret)` and
`grant_type=client_credentials`; the answer's `access_token` is the Bearer.

Exit status: 0 when the platform took the results (a scan that failed with a code counts: it was
answered); 1 when the results could not be delivered; 2 when the environment is incomplete; 3 when
SCANBRIDGE_DEVICE=cuda and CUDA does not work (DEVICE_UNAVAILABLE: nothing was downloaded, the platform
was told).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from scanbridge.domain.errors import DeviceUnavailableError, ScanbridgeError
from scanbridge.heap import freeze_heap, gc_paused
from scanbridge.logs import ScrubSecrets, setup_logging

if TYPE_CHECKING:
    from scanbridge.imaging.scan import OpenedScan

log = logging.getLogger("scanbridge.mhs")

REQUIRED = ("HOST", "TASK_ID", "SCAN_ID")
THUMBNAIL_PX = 1024


@dataclass(frozen=True)
class MhsEnv:
    """What the platform passes to the container."""

    host: str
    task_id: str
    scan_id: str
    scan_url: str = ""
    scan_url_zip: str = ""
    jwt_token: str = field(default="", repr=False)
    api_key_id: str = ""
    api_key_secret: str = field(default="", repr=False)
    debug_upload_url: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MhsEnv:
        """Read the environment; raises ValueError naming what is missing."""
        get = {k: (environ.get(k) or "").strip() for k in (
            *REQUIRED, "SCAN_URL", "SCAN_URL_ZIP", "JWT_TOKEN", "API_KEY_ID", "API_KEY_SECRET",
            "DEBUG_FILE_UPLOAD_URL")}
        missing = [k for k in REQUIRED if not get[k]]
        if not get["SCAN_URL"] and not get["SCAN_URL_ZIP"]:
            missing.append("SCAN_URL (or SCAN_URL_ZIP)")
        if missing:
            raise ValueError("missing environment variables: " + ", ".join(missing))
        return cls(host=get["HOST"], task_id=get["TASK_ID"], scan_id=get["SCAN_ID"], scan_url=get["SCAN_URL"],
                   scan_url_zip=get["SCAN_URL_ZIP"], jwt_token=get["JWT_TOKEN"], api_key_id=get["API_KEY_ID"],
                   api_key_secret=get["API_KEY_SECRET"], debug_upload_url=get["DEBUG_FILE_UPLOAD_URL"])

    def scan_file_url(self) -> str:
        """SCAN_URL_ZIP for DICOM (every layer in one ZIP), else SCAN_URL."""
        path = urlsplit(self.scan_url).path.lower()
        if self.scan_url_zip and (not self.scan_url or path.endswith((".dcm", ".dicom"))):
            return self.scan_url_zip
        return self.scan_url or self.scan_url_zip


def api_base_url(env: MhsEnv, platform_url: str) -> str:
    """Where results go: SCANBRIDGE_PLATFORM_URL when set, else https://api.{HOST}."""
    return platform_url.rstrip("/") if platform_url else f"https://api.{env.host.strip('/')}"


def exchange_api_key(base_url: str, key_id: str, secret: str, *, timeout_s: float = 30.0) -> str:
    """The Bearer for an API key pair (OAuth2 client credentials at {base}/api/v3/token)."""
    basic = base64.b64encode(f"{key_id}:{secret}".encode()).decode()
    resp = httpx.post(f"{base_url}/api/v3/token", data={"grant_type": "client_credentials"}, timeout=timeout_s,
                      headers={"Authorization": f"Basic {basic}", "Accept": "application/json"})
    if resp.status_code != 200:
        raise ScanbridgeError(f"the platform refused the API key pair ({resp.status_code})")
    token = resp.json().get("access_token")
    if not isinstance(token, str) or not token:
        raise ScanbridgeError("the platform's token answer has no access_token")
    return token


class _LogCapture(logging.Handler):
    """Keeps the run's log lines (secrets scrubbed) for the debug ZIP."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.addFilter(ScrubSecrets())
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class _Snapshot:
    """The scan the worker opened, kept for the debug overlay (its overview outlives the closed scan)."""

    scan: OpenedScan | None = None

    def open(self, paths: list[Path]) -> OpenedScan:
        """The ScanOpener the processing uses: OpenedScan.open, remembered."""
        from scanbridge.imaging.scan import OpenedScan

        self.scan = OpenedScan.open(paths)
        return self.scan

    def thumbnail(self) -> tuple[Any, float] | None:
        """The scan's thumbnail from the overview QC and the analysis read (None when never read)."""
        if self.scan is None:
            return None
        try:
            return self.scan.thumbnail(THUMBNAIL_PX)
        except ValueError:  # closed before anything read its overview (the scan failed first)
            return None


def debug_zip(files: dict[str, bytes]) -> bytes:
    """A ZIP of `files` (name -> bytes)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def run(environ: Mapping[str, str]) -> int:
    """Process the one scan the environment names and post its results; the exit status."""
    from scanbridge.adapters.local.memory import MemoryJobLauncher
    from scanbridge.bootstrap import build_processing, in_memory
    from scanbridge.config import Settings
    from scanbridge.domain.storage_keys import posted_key
    from scanbridge.domain.webhook import WebhookPayload

    capture = _LogCapture()
    logging.getLogger().addHandler(capture)
    try:
        settings = Settings()
        setup_logging("scanbridge-mhs", settings.log_level, settings.log_format)
        try:
            env = MhsEnv.from_env(environ)
        except ValueError as exc:
            log.error("%s", exc)
            print(f"scanbridge mhs: {exc}", file=sys.stderr)
            return 2
        base = api_base_url(env, settings.platform_url)
        api_key = settings.platform_api_key
        if not env.jwt_token and env.api_key_id and env.api_key_secret:
            try:
                api_key = exchange_api_key(base, env.api_key_id, env.api_key_secret,
                                           timeout_s=settings.delivery_timeout_s)
                log.info("API key pair exchanged for a token")
            except (ScanbridgeError, httpx.HTTPError, ValueError) as exc:
                log.error("API key exchange failed: %s",
                          exc.message if isinstance(exc, ScanbridgeError) else type(exc).__name__)
        # one scan, one run: its delivery is the burst only (nothing would run a retry scheduled for later)
        settings = settings.model_copy(update={"platform_url": base, "platform_api_key": api_key,
                                               "delivery_retry_window_s": 0.0})
        # this process is the worker: its launcher starts nothing (the job is named after the task)
        container = in_memory(settings, launcher=MemoryJobLauncher(lambda task_id, _n: f"mhs-{task_id}"))
        url = env.scan_file_url()
        payload = WebhookPayload.model_validate({
            "task_id": env.task_id, "scans": {env.scan_id: url}, "scan_urls": {env.scan_id: [url]},
            "jwt_token": env.jwt_token or None})
        container.intake.accept(payload)
        snapshot = _Snapshot()
        log.info("processing scan %s of task %s", env.scan_id, env.task_id)
        with gc_paused():  # the worker side's imports (scanbridge/heap.py)
            processing = build_processing(container, opener=snapshot.open)
        freeze_heap()
        processing.run(env.task_id)
        task = container.delivery.on_job_finished(env.task_id, True)
        delivered = task.delivery.delivered_at is not None
        log.info("task %s: %s (delivered: %s, platform answered %s)", env.task_id, task.status, delivered,
                 task.delivery.status_code)
        if env.debug_upload_url:
            raw = container.artifacts.get(posted_key(env.task_id))
            body = json.loads(raw) if raw else container.delivery.results_body(task).parsed()
            _upload_debug(env, body, snapshot, capture, task.public_view(), settings.delivery_timeout_s)
        print(json.dumps({"task_id": env.task_id, "scan_id": env.scan_id, "status": str(task.status),
                          "delivered": delivered, "status_code": task.delivery.status_code,
                          "error_code": task.error_code}))
        if task.error_code == DeviceUnavailableError.code:
            log.error("the container could not use its device: %s", task.error_message)
            print(f"scanbridge mhs: {task.error_code}: {task.error_message}", file=sys.stderr)
            return 3
        return 0 if delivered else 1
    finally:
        logging.getLogger().removeHandler(capture)


def _upload_debug(env: MhsEnv, body: dict[str, Any], snapshot: _Snapshot, capture: _LogCapture,
                  task: dict[str, Any], timeout_s: float) -> None:
    files: dict[str, bytes] = {"results.json": json.dumps(body, indent=2).encode(),
                               "task.json": json.dumps(task, indent=2).encode()}
    scan: dict[str, Any] = next((s for s in body.get("scanResults", []) if s.get("scanId") == env.scan_id), {})
    thumbnail = snapshot.thumbnail()
    if thumbnail is not None:
        try:
            from scanbridge.exports.overlay import render_overlay

            files["overlay.png"] = render_overlay(*thumbnail, scan.get("geojson"))
        except Exception:
            log.warning("overlay not drawn", exc_info=True)
    try:
        log.info("uploading the debug ZIP")
        files["log.txt"] = ("\n".join(capture.lines) + "\n").encode()
        resp = httpx.put(env.debug_upload_url, content=debug_zip(files), timeout=timeout_s,
                         headers={"Content-Type": "application/zip"})
        if resp.status_code >= 300:
            log.warning("debug ZIP upload answered %s", resp.status_code)
    except httpx.HTTPError as exc:
        log.warning("debug ZIP upload failed: %s", type(exc).__name__)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `scanbridge mhs` (everything comes from the environment)."""
    return run(os.environ)


if __name__ == "__main__":
    sys.exit(main())
