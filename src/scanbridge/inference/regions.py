"""Region kinds (tile-classification, semantic-segmentation): per-class maps -> regions, heat maps, summary.

The decoder of convention 13 for models whose output channel i is the probability of `labels[i]`: a
pixel's class is the argmax over channels (after the spec's output activation). For every class not in
`background_labels` the result holds its regions (level-0 Polygons with holes, QuPath keys, area in
`measurements`), one heat map (GeometryCollection of the class's probability contours) and its area
and share of the tissue in the summary. The dense maps are built one class at a time from the per-tile
uint8 maps (inference/pipeline.ClassTileMap), so memory stays one byte per map pixel (plus one mask).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from scanbridge.domain.results import ScanResult
from scanbridge.inference.pipeline import ClassTileMap
from scanbridge.inference.postprocess import (
    heatmap_feature,
    hex_to_rgb,
    mask_to_polygons,
    region_features,
)
from scanbridge.inference.session import OnnxModel

DEFAULT_LEVELS = (0.5, 0.75, 0.9)  # heat map contour levels when the spec's outputs name none


def _fmt_area(mm2: float | None) -> str:
    return "n/a (scan has no pixel size)" if mm2 is None else f"{mm2:.3f} mm²"


def region_result(scan_id: str, model: OnnxModel, cmap: ClassTileMap, *, map_ds: float, bounds: tuple[int, int],
                  mpp: tuple[float, float] | None, tissue_px: float) -> ScanResult:
    """The ScanResult of a region model: features per kept class, one heat map each, the class summary.

    `map_ds` is level-0 px per map pixel, `tissue_px` the tissue area in level-0 px (the share's base).
    """
    spec = model.spec
    width, height = bounds
    h_map, w_map = math.ceil(height / map_ds), math.ceil(width / map_ds)
    labels = cmap.label_array(h_map, w_map)
    um2_per_px = mpp[0] * mpp[1] if mpp else None
    min_area_px = 0.0
    if um2_per_px and spec.outputs.get("min_region_um2"):
        min_area_px = float(spec.outputs["min_region_um2"]) / um2_per_px
    levels = [float(v) for v in spec.outputs.get("contour_levels", DEFAULT_LEVELS)]
    features: list[dict[str, Any]] = []
    classes: dict[str, dict[str, Any]] = {}
    summary: dict[str, str] = {}
    tissue_mm2 = tissue_px * um2_per_px / 1e6 if um2_per_px else None
    summary["Tissue area"] = _fmt_area(tissue_mm2)
    for channel in cmap.keep:
        label = spec.labels[channel]
        name = label.name
        mask = drop_small(labels == channel, min_area_px / (map_ds * map_ds))
        polygons = mask_to_polygons(mask, map_ds, bounds, min_area=min_area_px, simplify=map_ds * 0.5)
        del mask
        class_features, area_px = region_features(polygons, class_name=name, colour=label.color,
                                                  um2_per_px=um2_per_px)
        features.extend(class_features)
        prob = cmap.prob_array(channel, h_map, w_map)
        per_level = [mask_to_polygons(drop_small(prob >= round(lv * 255), min_area_px / (map_ds * map_ds)), map_ds,
                                      bounds, min_area=min_area_px, simplify=map_ds) for lv in levels]
        del prob
        if any(per_level):
            colours = list(spec.outputs.get("contour_colors", [label.color] * len(levels)))
            heat = heatmap_feature(levels, colours, per_level)
            heat["properties"]["name"] = f"{name} probability"
            heat["properties"]["heatmap_class"] = {"name": name, "color": hex_to_rgb(label.color)}
            features.append(heat)
        area_mm2 = area_px * um2_per_px / 1e6 if um2_per_px else None
        share = area_px / tissue_px if tissue_px > 0 else 0.0
        classes[name] = {"area_mm2": area_mm2, "area_px": round(area_px, 2), "share_of_tissue": round(share, 6),
                         "regions": len(polygons)}
        summary[f"{name} area"] = _fmt_area(area_mm2)
        summary[f"{name} share of tissue"] = f"{share * 100:.1f} %"
        summary[f"{name} regions"] = str(len(polygons))
    summary["Model"] = f"{spec.name} v{spec.version}"
    results: dict[str, Any] = {
        "report": {"summary": summary, "rois": None},
        "model": {"name": spec.name, "version": spec.version, "kind": spec.kind, "provider": model.provider},
        "classes": classes,
        "tissue_area_mm2": tissue_mm2,
    }
    return ScanResult(scanId=scan_id, results=results, geojson={"type": "FeatureCollection", "features": features})


def drop_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """`mask` without its 8-connected components smaller than `min_pixels` (speckle costs the polygon
    step far more than it is worth, and `min_region_um2` would drop it anyway)."""
    if min_pixels <= 1 or not mask.any():
        return mask
    _, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # the background component
    return np.asarray(keep[comp])
