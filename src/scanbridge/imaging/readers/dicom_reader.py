"""pydicom-based reader: DICOM WSI series (TILED_FULL / TILED_SPARSE, any codec imagecodecs decodes,
levels spread over several files) and plain single- or multi-frame DICOM images (one level)."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from scanbridge.domain.errors import CorruptScanError, ScanbridgeError, UnsupportedFormatError
from scanbridge.imaging.readers.base import (
    SERIES_IGNORED,
    ClosingReader,
    ScanMetadata,
    best_level,
    resize_rgb,
    thumbnail_size,
)
from scanbridge.imaging.readers.dicom_frames import IN_MEMORY_SYNTAXES, FrameStore, read_header
from scanbridge.imaging.readers.jpeg_dct import splits_edge_block

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
ASSOCIATED_NAMES = {"THUMBNAIL": "thumbnail", "LABEL": "label", "OVERVIEW": "macro"}
_CACHE_FRAMES = 512


@dataclass
class DicomInstance:
    """One DICOM file's header and what it contributes (a pyramid level, an associated image, an image)."""

    path: Path
    ds: Dataset
    pixel_pos: int
    is_wsi: bool
    flavor: str  # VOLUME / THUMBNAIL / LABEL / OVERVIEW for WSI; IMAGE otherwise
    width: int
    height: int
    tile_w: int
    tile_h: int
    store: FrameStore | None = None

    @property
    def series_uid(self) -> str:
        """SeriesInstanceUID (empty when missing)."""
        return str(self.ds.get("SeriesInstanceUID", ""))

    @property
    def syntax(self) -> str:
        """Transfer syntax UID."""
        return str(self.ds.file_meta.get("TransferSyntaxUID", ""))

    def frames(self) -> FrameStore:
        """The instance's frame store, opened on first use."""
        if self.store is None:
            self.store = FrameStore(self.path, self.ds, self.pixel_pos)
        return self.store


def read_instance(path: Path) -> DicomInstance:
    """Parse one DICOM file's header into a DicomInstance (no pixel data read)."""
    ds, pos = read_header(path)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if not syntax or "SOPClassUID" not in ds:
        raise CorruptScanError("the DICOM file has no transfer syntax or SOP class: not a valid dataset",
                               details={"file": path.name})
    if pos < 0 and syntax not in IN_MEMORY_SYNTAXES:
        raise UnsupportedFormatError("the DICOM file holds no image", details={"file": path.name})
    is_wsi = str(ds.get("SOPClassUID", "")) == WSI_SOP_CLASS
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptScanError("the DICOM image has no Rows/Columns") from exc
    if is_wsi:
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        flavor = image_type[2] if len(image_type) > 2 else "VOLUME"
        flavor = flavor if flavor in ("VOLUME", "THUMBNAIL", "LABEL", "OVERVIEW") else "VOLUME"
        width = int(ds.get("TotalPixelMatrixColumns", cols) or cols)
        height = int(ds.get("TotalPixelMatrixRows", rows) or rows)
    else:
        flavor, width, height = "IMAGE", cols, rows
    if width <= 0 or height <= 0 or rows <= 0 or cols <= 0:
        raise CorruptScanError("the DICOM image has an empty pixel matrix")
    return DicomInstance(path=path, ds=ds, pixel_pos=pos, is_wsi=is_wsi, flavor=flavor, width=width,
                         height=height, tile_w=cols, tile_h=rows)


