"""Local state that survives restarts: a write-ahead journal of the moto server's changing requests.

`scanbridge serve` keeps its tasks, artifacts, models and key in a moto server. This module wraps
moto's WSGI app: every request that can change state (DynamoDB/S3/SQS/KMS writes) is applied under
one lock and, when moto answered 2xx, appended to `{state_dir}/journal-<gen>.bin` with a single
`os.write` BEFORE the answer goes back. The API acknowledges a webhook only after its conditional
put returned, so an acknowledged task is in the journal: a SIGKILL of any process at any moment loses
nothing the kernel was given (`fsync=True` also survives a power cut, at ~1-10 ms a write).
Failed requests (a lost conditional write) are not journalled: they changed nothing.

At start the newest snapshot (pickled DynamoDB / S3 / SQS backends) is loaded and the journal of
its generation replayed through the same app in-process, in the order the writes were applied, then
a new snapshot is taken and a fresh journal begun (compaction: heartbeats do not pile up; also while
running, under the write lock, each time the journal reaches COMPACT_BYTES). KMS keys
cannot be pickled (their RSA objects), and moto draws key material from os.urandom: a CreateKey is
journalled with the id and material moto gave it, and replayed with the same (so task JWTs encrypted
before a restart still decrypt). A torn last record (killed mid-write: never acknowledged) is dropped.
Other ids moto draws at random are not reproduced: S3 multipart upload ids and SQS receipt handles (a
replayed UploadPart / DeleteMessage would miss); the adapters use `put_object`, and the local stack's
dead letters are files, so neither occurs here.

Hand-written rather than moto's recorder (`MOTO_ENABLE_RECORDING`): that one records every request,
reads included, before it is applied and whether or not it succeeded, in two unlocked writes per entry
(lines can interleave across threads), replays over HTTP, and cannot replay a KMS key.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pickle
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

log = logging.getLogger(__name__)

#: operations (after the X-Amz-Target's dot) that only read; every other POST/PUT/DELETE is journalled
READ_ONLY_PREFIXES = ("Get", "List", "Describe", "Query", "Scan", "BatchGet")
READ_ONLY_OPS = frozenset({"Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
                           "GenerateRandom", "ReEncrypt", "Sign", "Verify", "GenerateMac", "VerifyMac"})
_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
#: a journal this long is folded into a new snapshot while the server runs (heartbeats add up over days)
COMPACT_BYTES = 64 * 1024 * 1024
#: how long a new server waits for the state folder's lock (its predecessor may still be exiting)
LOCK_WAIT_S = 5.0

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _operation(environ: dict[str, Any]) -> str | None:
    target = environ.get("HTTP_X_AMZ_TARGET") or ""
    return target.rsplit(".", 1)[-1] if target else None


def _is_kms(environ: dict[str, Any]) -> bool:
    return str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("TrentService.")


def changes_state(environ: dict[str, Any]) -> bool:
    """Whether a request can change moto's state (and so must be journalled)."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    if method in ("GET", "HEAD", "OPTIONS") or environ.get("PATH_INFO", "").startswith("/moto-api"):
        return False
    op = _operation(environ)
    if op is None:
        return True  # S3 (REST) and query-protocol writes
    return not (op in READ_ONLY_OPS or op.startswith(READ_ONLY_PREFIXES))


def _encode_record(record: dict[str, Any], body: bytes) -> bytes:
    head = json.dumps(record, separators=(",", ":")).encode()
    payload = struct.pack("<I", len(head)) + head + body
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> Iterator[tuple[dict[str, Any], bytes]]:
    """The journal's complete records in order; stops at a torn or corrupt tail."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        while True:
            header = fh.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            length, crc = _HEADER.unpack(header)
            payload = fh.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                log.warning("journal %s ends with a torn record (never acknowledged); dropped", path.name)
                return
            (head_len,) = struct.unpack_from("<I", payload)
            yield json.loads(payload[4:4 + head_len]), payload[4 + head_len:]


def _backend_dicts() -> dict[str, Any]:
    """moto's per-account, per-region backends of the services a snapshot holds."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.s3.models import s3_backends
    from moto.sqs.models import sqs_backends

    return {"dynamodb": dynamodb_backends, "s3": s3_backends, "sqs": sqs_backends}


