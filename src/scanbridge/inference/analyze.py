"""One scan through one model: tissue mask, tile grid, pipeline, post-processing, result body.

The tissue mask is the scan's one (`OpenedScan.tissue`, shared with QC and the artifacts), and every
result states the tissue figure from it, whatever the model: "Tissue area" and "Tissue fraction" in the
summary, `tissue_area_mm2` and `tissue_fraction` in the results (for the built-in tissue model too: its
outlines are its own, the figure is the scan's).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanbridge.domain.errors import TooManyTilesError
from scanbridge.domain.models import REGION_KINDS, ModelSpec
from scanbridge.domain.results import ScanResult
from scanbridge.imaging.readers.base import ScanReader, mpp_note, series_note
from scanbridge.imaging.scan import OpenedScan, ScanTissue
from scanbridge.imaging.tiling import DEFAULT_MIN_TISSUE, grid_for_model
from scanbridge.imaging.tissue import percent_text
from scanbridge.inference.objects import OBJECT_KINDS, objects_result, run_objects
from scanbridge.inference.pipeline import (
    PipelineStats,
    ProgressFn,
    codes_at_least,
    run_class_grid,
    run_grid,
)
from scanbridge.inference.postprocess import CodeMapPolygons, heatmap_feature, region_features
from scanbridge.inference.regions import region_result
from scanbridge.inference.resume import CheckpointStore
from scanbridge.inference.session import OnnxModel

# Region kinds measure each class's area: a tissue edge dropped with its tile is area lost (the nucleus
# models' reasoning), so their tiles run from a tenth of tissue in the core unless the spec says otherwise.
REGION_MIN_TISSUE = 0.1


@dataclass
class ScanAnalysis:
    """A scan's result body plus what it took to make it."""

    result: ScanResult
    metadata: dict[str, Any]
    stats: PipelineStats
    timings: dict[str, float] = field(default_factory=dict)


def _fmt_area(mm2: float | None) -> str:
    return "n/a (scan has no pixel size)" if mm2 is None else f"{mm2:.3f} mm²"


def analyze_scan(scan_id: str, scan: OpenedScan | ScanReader, model: OnnxModel, *, tile_size: int | None = None,
                 batch_size: int | None = None, readers: int | None = None, progress: ProgressFn | None = None,
                 overlap: int | None = None, max_tiles: int | None = None,
                 min_tissue: float | None = None, checkpoint: CheckpointStore | None = None) -> ScanAnalysis:
    """`_analyze_scan` on the open scan (a bare reader gets its own overview and mask, and stays open),
    whose summary then states the scan's tissue figure, says when its stated pixel size was set aside as
    implausible (readers.base.with_sane_mpp: no µm or mm² figure comes from it) and which DICOM series
    were ignored."""
    opened = scan if isinstance(scan, OpenedScan) else OpenedScan(scan, owned=False)
    analysis = _analyze_scan(scan_id, opened, model, tile_size=tile_size,
                             batch_size=batch_size, readers=readers, progress=progress, overlap=overlap,
                             max_tiles=max_tiles, min_tissue=min_tissue, checkpoint=checkpoint)
    state_scan_figures(analysis.result, opened)
    return analysis


def state_scan_figures(result: ScanResult, scan: OpenedScan) -> None:
    """What every result of `scan` states whatever the model (`result` is changed): the scan's tissue figure, an
    implausible stated pixel size set aside, the DICOM series ignored."""
    results = result.results
    if results is None:
        return
    _state_tissue(results, scan.tissue)
    meta = scan.metadata
    for label, note in {"Pixel size": mpp_note(meta), "DICOM series": series_note(meta)}.items():
        if note:
            report = results.setdefault("report", {})
            report["summary"] = {**(report.get("summary") or {}), label: note}


def _state_tissue(results: dict[str, Any], tissue: ScanTissue) -> None:
    """The scan's tissue figure in `results` and its summary (after "Tissue area" where the decoder put
    one, replacing any other tissue figure: one per scan)."""
    area = tissue.area_mm2
    results["tissue_area_mm2"] = area
    results["tissue_fraction"] = tissue.fraction
    report = results.setdefault("report", {})
    figure = {"Tissue area": _fmt_area(area), "Tissue fraction": percent_text(tissue.fraction)}
    summary: dict[str, Any] = {}
    for key, value in (report.get("summary") or {}).items():
        if key not in figure:
            summary[key] = value
        elif key == "Tissue area":
            summary.update(figure)
    report["summary"] = {**summary, **figure}  # placed where "Tissue area" was, else at the end


