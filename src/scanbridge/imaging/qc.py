"""Quality control before inference: pure checks on a scan's overview, tissue mask and tiles.

Each check is a pure function of pixels (tested on generated images); `run_qc` reads what they need
from an open scan (the worker's injected QC step, on the `OpenedScan` the analysis and the artifacts
share) and `qc_scan` opens the files first. NO_TISSUE judges the scan's one tissue mask
(`OpenedScan.tissue`), so QC's tissue figure is the one the summary and the artifacts state. A check
that cannot be assessed (no pixel size, scan too small) passes with `assessed=False` rather than guessing.

BLURRY is judged relative to the scan's own content: the *normalised* Laplacian variance of tissue tiles
read at `blur_mpp` (variance of the Laplacian over variance of the grey levels, both on the tile's tissue
pixels; median over up to 16 tiles at least half tissue). Dividing by the tissue's own contrast keeps a
sharp scan of smooth, pale tissue from being called blurry, which the absolute Laplacian variance did
(SCANBRIDGE_QC_MIN_LAPLACIAN_VAR is now an optional extra floor, 0 = off). Calibration (2048 px at
0.25 µm/px, 50 % tissue, read at 0.5 µm/px, seeds 0-2; bench/qc_blur.py prints it): sharp 0.26-0.38
(generated smooth stroma), 0.45-0.47 (generated with nuclei), 0.86 (the real H&E mosaic of
../shared/fixtures/thirdparty); generated with nuclei blurred sigma 2 / 3 px at level 0: 0.09-0.10 /
0.07-0.09; the real mosaic blurred sigma 1 / 2 / 3 px at 0.5 µm/px: 0.14 / 0.024 / 0.008; generated smooth
stroma blurred sigma 2-3 px: 0.13-0.24. The default minimum (0.15) passes every sharp scan measured (false
positives 0 of 7; 0 of 27 with --seeds 10 and the six real files as written, docs/quality-control.md) and
flags the blurred scans with nuclei or real detail; smooth stroma blurred by 2-3 px is mostly not caught:
little detail, little to lose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from scanbridge.domain.results import QcFinding
from scanbridge.imaging.readers.base import (
    MPP_RANGE,
    MPP_REJECTED,
    ScanReader,
    best_level,
    mpp_note,
    resize_rgb,
)
from scanbridge.imaging.scan import OpenedScan
from scanbridge.imaging.tissue import percent_text, tissue_fraction, tissue_mask

NO_TISSUE = "NO_TISSUE"
PIXEL_SIZE_UNKNOWN = "PIXEL_SIZE_UNKNOWN"  # informational: a stated pixel size outside MPP_RANGE, set aside
BLURRY = "BLURRY"
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class QcThresholds:
    """The knobs of the checks (SCANBRIDGE_QC_* settings)."""

    min_tissue_fraction: float = 0.001
    blur_mpp: float = 0.5
    min_sharpness: float = 0.15
    min_laplacian_var: float = 0.0  # an optional absolute floor on top (0: off)
    blur_tile_px: int = 256
    blur_max_tiles: int = 16


@dataclass(frozen=True)
class QcCheck:
    """One check's outcome: its code, whether it passed, the measured value and the threshold."""

    code: str
    passed: bool
    value: float | None
    threshold: float
    message: str
    assessed: bool = True


