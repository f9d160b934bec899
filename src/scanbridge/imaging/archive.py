"""Unpack a ZIP of scan files with guards against zip bombs, path traversal and links.

Entries are written flat as ``entry-00000``, ``entry-00001``... (their names inside the archive are
checked, never used), so nothing can land outside the destination and every file of a DICOM series
ends up in one folder, as OpenSlide expects. Formats are then detected from content only.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from scanbridge.domain.errors import CorruptScanError, ScanStorageFullError, UnsafeArchiveError, is_disk_full

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    """The unpacking guards."""

    max_entries: int = 20_000
    max_total_bytes: int = 40 * 1024**3
    max_ratio: float = 1000.0  # uncompressed / compressed, per entry and for the whole archive
    ratio_floor_bytes: int = 1024 * 1024  # entries smaller than this are not ratio-checked


def _unsafe_name(name: str) -> str | None:
    """Why an entry name is unsafe, or None."""
    if "\x00" in name:
        return "a NUL byte in an entry name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "an absolute entry path"
    if ".." in PurePosixPath(norm).parts:
        return "an entry path that leaves the archive (..)"
    return None


def check_archive(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """The file entries to extract; UnsafeArchiveError when the directory breaks a guard."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchiveError(f"the archive has {len(infos)} entries (limit {limits.max_entries})",
                                 details={"entries": len(infos)})
    files: list[zipfile.ZipInfo] = []
    total = compressed = 0
    for info in infos:
        reason = _unsafe_name(info.filename)
        if reason:
            raise UnsafeArchiveError(f"unsafe archive: {reason}", details={"entry": info.filename[:200]})
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError("unsafe archive: it contains a symbolic link",
                                     details={"entry": info.filename[:200]})
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError("the archive has encrypted entries", details={"entry": info.filename[:200]})
        if info.is_dir():
            continue
        if (info.file_size >= limits.ratio_floor_bytes
                and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
            raise UnsafeArchiveError("unsafe archive: an entry's compression ratio is too high",
                                     details={"entry": info.filename[:200], "size": info.file_size,
                                              "compressed": info.compress_size})
        total += info.file_size
        compressed += info.compress_size
        files.append(info)
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(f"the archive unpacks to {total} bytes (limit {limits.max_total_bytes})",
                                 details={"size": total})
    if total >= limits.ratio_floor_bytes and total > limits.max_ratio * max(compressed, 1):
        raise UnsafeArchiveError("unsafe archive: its compression ratio is too high",
                                 details={"size": total, "compressed": compressed})
    return files


def safe_extract(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> list[Path]:
    """Unpack the archive's files flat into `dest` (entry-NNNNN); guards raise UnsafeArchiveError."""
    limits = limits or ArchiveLimits()
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    written = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for n, info in enumerate(check_archive(zf, limits)):
                target = dest / f"entry-{n:05d}"
                size = 0
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        size += len(chunk)
                        written += len(chunk)
                        # the directory's sizes are claims: count what really comes out
                        if size > info.file_size or written > limits.max_total_bytes:
                            raise UnsafeArchiveError("unsafe archive: an entry unpacks to more than it declares",
                                                     details={"entry": info.filename[:200]})
                        dst.write(chunk)
                out.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise CorruptScanError(f"the ZIP archive cannot be read: {exc}") from exc
    except UnsafeArchiveError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if is_disk_full(exc):
            raise ScanStorageFullError("no space left on the disk while unpacking the ZIP") from exc
        raise
    return out
