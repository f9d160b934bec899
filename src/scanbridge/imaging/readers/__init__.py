"""Scan readers behind one ScanReader contract; `open_scan()` picks one from the files' content.

Routing (content only, never file names):

- TIFF: OpenSlide (Aperio SVS, generic/pyramidal TIFF) for metadata, with regions decoded from the
  compressed tiles (tifffile + imagecodecs) wherever every level is a decodable tiled page; what
  OpenSlide refuses or sees as one level (stripped TIFF, OME-TIFF and SubIFD pyramids, WebP / JPEG 2000 /
  JPEG XL / zstd tiles) goes to the tifffile reader; an unknown TIFF compression is
  SCAN_UNSUPPORTED_FORMAT.
- DICOM: the files' headers are parsed with pydicom and grouped into one series, whose frames are read
  with os.pread and decoded by imagecodecs (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE, native, deflated...).
  OpenSlide decodes a subset of these syntaxes (OPENSLIDE_DICOM_SYNTAXES): tests use it as the reference.
- ZIP: unpacked with guards (`imaging.archive`) into a temporary folder, then treated as above;
  the folder goes away when the reader is closed.

Every reader is a context manager: `with open_scan(paths) as reader:` closes it (and removes a ZIP's
folder) on exit. `open_scan_files` also says which files the reader reads (a ZIP's unpacked entries), so
nothing needs to unpack the archive again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom import uid as dcm_uid

from scanbridge.domain.errors import (
    CorruptScanError,
    ScanbridgeError,
    ScanStorageFullError,
    UnsupportedFormatError,
    is_disk_full,
)
from scanbridge.imaging.readers.base import (
    ClosingReader,
    ScaledRegions,
    ScanMetadata,
    ScanReader,
    best_level,
    with_sane_mpp,
)

if TYPE_CHECKING:
    from scanbridge.imaging.readers.tiled_tiff import TiledLevel

__all__ = ["ScaledRegions", "ScanMetadata", "ScanReader", "best_level", "detect_format", "open_scan", "open_scan_files"]

log = logging.getLogger(__name__)

#: DICOM transfer syntaxes OpenSlide 4 decodes too (the reference the pydicom reader is tested against)
OPENSLIDE_DICOM_SYNTAXES = frozenset({dcm_uid.ExplicitVRLittleEndian, dcm_uid.ImplicitVRLittleEndian,
                                      dcm_uid.JPEGBaseline8Bit, dcm_uid.JPEG2000Lossless, dcm_uid.JPEG2000})


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


class _OwnedFolders(ClosingReader):
    """A reader that removes the folders it was unpacked into when closed."""

    def __init__(self, inner: ScanReader, folders: list[Path]) -> None:
        self._inner = inner
        self._folders = folders
        self.metadata = inner.metadata

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """See ScanReader.read_region."""
        return self._inner.read_region(location, level, size)

    def read_region_scaled(self, location: tuple[int, int], level: int, size: tuple[int, int],
                           scale: int) -> np.ndarray | None:
        """See ScaledRegions.read_region_scaled (None when the inner reader has no scaled path)."""
        if not isinstance(self._inner, ScaledRegions):
            return None
        return self._inner.read_region_scaled(location, level, size, scale)

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """See ScanReader.thumbnail."""
        return self._inner.thumbnail(max_size)

    def associated_image(self, name: str) -> np.ndarray:
        """See ScanReader.associated_image."""
        return self._inner.associated_image(name)

    def close(self) -> None:
        """Close the inner reader, then remove the unpacked files."""
        try:
            self._inner.close()
        finally:
            for folder in self._folders:
                shutil.rmtree(folder, ignore_errors=True)


def open_scan(paths: Sequence[Path]) -> ScanReader:
    """Open a scan made of one or more files with the reader that fits their content."""
    return open_scan_files(paths)[0]


def open_scan_files(paths: Sequence[Path]) -> tuple[ScanReader, list[Path]]:
    """`open_scan`, and the files the scan is made of once its ZIPs are unpacked (they live until the
    reader is closed)."""
    if not paths:
        raise UnsupportedFormatError("the scan has no files")
    folders: list[Path] = []
    try:
        files: list[tuple[Path, str]] = []
        for path in paths:
            kind = _detect(path)
            if kind == "zip":
                from scanbridge.imaging.archive import safe_extract

                folder = _unpack_folder(path)
                folders.append(folder)
                files.extend((p, _detect(p)) for p in safe_extract(path, folder))
            else:
                files.append((Path(path), kind))
        reader = _open_files(files)
    except ScanbridgeError:
        _remove(folders)
        raise
    except Exception as exc:  # a native library failing on bad input must not escape raw
        _remove(folders)
        if is_disk_full(exc):
            raise ScanStorageFullError("no space left on the disk while opening the scan") from exc
        log.warning("unexpected error opening a scan", exc_info=True)
        raise CorruptScanError(f"the scan cannot be opened: {type(exc).__name__}: {exc}") from exc
    reader.metadata = with_sane_mpp(reader.metadata)  # an implausible pixel size is an unknown one
    unpacked = [p for p, _ in files]
    if folders:
        owned = _OwnedFolders(reader, folders)
        owned.metadata = reader.metadata
        return owned, unpacked
    return reader, unpacked


def _detect(path: Path) -> str:
    try:
        return detect_format(path)
    except OSError as exc:
        raise CorruptScanError(f"the scan file cannot be read: {exc}") from exc


def _unpack_folder(archive: Path) -> Path:
    """A fresh folder beside the archive (the task's work dir), or in the system temp dir."""
    try:
        return Path(tempfile.mkdtemp(prefix=".unzipped-", dir=archive.parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="scanbridge-unzipped-"))


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _open_files(files: list[tuple[Path, str]]) -> ScanReader:
    kinds = [k for _, k in files]
    dicoms = [p for p, k in files if k == "dicom"]
    tiffs = [p for p, k in files if k == "tiff"]
    if tiffs and (kinds[0] == "tiff" or not dicoms):
        return _open_tiff(tiffs[0])
    if dicoms:
        return _open_dicom(dicoms)
    raise UnsupportedFormatError(f"unsupported scan format ({kinds[0] if kinds else 'empty archive'})",
                                 details={"detected": kinds[:20]})


def _open_tiff(path: Path) -> ScanReader:
    """OpenSlide for what it reads whole (SVS, page pyramids), regions from the compressed tiles where
    imagecodecs decodes them; the tifffile reader for what OpenSlide refuses or sees as one level
    (SubIFD / OME pyramids, WebP, JPEG 2000, JPEG XL, zstd, stripped images)."""
    from scanbridge.imaging.readers.openslide_reader import OpenSlideReader
    from scanbridge.imaging.readers.tiff_reader import TiffFileReader

    facts = _tiff_facts(path)  # one tifffile pass for every decision below
    if facts.reason:
        raise UnsupportedFormatError(facts.reason)
    try:
        reader = OpenSlideReader(path)
    except UnsupportedFormatError:
        return TiffFileReader(path)
    except CorruptScanError:
        if facts.levels == 0:  # tifffile cannot parse it either
            raise
        return TiffFileReader(path)  # e.g. WebP / JPEG 2000 tiles that OpenSlide's libtiff lacks
    if facts.levels > len(reader.metadata.level_dimensions):  # SubIFD / OME pyramid: OpenSlide sees level 0
        reader.close()
        return TiffFileReader(path)
    if reader.metadata.mpp is None and facts.ome_mpp:  # OME-TIFF keeps its pixel size in XML, which OpenSlide ignores
        reader.metadata = dataclasses.replace(reader.metadata, mpp=facts.ome_mpp)
    from scanbridge.imaging.readers.tiled_tiff import pyramid_from

    tiles = pyramid_from(path, facts.candidates, reader.metadata.level_dimensions)
    if tiles is not None:
        reader.use_tiles(tiles)
    return reader


@dataclasses.dataclass
class _TiffFacts:
    reason: str | None = None  # an unknown compression
    levels: int = 0  # of tifffile's first series; 0 when tifffile cannot parse the file
    ome_mpp: tuple[float, float] | None = None
    candidates: dict[tuple[int, int], TiledLevel] = dataclasses.field(default_factory=dict)  # by size


def _tiff_facts(path: Path) -> _TiffFacts:
    """What tifffile sees in the file, read once."""
    import tifffile

    from scanbridge.imaging.readers.openslide_reader import unknown_compression
    from scanbridge.imaging.readers.tiff_reader import ome_mpp
    from scanbridge.imaging.readers.tiled_tiff import tile_candidates

    errors = (tifffile.TiffFileError, ValueError, OSError, IndexError)
    try:
        with tifffile.TiffFile(path) as tif:
            facts = _TiffFacts(reason=unknown_compression(tif), levels=len(tif.series[0].levels),
                               ome_mpp=ome_mpp(tif.ome_metadata) if tif.is_ome else None)
            with contextlib.suppress(*errors):  # no tile path then; OpenSlide still decides
                facts.candidates = tile_candidates(tif)
            return facts
    except errors:
        return _TiffFacts()


def _open_dicom(paths: list[Path]) -> ScanReader:
    """Every DICOM series through pydicom + imagecodecs (frames read with os.pread and decoded in the reader
    threads: several times faster than OpenSlide's DICOM path, pixel-identical to it on the syntaxes
    OpenSlide decodes, which tests keep as the reference)."""
    from scanbridge.imaging.readers.dicom_reader import open_dicom_series

    return open_dicom_series(paths)