def _analyze_scan(scan_id: str, scan: OpenedScan, model: OnnxModel, *,
                  tile_size: int | None = None, batch_size: int | None = None, readers: int | None = None,
                  progress: ProgressFn | None = None, overlap: int | None = None, max_tiles: int | None = None,
                  min_tissue: float | None = None, checkpoint: CheckpointStore | None = None) -> ScanAnalysis:
    """Run `model` over the tissue of one scan and build its ScanResult (level-0 GeoJSON).

    With a `checkpoint` the scan resumes from the tiles it holds and saves finished ones (resume.py).

    A tile runs when at least `min_tissue` of its core is tissue (default: `tile_min_tissue(spec)`).

    With `max_tiles`, a scan whose tissue needs more tiles fails (SCAN_TOO_MANY_TILES) after its first batch.
    """
    t0 = time.perf_counter()
    if max_tiles is not None:
        progress = _tile_limit(max_tiles, progress)
    spec = model.spec
    reader, meta = scan.reader, scan.metadata
    width, height = meta.dimensions
    tissue = scan.tissue  # the scan's one mask: computed now unless QC did
    mask, thumb_ds = tissue.mask, tissue.downsample
    t_mask = time.perf_counter()
    if spec.kind in OBJECT_KINDS:
        return _analyze_objects(scan_id, reader, model, tissue, t0=t0, t_mask=t_mask, tile_size=tile_size,
                                batch_size=batch_size, readers=readers, progress=progress, overlap=overlap,
                                min_tissue=tile_min_tissue(spec, min_tissue), checkpoint=checkpoint)

    if spec.kind in REGION_KINDS:
        return _analyze_regions(scan_id, reader, model, tissue, t0=t0, t_mask=t_mask, batch_size=batch_size,
                                readers=readers, progress=progress, overlap=overlap,
                                min_tissue=tile_min_tissue(spec, min_tissue), checkpoint=checkpoint)

    target_ds = spec.mpp / meta.mpp[0] if (spec.mpp and meta.mpp) else 1.0
    size = tile_size or spec.input_size
    margin = int(spec.outputs.get("tile_overlap", 0)) if overlap is None else overlap
    grid = grid_for_model(meta.level_dimensions, meta.level_downsamples, target_ds, size, mask, thumb_ds,
                          overlap=margin, min_tissue=tile_min_tissue(spec, min_tissue))
    tile_map, stats = run_grid(reader, model, grid, batch_size=batch_size, readers=readers, progress=progress,
                               checkpoint=checkpoint)
    t_run = time.perf_counter()

    map_ds = grid.model_downsample * spec.output_downsample  # level-0 px per map px
    h_map, w_map = math.ceil(height / map_ds), math.ceil(width / map_ds)
    codes = tile_map.to_codes(h_map, w_map)  # uint8 as stored, only now dense (output resolution)
    result = classification_result(scan_id, model, codes=codes, map_ds=map_ds, bounds=(width, height), mpp=meta.mpp)
    timings = {"mask_s": t_mask - t0, "tiles_s": t_run - t_mask, "post_s": time.perf_counter() - t_run}
    return ScanAnalysis(result=result, metadata=meta.to_json(), stats=stats, timings=timings)


def tile_min_tissue(spec: ModelSpec, override: float | None = None) -> float:
    """The share of a tile's core that must be tissue: `override`, else the spec's `outputs.min_tissue`,
    else REGION_MIN_TISSUE for region kinds and DEFAULT_MIN_TISSUE otherwise (see imaging/tiling.py for the
    trade-off between glass read and edges lost)."""
    if override is not None:
        return float(override)
    default = REGION_MIN_TISSUE if spec.kind in REGION_KINDS else DEFAULT_MIN_TISSUE
    return float(spec.outputs.get("min_tissue", default))


def _tile_limit(max_tiles: int, progress: ProgressFn | None) -> ProgressFn:
    """A progress callback that stops the scan as soon as the pipeline reports more tiles than allowed."""

    def guarded(done: int, total: int) -> None:
        if total > max_tiles:
            raise TooManyTilesError(f"the scan's tissue needs {total} tiles; the limit is {max_tiles}",
                                    details={"tiles": total, "limit": max_tiles})
        if progress is not None:
            progress(done, total)

    return guarded


def _analyze_objects(scan_id: str, reader: ScanReader, model: OnnxModel, tissue: ScanTissue, *,
                     t0: float, t_mask: float, tile_size: int | None, batch_size: int | None, readers: int | None,
                     progress: ProgressFn | None, overlap: int | None, min_tissue: float,
                     checkpoint: CheckpointStore | None = None) -> ScanAnalysis:
    """Segmentation / detection kinds: overlapping tiles, objects kept once (inference/objects.py)."""
    meta = reader.metadata
    run = run_objects(reader, model, tissue.mask, tissue.downsample, tile_size=tile_size, overlap=overlap,
                      batch_size=batch_size, readers=readers, progress=progress, min_tissue=min_tissue,
                      checkpoint=checkpoint)
    t_run = time.perf_counter()
    result = objects_result(scan_id, model, run, bounds=meta.dimensions, mpp=meta.mpp, tissue_mm2=tissue.area_mm2)
    timings = {"mask_s": t_mask - t0, "tiles_s": t_run - t_mask, "post_s": time.perf_counter() - t_run,
               "object_post_cpu_s": run.post_s}
    return ScanAnalysis(result=result, metadata=meta.to_json(), stats=run.stats, timings=timings)


