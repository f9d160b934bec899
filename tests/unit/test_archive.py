"""The ZIP unpacking guards: entry count, total size, compression ratio, paths, links, corrupt archives."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from scanbridge.domain.errors import CorruptScanError, UnsafeArchiveError
from scanbridge.imaging.archive import ArchiveLimits, safe_extract


def _zip(path: Path, entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_files_are_unpacked_flat_with_content_kept(tmp_path: Path) -> None:
    # GIVEN a ZIP with nested folders and a directory entry
    archive = _zip(tmp_path / "a.zip", {"s/1/a.dcm": b"alpha", "s/2/b": b"beta", "s/empty/": b""})
    # WHEN unpacked
    out = safe_extract(archive, tmp_path / "out")
    # THEN the files land flat in the destination, in order, with their bytes
    assert [p.name for p in out] == ["entry-00000", "entry-00001"]
    assert [p.read_bytes() for p in out] == [b"alpha", b"beta"]
    assert all(p.parent == tmp_path / "out" for p in out)


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/passwd", "C:/windows/evil", "a\\..\\..\\evil"])
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    # GIVEN an entry whose name leaves the destination / WHEN unpacked / THEN SCAN_ARCHIVE_UNSAFE, nothing left
    archive = _zip(tmp_path / "a.zip", {"ok": b"1", name: b"2"})
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, tmp_path / "out")
    assert err.value.code == "SCAN_ARCHIVE_UNSAFE"
    assert not (tmp_path / "out").exists()


def test_symlinks_are_refused(tmp_path: Path) -> None:
    # GIVEN an entry marked as a symbolic link
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    # WHEN unpacked / THEN SCAN_ARCHIVE_UNSAFE
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_entry_count_and_total_size_are_capped(tmp_path: Path) -> None:
    # GIVEN 5 entries of 1 kB
    archive = _zip(tmp_path / "a.zip", {f"f{i}": b"x" * 1000 for i in range(5)})
    # WHEN unpacked with a 4-entry limit, then with a 4 kB total limit / THEN both refuse
    with pytest.raises(UnsafeArchiveError, match="entries"):
        safe_extract(archive, tmp_path / "o1", ArchiveLimits(max_entries=4))
    with pytest.raises(UnsafeArchiveError, match="unpacks to"):
        safe_extract(archive, tmp_path / "o2", ArchiveLimits(max_total_bytes=4000))
    # AND within the limits it unpacks
    assert len(safe_extract(archive, tmp_path / "o3", ArchiveLimits(max_entries=5, max_total_bytes=5000))) == 5


def test_zip_bomb_ratio_is_refused(tmp_path: Path) -> None:
    # GIVEN 4 MB of zeros (deflate squeezes them ~1000:1)
    archive = _zip(tmp_path / "bomb.zip", {"zeros": b"\x00" * (4 * 1024 * 1024)})
    # WHEN unpacked with a 100:1 ratio limit / THEN SCAN_ARCHIVE_UNSAFE before anything is written
    with pytest.raises(UnsafeArchiveError, match="ratio"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_ratio=100))
    assert not (tmp_path / "out").exists()


def test_entry_larger_than_it_declares_is_refused(tmp_path: Path) -> None:
    # GIVEN a stored entry whose central directory claims fewer bytes than it holds
    archive = _zip(tmp_path / "a.zip", {"f": b"y" * 100}, compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (10).to_bytes(4, "little")  # uncompressed size in the central directory
    archive.write_bytes(bytes(data))
    # WHEN unpacked / THEN refused (unsafe or corrupt, never 100 bytes written for a 10-byte entry)
    with pytest.raises((UnsafeArchiveError, CorruptScanError)):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_zip_is_scan_corrupt(tmp_path: Path) -> None:
    # GIVEN a ZIP header followed by garbage / WHEN unpacked / THEN SCAN_CORRUPT
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04" + b"\x17" * 200)
    with pytest.raises(CorruptScanError):
        safe_extract(bad, tmp_path / "out")