@dataclass
class QcReport:
    """Every check run on a scan."""

    checks: list[QcCheck] = field(default_factory=list)
    thumbnail: np.ndarray | None = field(default=None, repr=False)
    thumbnail_downsample: float = 1.0

    @property
    def failures(self) -> list[QcFinding]:
        """The failed checks as findings (code + message)."""
        return [QcFinding(code=c.code, message=c.message) for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view for results.qc."""
        return {"passed": not self.failures, "checks": [asdict(c) for c in self.checks]}


def check_tissue(mask: np.ndarray, min_fraction: float) -> QcCheck:
    """NO_TISSUE when tissue covers less than `min_fraction` of the mask (the slide)."""
    frac = round(tissue_fraction(mask), 6)
    ok = frac >= min_fraction
    msg = (f"tissue covers {percent_text(frac)} of the slide" if ok else
           f"no tissue found: tissue covers {percent_text(frac)} of the slide (minimum {percent_text(min_fraction)})")
    return QcCheck(NO_TISSUE, ok, frac, min_fraction, msg)


def laplacian_variance(rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the 3x3 Laplacian of the grey image (border excluded; only `mask` pixels when given)."""
    grey = rgb[..., :3].astype(np.float32) @ GREY_WEIGHTS
    lap = ndimage.laplace(grey)[1:-1, 1:-1]
    if mask is not None:
        inner = mask[1:-1, 1:-1]
        if inner.sum() < 16:
            return 0.0
        return float(lap[inner].var())
    return float(lap.var()) if lap.size else 0.0


def sharpness(rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised Laplacian variance of the grey image: var(Laplacian) / var(grey), over `mask` pixels when
    given (border excluded); 0 when there are too few pixels or no contrast."""
    grey = rgb[..., :3].astype(np.float32) @ GREY_WEIGHTS
    lap = ndimage.laplace(grey)[1:-1, 1:-1]
    inner = grey[1:-1, 1:-1]
    if mask is not None:
        keep = mask[1:-1, 1:-1]
        if keep.sum() < 16:
            return 0.0
        lap, inner = lap[keep], inner[keep]
    contrast = float(inner.var()) if inner.size else 0.0
    return float(lap.var()) / contrast if contrast > 1e-6 else 0.0


def check_blur(values: Sequence[float], min_sharpness: float, *, mpp: float,
               laplacian: Sequence[float] = (), min_laplacian_var: float = 0.0) -> QcCheck:
    """BLURRY when the tissue tiles' median sharpness (normalised Laplacian variance) is below
    `min_sharpness` (or, with a floor set, their median Laplacian variance is below `min_laplacian_var`)."""
    if not values:
        return QcCheck(BLURRY, True, None, min_sharpness, "sharpness not assessed (no tissue tile at "
                       f"{mpp:g} µm/px)", assessed=False)
    value = float(np.median(values))
    lap = float(np.median(laplacian)) if laplacian else None
    lap_ok = not min_laplacian_var or lap is None or lap >= min_laplacian_var
    ok = value >= min_sharpness and lap_ok
    detail = f"sharpness {value:.3f} at {mpp:g} µm/px" + (f", Laplacian variance {lap:.1f}" if lap is not None else "")
    if ok:
        msg = f"sharp: {detail}"
    elif value < min_sharpness:
        msg = f"out of focus: {detail} (minimum sharpness {min_sharpness:g})"
    else:
        msg = f"out of focus: {detail} (minimum Laplacian variance {min_laplacian_var:g})"
    return QcCheck(BLURRY, ok, round(value, 4), min_sharpness, msg)


def tile_origins(mask: np.ndarray, mask_ds: float, tile_l0: float, width: int, height: int,
                 max_tiles: int, min_tissue: float = 0.5) -> list[tuple[int, int]]:
    """Level-0 origins of up to `max_tiles` tiles of `tile_l0` px that lie inside the slide on tissue.

    Tiles come from a regular grid over the slide; the ones most covered by tissue (at least
    `min_tissue`) are kept, spread evenly over that ranking so one region does not dominate.
    """
    if tile_l0 > width or tile_l0 > height or not mask.any():
        return []
    cols, rows = int(width // tile_l0), int(height // tile_l0)
    scored: list[tuple[float, int, int]] = []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * tile_l0, r * tile_l0
            mx0, my0 = int(x0 / mask_ds), int(y0 / mask_ds)
            mx1, my1 = max(mx0 + 1, int((x0 + tile_l0) / mask_ds)), max(my0 + 1, int((y0 + tile_l0) / mask_ds))
            cover = float(mask[my0:my1, mx0:mx1].mean()) if mask[my0:my1, mx0:mx1].size else 0.0
            if cover >= min_tissue:
                scored.append((cover, int(x0), int(y0)))
    if not scored:
        return []
    scored.sort(key=lambda s: (-s[0], s[2], s[1]))
    picks = np.unique(np.linspace(0, len(scored) - 1, min(max_tiles, len(scored))).round().astype(int))
    return [(scored[i][1], scored[i][2]) for i in picks]


def read_tile_at_mpp(reader: ScanReader, origin: tuple[int, int], tile_l0: float, out_px: int) -> np.ndarray:
    """A tile of `tile_l0` level-0 px at `origin`, read from the best level and resized to `out_px`."""
    meta = reader.metadata
    ds = tile_l0 / out_px
    level = best_level(meta.level_downsamples, ds)
    lds = meta.level_downsamples[level]
    size = max(1, round(tile_l0 / lds))
    rgb = reader.read_region(origin, level, (size, size))
    return resize_rgb(rgb, (out_px, out_px))


def run_qc(scan: OpenedScan, thresholds: QcThresholds | None = None) -> QcReport:
    """Run every check on an open scan (its shared overview and tissue mask)."""
    th = thresholds or QcThresholds()
    reader, meta = scan.reader, scan.metadata
    thumb, thumb_ds = scan.overview()
    mask, ds = scan.tissue.mask, scan.tissue.downsample
    report = QcReport(thumbnail=thumb, thumbnail_downsample=thumb_ds)
    note = mpp_note(meta)
    if note:  # not a failure: the scan is analysed without a pixel size (readers.base.with_sane_mpp)
        stated = float(meta.properties[MPP_REJECTED].split(",")[0])
        report.checks.append(QcCheck(PIXEL_SIZE_UNKNOWN, True, stated, MPP_RANGE[1], "pixel size " + note,
                                     assessed=False))
    tissue = check_tissue(mask, th.min_tissue_fraction)
    report.checks.append(tissue)
    if not tissue.passed:
        return report  # sharpness of no tissue means nothing
    values: list[float] = []
    variances: list[float] = []
    if meta.mpp and meta.mpp[0] <= th.blur_mpp * 1.5:
        tile_l0 = th.blur_tile_px * th.blur_mpp / meta.mpp[0]
        width, height = meta.dimensions
        for origin in tile_origins(mask, ds, tile_l0, width, height, th.blur_max_tiles):
            tile = read_tile_at_mpp(reader, origin, tile_l0, th.blur_tile_px)
            on_tissue = tissue_mask(tile, min_area_px=0)
            values.append(sharpness(tile, on_tissue))
            variances.append(laplacian_variance(tile, on_tissue))
    report.checks.append(check_blur(values, th.min_sharpness, mpp=th.blur_mpp, laplacian=variances,
                                    min_laplacian_var=th.min_laplacian_var))
    return report


def qc_scan(paths: Sequence[Path], thresholds: QcThresholds | None = None) -> QcReport:
    """Open the scan's files, run the checks, close it (raises the readers' ScanErrors)."""
    with OpenedScan.open(list(paths)) as scan:
        return run_qc(scan, thresholds)
