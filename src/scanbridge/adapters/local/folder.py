"""Artifacts as files in a folder (`scanbridge run-scan`'s output): each written as it is made, none kept in memory."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import IO


class FolderArtifactStore:
    """The keys under `prefix` as files under `root` (the rest of the key is the file's path in it);
    `written` lists the keys this store wrote (files already in the folder are listed, not written)."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self._root = root
        self._prefix = prefix
        self._lock = threading.Lock()
        self.written: list[str] = []

    def _wrote(self, key: str) -> None:
        with self._lock:
            if key not in self.written:
                self.written.append(key)

    def path(self, key: str) -> Path:
        """The file a key is stored in; ValueError for a key outside the prefix or the folder."""
        rel = key[len(self._prefix):] if key.startswith(self._prefix) else ""
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"key {key!r} is not a file under {self._prefix!r}")
        return self._root.joinpath(*parts)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write `data` to the key's file."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self._wrote(key)

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str = "application/octet-stream") -> None:
        """Copy the rest of `fileobj` to the key's file, in chunks."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            shutil.copyfileobj(fileobj, out)
        self._wrote(key)

    def get(self, key: str) -> bytes | None:
        """The file's bytes, or None."""
        try:
            return self.path(key).read_bytes()
        except (OSError, ValueError):
            return None

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` that has a file."""
        if not self._root.is_dir():
            return []
        keys = (self._prefix + p.relative_to(self._root).as_posix() for p in self._root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix))

    def url(self, key: str, expires_s: int = 3600) -> str:
        """The file's file:// URL."""
        return self.path(key).resolve().as_uri()