def _analyze_regions(scan_id: str, reader: ScanReader, model: OnnxModel, tissue: ScanTissue, *,
                     t0: float, t_mask: float, batch_size: int | None, readers: int | None, progress: ProgressFn | None,
                     overlap: int | None, min_tissue: float, checkpoint: CheckpointStore | None = None) -> ScanAnalysis:
    """Region kinds: a class map per tile (tile-classification: tiles side by side, one class each;
    semantic-segmentation: `outputs.tile_overlap` margins) -> regions per class (inference/regions.py).

    Tiles are always the model's input size: a fixed-size export cannot take another.
    """
    spec = model.spec
    meta = reader.metadata
    width, height = meta.dimensions
    target_ds = spec.mpp / meta.mpp[0] if (spec.mpp and meta.mpp) else 1.0
    if spec.kind == "tile-classification":
        margin = 0  # one class per tile: tiles must not overlap
    else:
        margin = int(spec.outputs.get("tile_overlap", 0)) if overlap is None else overlap
        margin -= margin % spec.output_downsample
    grid = grid_for_model(meta.level_dimensions, meta.level_downsamples, target_ds, spec.input_size, tissue.mask,
                          tissue.downsample, overlap=margin, min_tissue=min_tissue)
    cmap, stats = run_class_grid(reader, model, grid, batch_size=batch_size, readers=readers, progress=progress,
                                 checkpoint=checkpoint)
    t_run = time.perf_counter()
    per_map_px = grid.stride if spec.kind == "tile-classification" else spec.output_downsample
    map_ds = grid.model_downsample * per_map_px
    result = region_result(scan_id, model, cmap, map_ds=map_ds, bounds=(width, height), mpp=meta.mpp,
                           tissue_px=tissue.area_px)
    timings = {"mask_s": t_mask - t0, "tiles_s": t_run - t_mask, "post_s": time.perf_counter() - t_run}
    return ScanAnalysis(result=result, metadata=meta.to_json(), stats=stats, timings=timings)


def classification_result(scan_id: str, model: OnnxModel, *, codes: np.ndarray, map_ds: float,
                          bounds: tuple[int, int], mpp: tuple[float, float] | None) -> ScanResult:
    """A classification model's result from its code map over the whole scan (uint8 p * 255, `map_ds` level-0
    px per map px): the regions where the probability (`code_values(codes)`) reaches the spec's threshold, and
    the heat map's contours at `outputs.contour_levels` (the bench's naive loop builds its result with it too)."""
    spec = model.spec
    label = spec.labels[0] if spec.labels else None
    class_name = label.name if label else spec.name
    colour = label.color if label else "#00ff00"
    threshold = next(iter(spec.thresholds.values()), 0.5)
    um2_per_px = mpp[0] * mpp[1] if mpp else None
    min_area_px = 0.0
    if um2_per_px and spec.outputs.get("min_region_um2"):
        min_area_px = float(spec.outputs["min_region_um2"]) / um2_per_px
    outlines = CodeMapPolygons(codes, map_ds, bounds)  # a level passing the threshold's codes is traced once
    polygons = outlines.polygons(codes_at_least(threshold), min_area=min_area_px, simplify=map_ds * 0.5)
    features, total_px = region_features(polygons, class_name=class_name, colour=colour, um2_per_px=um2_per_px)
    levels = list(spec.outputs.get("contour_levels", []))
    if levels:
        colours = list(spec.outputs.get("contour_colors", ["#ffffff"] * len(levels)))
        per_level = [outlines.polygons(codes_at_least(lv), min_area=min_area_px, simplify=map_ds) for lv in levels]
        if any(per_level):
            features.append(heatmap_feature(levels, colours, per_level))
    slide_px = float(bounds[0] * bounds[1])
    area_mm2 = total_px * um2_per_px / 1e6 if um2_per_px else None
    fraction = total_px / slide_px if slide_px else 0.0
    summary = {
        f"{class_name} area": _fmt_area(area_mm2),
        f"{class_name} fraction": f"{fraction * 100:.1f} %",
        f"{class_name} regions": str(len(polygons)),
        "Model": f"{spec.name} v{spec.version}",
    }
    results: dict[str, Any] = {
        "report": {"summary": summary, "rois": None},
        "model": {"name": spec.name, "version": spec.version, "provider": model.provider},
        f"{class_name.lower()}_area_mm2": area_mm2,
        f"{class_name.lower()}_fraction": round(fraction, 6),
        f"{class_name.lower()}_regions": len(polygons),
    }
    return ScanResult(scanId=scan_id, results=results,
                      geojson={"type": "FeatureCollection", "features": features})