@dataclass
class Level:
    """One pyramid level: its size and where each tile (instance, frame) sits in it."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    parts: list[DicomInstance]
    # TILED_FULL: (part, first global frame); TILED_SPARSE: grid cell -> [(part, frame, x, y)]
    full: list[tuple[DicomInstance, int]] = field(default_factory=list)
    sparse: dict[tuple[int, int], list[tuple[DicomInstance, int, int, int]]] | None = None

    @property
    def across(self) -> int:
        """Tiles per row."""
        return -(-self.width // self.tile_w)

    def tiles_in(self, x0: int, y0: int, x1: int, y1: int) -> Iterator[tuple[DicomInstance, int, int, int]]:
        """The (instance, frame, x, y) tiles that overlap the level rectangle [x0, x1) x [y0, y1)."""
        c0, c1 = max(x0 // self.tile_w, 0), min((x1 - 1) // self.tile_w, self.across - 1)
        r0, r1 = max(y0 // self.tile_h, 0), min((y1 - 1) // self.tile_h, -(-self.height // self.tile_h) - 1)
        seen: set[tuple[int, int]] = set()
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                if self.sparse is not None:
                    for inst, frame, x, y in self.sparse.get((c, r), []):
                        key = (id(inst), frame)
                        if key not in seen and x < x1 and y < y1 and x + self.tile_w > x0 and y + self.tile_h > y0:
                            seen.add(key)
                            yield inst, frame, x, y
                    continue
                g = r * self.across + c
                for inst, first in reversed(self.full):
                    if g >= first:
                        yield inst, g - first, c * self.tile_w, r * self.tile_h
                        break


def _is_sparse(ds: Dataset) -> bool:
    kind = str(ds.get("DimensionOrganizationType", "")).upper()
    if kind == "TILED_FULL":
        return False
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    return bool(per_frame) and "PlanePositionSlideSequence" in per_frame[0]


def _frame_positions(inst: DicomInstance) -> list[tuple[int, int]]:
    """Level-pixel (x, y) of each frame of a TILED_SPARSE instance (1-based positions in the file)."""
    out: list[tuple[int, int]] = []
    try:
        for item in inst.ds.PerFrameFunctionalGroupsSequence:
            pos = item.PlanePositionSlideSequence[0]
            out.append((int(pos.ColumnPositionInTotalImagePixelMatrix) - 1,
                        int(pos.RowPositionInTotalImagePixelMatrix) - 1))
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise CorruptScanError("a TILED_SPARSE DICOM frame has no plane position", details={"file": inst.path.name}
                               ) from exc
    return out


def _build_level(parts: list[DicomInstance]) -> Level:
    first = parts[0]
    level = Level(width=first.width, height=first.height, tile_w=first.tile_w, tile_h=first.tile_h, parts=parts)
    if any(_is_sparse(p.ds) for p in parts):
        grid: dict[tuple[int, int], list[tuple[DicomInstance, int, int, int]]] = {}
        taken: set[tuple[int, int]] = set()
        for inst in parts:
            for frame, (x, y) in enumerate(_frame_positions(inst)):
                if (x, y) in taken:  # another focal plane / optical path of the same tile
                    continue
                taken.add((x, y))
                for r in range(max(y, 0) // level.tile_h, (y + level.tile_h - 1) // level.tile_h + 1):
                    for c in range(max(x, 0) // level.tile_w, (x + level.tile_w - 1) // level.tile_w + 1):
                        grid.setdefault((c, r), []).append((inst, frame, x, y))
        level.sparse = grid
    else:
        ordered = sorted(parts, key=lambda p: int(p.ds.get("ConcatenationFrameOffsetNumber", 0) or 0))
        level.full = [(p, int(p.ds.get("ConcatenationFrameOffsetNumber", 0) or 0)) for p in ordered]
    return level


def _float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _pixel_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm from the functional groups or the top level."""
    candidates: list[Dataset] = []
    for seq_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if seq:
            measures = seq[0].get("PixelMeasuresSequence")
            if measures:
                candidates.append(measures[0])
    candidates.append(ds)
    for item in candidates:
        for name in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
            value = item.get(name)
            if value is not None and len(value) == 2:
                row, col = _float(value[0]), _float(value[1])
                if row and col:
                    return row, col
    return None


def open_dicom_series(paths: Sequence[Path]) -> DicomReader:
    """Open DICOM files as one scan (a WSI series, or else the first plain image)."""
    instances: list[DicomInstance] = []
    errors: list[ScanbridgeError] = []
    for path in paths:
        try:
            instances.append(read_instance(path))
        except UnsupportedFormatError as exc:  # e.g. a DICOMDIR or a report beside the images: skipped
            errors.append(exc)
    if not instances:
        raise errors[0] if errors else UnsupportedFormatError("no DICOM images")
    return DicomReader(instances)