def _find_kms_key(key_id: str) -> Any:
    from moto.kms.models import kms_backends

    for account in list(kms_backends):
        for region in list(kms_backends[account]):
            key = kms_backends[account][region].keys.get(key_id)
            if key is not None:
                return key
    return None


@contextmanager
def _same_kms_key(key_id: str | None, material: bytes | None) -> Iterator[None]:
    """Make moto's next CreateKey reuse a recorded id and key material."""
    if key_id is None or material is None:
        yield
        return
    with mock.patch("moto.kms.models.generate_key_id", return_value=key_id), \
            mock.patch("moto.kms.models.generate_master_key", return_value=material):
        yield


class StateJournal:
    """Journals moto's changing requests under `state_dir` and restores them at start (see the module)."""

    def __init__(self, state_dir: Path, *, fsync: bool = False, compact_bytes: int = COMPACT_BYTES) -> None:
        self._dir = state_dir
        self._fsync = fsync
        self._compact_bytes = compact_bytes
        self._written = 0
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._kms_records: list[tuple[dict[str, Any], bytes]] = []
        self._app: WsgiApp | None = None
        self.generation = 0
        self.replayed = 0

    # ------------------------------------------------------------------ paths
    def _journal_path(self, gen: int) -> Path:
        return self._dir / f"journal-{gen:06d}.bin"

    def _snapshot_path(self, gen: int) -> Path:
        return self._dir / f"snapshot-{gen:06d}.pickle"

    def _generations(self) -> list[int]:
        gens = []
        for p in self._dir.glob("snapshot-*.pickle"):
            try:
                gens.append(int(p.stem.split("-")[1]))
            except (IndexError, ValueError):
                continue
        return sorted(gens)

    # ------------------------------------------------------------------ restore
    def restore(self, app: WsgiApp) -> int:
        """Load the newest snapshot, replay its journal into `app`, compact; returns the records replayed."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._hold_folder()
        self._app = app
        gens = self._generations()
        gen = gens[-1] if gens else 0
        if gens:
            self._load_snapshot(self._snapshot_path(gen))
        replayed = 0
        for record, body in read_records(self._journal_path(gen)):
            self._apply(record, body)
            replayed += 1
        self.replayed = replayed
        self._snapshot(gen + 1)
        self._open_journal(gen + 1)
        for old in gens:
            if old <= gen:
                self._snapshot_path(old).unlink(missing_ok=True)
        for old in range(gen + 1):
            self._journal_path(old).unlink(missing_ok=True)
        log.info("state restored: generation %d, %d journal records replayed", gen, replayed)
        return replayed

    def _load_snapshot(self, path: Path) -> None:
        with open(path, "rb") as fh:
            data: dict[str, Any] = pickle.load(fh)
        for service, accounts in data["backends"].items():
            backends = _backend_dicts()[service]
            for account, regions in accounts.items():
                for region, backend in regions.items():
                    backends[account][region] = backend
        for record, body in data.get("kms", []):
            self._apply(record, body)

    def _snapshot(self, gen: int) -> None:
        backends: dict[str, dict[str, dict[str, Any]]] = {}
        for service, accounts in _backend_dicts().items():
            backends[service] = {account: dict(accounts[account].items()) for account in list(accounts)
                                 if len(accounts[account])}
        data = {"backends": backends, "kms": self._kms_records}
        tmp = self._snapshot_path(gen).with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._snapshot_path(gen))

    def _hold_folder(self) -> None:
        """One moto server per state folder: a second `scanbridge serve` on the same data dir is refused."""
        import fcntl

        fd = os.open(self._dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_WAIT_S  # a killed predecessor may take a moment to exit
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(f"{self._dir} is in use by another scanbridge serve (one per "
                                       "SCANBRIDGE_DATA_DIR: stop that one, or start this one from another "
                                       "folder or with another SCANBRIDGE_DATA_DIR)") from exc
                time.sleep(0.1)
        self._lock_fd = fd  # held until the process ends

    def _open_journal(self, gen: int) -> None:
        """Start the (empty) journal of generation `gen`, whose snapshot is already written."""
        fd = os.open(self._journal_path(gen), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.ftruncate(fd, 0)
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        old, self._fd, self.generation, self._written = self._fd, fd, gen, 0
        if old is not None:
            os.close(old)

    def _compact(self) -> None:
        """Snapshot the state now and start a new journal (called under the write lock, so nothing is missed)."""
        old = self.generation
        try:
            self._snapshot(old + 1)
        except Exception:  # keep journalling on the current generation; try again later
            log.exception("state snapshot failed; the journal goes on")
            self._snapshot_path(old + 1).with_suffix(".tmp").unlink(missing_ok=True)
            self._written = 0
            return
        self._open_journal(old + 1)
        self._snapshot_path(old).unlink(missing_ok=True)
        self._journal_path(old).unlink(missing_ok=True)
        log.info("state compacted into generation %d", old + 1)

    def _apply(self, record: dict[str, Any], body: bytes) -> None:
        """Replay one journalled request into the app (a KMS CreateKey with its recorded id and material)."""
        app = self._app
        assert app is not None
        material = base64.b64decode(record["kms_material"]) if record.get("kms_material") else None
        environ = dict(record["environ"])
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.setdefault("wsgi.url_scheme", "http")
        environ.setdefault("wsgi.errors", io.StringIO())
        statuses: list[str] = []
        with _same_kms_key(record.get("kms_key_id"), material):
            result = app(environ, lambda status, _headers, _exc=None: statuses.append(status))
            try:
                b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close:
                    close()
        if _is_kms(environ):
            self._kms_records.append((record, body))
        if statuses and not statuses[0].startswith("2"):
            log.warning("replayed %s %s answered %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                        statuses[0])

    # ------------------------------------------------------------------ recording
    def _append(self, record: dict[str, Any], body: bytes) -> None:
        assert self._fd is not None, "restore() first"
        data = _encode_record(record, body)
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        if self._fsync:
            os.fsync(self._fd)
        self._written += written
        if self._compact_bytes and self._written >= self._compact_bytes:
            self._compact()

    def wrap(self, app: WsgiApp) -> WsgiApp:
        """`app` with every successful changing request journalled before it is answered."""

        def journalled(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            if not changes_state(environ):
                return app(environ, start_response)
            body = environ["wsgi.input"].read()
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            captured: list[tuple[str, list[tuple[str, str]]]] = []

            def capture(status: str, headers: list[tuple[str, str]], _exc: Any = None) -> Callable[[bytes], None]:
                captured.append((status, headers))
                return lambda _data: None

            with self._lock:  # apply and journal in one order
                result = app(environ, capture)
                try:
                    out = b"".join(result)
                finally:
                    close = getattr(result, "close", None)
                    if close:
                        close()
                status, headers = captured[0]
                if status.startswith("2"):
                    record: dict[str, Any] = {"environ": {k: v for k, v in environ.items()
                                                          if isinstance(v, str) and k != "CONTENT_LENGTH"}}
                    if _operation(environ) == "CreateKey":
                        key_id = json.loads(out)["KeyMetadata"]["KeyId"]
                        key = _find_kms_key(key_id)
                        if key is not None:
                            record["kms_key_id"] = key_id
                            record["kms_material"] = base64.b64encode(key.key_material).decode()
                    if _is_kms(environ):
                        self._kms_records.append((record, body))
                    self._append(record, body)
            start_response(status, headers)
            return [out]

        return journalled
