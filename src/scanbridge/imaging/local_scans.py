"""The scans that local paths name (`scanbridge inspect` / `run-scan`): which files make one scan.

- A file is a scan of its own, except that DICOM files of one series (the same SeriesInstanceUID) are one
  scan, wherever they are given: a DICOM WSI is one file per level (as scanners and wsidicomizer write it),
  and OpenSlide and wsidicom open the series, not one of its levels.
- A folder stands for the scan files below it: hidden files, files of no scan format (a README, a JSON
  sidecar) and DICOM objects that are no whole-slide image (a DICOMDIR, an annotation, a segmentation) left
  out; so a folder holding one DICOM series is that one scan, named after the folder.

The platform's path needs none of this: a webhook names each scan's files itself (`scan_urls`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from scanbridge.imaging.readers import detect_format


@dataclasses.dataclass(frozen=True)
class LocalScan:
    """One scan: the path the user gave for it (a file or a folder), its name (unique in the list, for the
    output files) and its files."""

    given: str
    name: str
    files: list[Path]


def local_scans(names: Sequence[str]) -> list[LocalScan]:
    """The scans of `names` (files and folders), in the order given; a DICOM series given twice is one scan.
    A path that does not exist is a scan of its own (its reader says what is wrong)."""
    scans: list[LocalScan] = []
    series: dict[str, int] = {}  # SeriesInstanceUID -> index in scans
    taken: set[Path] = set()  # a file given twice (itself and in its folder) is read once
    for given in names:
        path = Path(given)
        from_folder = path.is_dir()
        files = _files_below(path) if from_folder else [path]
        found: list[int] = []
        used = False
        for file in files:
            kind, real = _kind(file), file.resolve()
            if (from_folder and kind == "unknown") or real in taken:
                continue
            uid, slide = _dicom_facts(file) if kind == "dicom" else (None, True)
            if from_folder and not slide:
                continue
            taken.add(real)
            used = True
            if uid is not None and uid in series:
                scans[series[uid]].files.append(file)
                continue
            scans.append(LocalScan(given=str(file), name=file.stem, files=[file]))
            found.append(len(scans) - 1)
            if uid is not None:
                series[uid] = len(scans) - 1
        if from_folder and not used:
            scans.append(LocalScan(given=given, name=path.resolve().name, files=[]))  # "the scan has no files"
        elif from_folder and len(found) == 1:  # the folder is one scan: it gets the folder's name
            scans[found[0]] = dataclasses.replace(scans[found[0]], given=given, name=path.resolve().name)
    return _unique_names(scans)


def _files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _kind(path: Path) -> str:
    try:
        return detect_format(path)
    except OSError:
        return "unknown"


#: the SOP class of a DICOM whole-slide image's instances (VL Whole Slide Microscopy Image Storage)
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _dicom_facts(path: Path) -> tuple[str | None, bool]:
    """(SeriesInstanceUID or None, whether it is a whole-slide image instance) from the file's header; a
    header that cannot be parsed: (None, True), so that the reader says what is wrong with it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None, True
    uid = header.get("SeriesInstanceUID")
    return (str(uid) if uid else None), str(header.get("SOPClassUID", WSI_SOP_CLASS)) == WSI_SOP_CLASS


def _unique_names(scans: list[LocalScan]) -> list[LocalScan]:
    """Two scans of one name (`a/slide.svs b/slide.svs`) would write the same output files: the later ones
    get -2, -3, ... (a name no earlier scan has)."""
    used: set[str] = set()
    out = []
    for scan in scans:
        name, count = scan.name, 1
        while name in used:
            count += 1
            name = f"{scan.name}-{count}"
        used.add(name)
        out.append(scan if name == scan.name else dataclasses.replace(scan, name=name))
    return out