class DicomReader(ClosingReader):
    """A ScanReader over DICOM instances read with pydicom; decoding with imagecodecs."""

    def __init__(self, instances: list[DicomInstance]) -> None:
        wsi = [i for i in instances if i.is_wsi]
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._instances: list[DicomInstance] = []
        self.associated: dict[str, DicomInstance] = {}
        if wsi:
            volumes = [i for i in wsi if i.flavor == "VOLUME"]
            if not volumes:
                raise UnsupportedFormatError("the DICOM series has no VOLUME image (only label/overview/thumbnail)")
            # the documented rule for files of several series (a ZIP of two scans): the series holding the
            # largest VOLUME image is the scan; the others are ignored, and the metadata says so
            largest = max(volumes, key=lambda i: i.width * i.height)
            series = largest.series_uid
            members = [i for i in wsi if i.series_uid == series]
            ignored = sorted({i.series_uid for i in instances if i.series_uid != series})
            by_size: dict[tuple[int, int], list[DicomInstance]] = {}
            for inst in (i for i in members if i.flavor == "VOLUME"):
                by_size.setdefault((inst.width, inst.height), []).append(inst)
            self.levels = [_build_level(by_size[k]) for k in sorted(by_size, key=lambda s: -s[0] * s[1])]
            for inst in members:
                name = ASSOCIATED_NAMES.get(inst.flavor)
                if name and name not in self.associated:
                    self.associated[name] = inst
            self._instances = members
            kind = "dicom-wsi"
        else:
            image = max(instances, key=lambda i: i.width * i.height)
            level = Level(width=image.width, height=image.height, tile_w=image.width, tile_h=image.height,
                          parts=[image], full=[(image, 0)])
            self.levels = [level]
            self._instances = [image]
            ignored = sorted({i.series_uid for i in instances if i.series_uid != image.series_uid})
            kind = "dicom"
        base = self.levels[0]
        head = base.parts[0]
        # open every level's frames now, so that unsupported syntaxes and corrupt files fail at open
        try:
            syntax = head.frames().syntax
            for level in self.levels[1:]:
                for part in level.parts:
                    part.frames()
        except BaseException:
            self.close()
            raise
        ds = head.ds
        spacing = _pixel_spacing_mm(ds)
        mpp = (spacing[1] * 1000.0, spacing[0] * 1000.0) if spacing else None
        objective = None
        optical = ds.get("OpticalPathSequence")
        if optical:
            objective = _float(optical[0].get("ObjectiveLensPower"))
        downsamples = tuple((base.width / lv.width + base.height / lv.height) / 2.0 for lv in self.levels)
        props = {
            "scanbridge.reader": "pydicom",
            "dicom.SOPClassUID": str(ds.get("SOPClassUID", "")),
            "dicom.SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
            "dicom.TransferSyntaxUID": str(syntax),
            "dicom.PhotometricInterpretation": str(ds.get("PhotometricInterpretation", "")),
            "dicom.DimensionOrganizationType": str(ds.get("DimensionOrganizationType", "")),
            "dicom.Manufacturer": str(ds.get("Manufacturer", "")),
            "dicom.ManufacturerModelName": str(ds.get("ManufacturerModelName", "")),
            SERIES_IGNORED: ",".join(ignored),
        }
        self.metadata = ScanMetadata(
            format=kind, vendor="dicom",
            dimensions=(base.width, base.height),
            level_dimensions=tuple((lv.width, lv.height) for lv in self.levels),
            level_downsamples=downsamples, mpp=mpp, objective_power=objective,
            associated_images=tuple(sorted(self.associated)),
            transfer_syntax=syntax.name,
            properties={k: v for k, v in props.items() if v},
        )

    # -- pixels ------------------------------------------------------------------------------------

    def _frame(self, inst: DicomInstance, index: int, scale: int = 1) -> np.ndarray:
        key = (id(inst), index, scale)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        store = inst.frames()
        tile = store.frame(index) if scale == 1 else store.frame_scaled(index, scale)
        with self._lock:
            self._cache[key] = tile
            while len(self._cache) > _CACHE_FRAMES:
                self._cache.popitem(last=False)
        return tile

    def _read_level(self, level: Level, lx: int, ly: int, w: int, h: int, scale: int = 1) -> np.ndarray:
        """The level rectangle at (lx, ly), w x h, white outside; with `scale` (dividing lx, ly, w, h and
        every frame's position and size) from frames decoded at 1/scale (read_region_scaled checks it)."""
        s = scale
        out = np.full((h // s, w // s, 3), 255, dtype=np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, level.width), min(ly + h, level.height)
        if x0 >= x1 or y0 >= y1:
            return out
        for inst, frame, tx, ty in level.tiles_in(x0, y0, x1, y1):
            tile = self._frame(inst, frame, s)
            sx0, sy0 = max(x0, tx), max(y0, ty)
            sx1 = min(x1, tx + tile.shape[1] * s)
            sy1 = min(y1, ty + tile.shape[0] * s)
            if sx0 < sx1 and sy0 < sy1:
                out[(sy0 - ly) // s:(sy1 - ly) // s, (sx0 - lx) // s:(sx1 - lx) // s] = \
                    tile[(sy0 - ty) // s:(sy1 - ty) // s, (sx0 - tx) // s:(sx1 - tx) // s]
        return out

    def read_region_scaled(self, location: tuple[int, int], level: int, size: tuple[int, int],
                           scale: int) -> np.ndarray | None:
        """See base.ScaledRegions: JPEG baseline frames decoded at 1/scale in the DCT domain; None for other
        syntaxes, when the region or a frame is not aligned to `scale`, or the region runs past a level edge
        that splits a block."""
        if not 0 <= level < len(self.levels):
            return None
        lv = self.levels[level]
        w, h = int(size[0]), int(size[1])
        ds = self.metadata.level_downsamples[level]
        lx, ly = math.floor(location[0] / ds), math.floor(location[1] / ds)
        if lv.tile_w % scale or lv.tile_h % scale or lx % scale or ly % scale or w % scale or h % scale or w <= 0 \
                or h <= 0 or splits_edge_block(lx, w, lv.width, scale) or splits_edge_block(ly, h, lv.height, scale) \
                or not all(p.frames().dct_scalable for p in lv.parts):
            return None
        if lv.sparse is not None:  # TILED_SPARSE frames sit anywhere: every one touched must be aligned
            tiles = lv.tiles_in(max(lx, 0), max(ly, 0), min(lx + w, lv.width), min(ly + h, lv.height))
            if any(tx % scale or ty % scale for _inst, _frame, tx, ty in tiles):
                return None
        try:
            return self._read_level(lv, lx, ly, w, h, scale)
        except ScanbridgeError:
            raise
        except Exception as exc:
            raise CorruptScanError(f"the scan's image data cannot be decoded: {exc}") from exc

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) at `level`, top-left at level-0 `location`; outside the image is white."""
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level {level} out of range")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError("size must be positive")
        ds = self.metadata.level_downsamples[level]
        lx, ly = math.floor(location[0] / ds), math.floor(location[1] / ds)
        try:
            return self._read_level(self.levels[level], lx, ly, w, h)
        except ScanbridgeError:
            raise
        except Exception as exc:
            raise CorruptScanError(f"the scan's image data cannot be decoded: {exc}") from exc

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """An RGB thumbnail no larger than max_size, and its downsample from level 0."""
        w, h = self.metadata.dimensions
        tw, th = thumbnail_size((w, h), max_size)
        level = best_level(self.metadata.level_downsamples, w / tw)
        lw, lh = self.metadata.level_dimensions[level]
        arr = self.read_region((0, 0), level, (lw, lh))
        thumb = resize_rgb(arr, (tw, th))
        return thumb, w / thumb.shape[1]

    def associated_image(self, name: str) -> np.ndarray:
        """The named associated image (thumbnail, label, macro) as RGB uint8."""
        inst = self.associated.get(name)
        if inst is None:
            raise KeyError(name)
        level = _build_level([inst])
        try:
            return self._read_level(level, 0, 0, inst.width, inst.height)
        except ScanbridgeError:
            raise
        except Exception as exc:
            raise CorruptScanError(f"the {name} image cannot be decoded: {exc}") from exc

    def close(self) -> None:
        """Close every file."""
        for inst in [*self._instances, *self.associated.values()]:
            if inst.store is not None:
                inst.store.close()
        with self._lock:
            self._cache.clear()
