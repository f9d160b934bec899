"""Scan readers behind one ScanReader contract; `open_scan()` picks one from the files' content."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scanbridge.domain.errors import UnsupportedFormatError
from scanbridge.imaging.readers.base import ScanMetadata, ScanReader, best_level

__all__ = ["ScanMetadata", "ScanReader", "best_level", "detect_format", "open_scan"]


def detect_format(path: Path) -> str:
    """The file's format from its first bytes: tiff, dicom, zip or unknown (never from a name)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return "unknown"


def open_scan(paths: Sequence[Path]) -> ScanReader:
    """Open a scan made of one or more files with the reader that fits their content."""
    if not paths:
        raise UnsupportedFormatError("the scan has no files")
    kinds = [detect_format(p) for p in paths]
    if kinds[0] == "tiff":
        from scanbridge.imaging.readers.openslide_reader import OpenSlideReader

        return OpenSlideReader(paths[0])
    if "dicom" in kinds:
        from scanbridge.imaging.readers.openslide_reader import OpenSlideReader

        return OpenSlideReader(paths[kinds.index("dicom")])
    raise UnsupportedFormatError(f"unsupported scan format ({kinds[0]})", details={"detected": kinds})
