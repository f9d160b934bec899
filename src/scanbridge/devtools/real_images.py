"""The built-in nuclei models on real tissue, against an independent classical method (issue #18).

Real images that installed packages ship, nothing downloaded:

- `ihc`: scikit-image's `data.immunohistochemistry()` (512 x 512, Human Protein Atlas colon, DAB on
  membranes and cytoplasm, haematoxylin counterstain). It has no pixel size; 0.5 µm/px is assumed
  (colon epithelial nuclei come out 5-8 µm wide, as they are).
- `skin`: the 240 x 240 real H&E tile (skin: epidermis over dermal collagen) that the mosaic in
  ../shared/fixtures/thirdparty/ repeats (wsidicom-data's test tile, 0.5 µm/px from the file);
  `mosaic`: that file's whole level 0 (1920 x 1440, the right quarter glass).

(`skimage.data.skin()` is not usable here: it is fetched with pooch on first use, a download.)

The independent method is the classical scikit-image one: `rgb2hed` haematoxylin, `threshold_otsu`,
a distance-transform marker watershed; it shares no code with the built-in graphs. The figures also
say which stain vectors the `nuclei` model used on each image (its per-scan Macenko estimate, or the
reference vectors and why: inference/stains.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IHC_MPP = 0.5  # assumed (see the module docstring)
SKIN_TILE = 240  # the mosaic repeats a 240 x 240 tile


def ihc_image() -> np.ndarray:
    """scikit-image's real IHC colon image (RGB uint8, 512 x 512); shipped inside the wheel."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry())


def mosaic_image(fixtures: Path) -> tuple[np.ndarray, float]:
    """Level 0 of the thirdparty H&E mosaic and its pixel size (µm)."""
    from scanbridge.imaging.readers import open_scan

    reader = open_scan([fixtures / "thirdparty" / "vips_pyramid_jpeg.tif"])
    try:
        w, h = reader.metadata.dimensions
        mpp = reader.metadata.mpp[0] if reader.metadata.mpp else 0.5
        return np.ascontiguousarray(reader.read_region((0, 0), 0, (w, h))), float(mpp)
    finally:
        reader.close()


def skin_tile(fixtures: Path) -> tuple[np.ndarray, float]:
    """The real 240 x 240 H&E skin tile the mosaic is made of, and its pixel size."""
    rgb, mpp = mosaic_image(fixtures)
    return np.ascontiguousarray(rgb[:SKIN_TILE, :SKIN_TILE]), mpp


def classical_nuclei(rgb: np.ndarray, mpp: float, *, min_area_um2: float = 10.0,
                     radius_um: float = 3.0) -> np.ndarray:
    """Label image of nuclei by the classical method: rgb2hed H, Otsu, distance-transform watershed."""
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    h = rgb2hed(rgb)[..., 0]
    mask = h > threshold_otsu(h)
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask, iterations=1))
    comp, _ = ndimage.label(mask)
    sizes = np.bincount(comp.ravel())
    mask = (sizes >= max(1, round(min_area_um2 / (mpp * mpp))))[comp] & mask
    dist = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=max(2, round(0.6 * radius_um / mpp)), labels=ndimage.label(mask)[0],
                           exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    return np.asarray(watershed(-dist, markers, mask=mask), dtype=np.int32)


@dataclass
class Run:
    """One built-in model on one image: its objects and figures."""

    model: str
    count: int
    centroids: np.ndarray  # (n, 2) x, y
    positive: np.ndarray  # (n,) bool (all False for the nuclei model)
    labels: np.ndarray | None  # label image of the outlines (the nuclei model), else None
    results: dict[str, Any] = field(default_factory=dict)


def run_builtin(model: str, rgb: np.ndarray, mpp: float) -> Run:
    """Run a built-in model through the worker's own analyze_scan on an in-memory image."""
    from scanbridge.domain import geojson as gj
    from scanbridge.imaging.readers.memory import MemoryReader
    from scanbridge.inference.analyze import analyze_scan
    from scanbridge.inference.runner import ModelLoader
    from scanbridge.services.evaluation import geojson_objects, rasterise

    reader = MemoryReader(rgb, mpp=mpp)
    analysis = analyze_scan("real", reader, ModelLoader(prefer_gpu=False).load(model), min_tissue=0.0)
    features = list(gj.features(analysis.result.geojson))
    results = analysis.result.results or {}
    xy: list[tuple[float, float]] = []
    pos: list[bool] = []
    labels = None
    nuclei = [f for f in features if gj.properties(f).get("annotation_type") == "nucleus"]
    if nuclei:
        for f in nuclei:
            m = gj.properties(f)["measurements"]
            xy.append((m["Centroid X px"], m["Centroid Y px"]))
            pos.append(False)
        labels = rasterise(geojson_objects({"type": "FeatureCollection", "features": nuclei}), (0, 0), rgb.shape[:2])
    else:
        for f in features:
            kind = gj.properties(f).get("annotation_type")
            if kind in ("positive", "negative"):
                for x, y in gj.points(gj.geometry(f)):
                    xy.append((x, y))
                    pos.append(kind == "positive")
    return Run(model=model, count=int(results.get("nuclei_count", len(xy))),
               centroids=np.array(xy, dtype=np.float64).reshape(-1, 2), positive=np.array(pos, dtype=bool),
               labels=labels, results=results)


def inside_share(points: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of points (x, y) that fall on a labelled pixel of `labels` (None without points)."""
    if len(points) == 0:
        return None
    cols = np.clip(np.floor(points[:, 0]).astype(int), 0, labels.shape[1] - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(int), 0, labels.shape[0] - 1)
    return float(np.mean(labels[rows, cols] > 0))


def figures(name: str, rgb: np.ndarray, mpp: float) -> dict[str, Any]:
    """Every figure of one image: counts, agreement with the classical method, positivity, timings."""
    import time

    from scanbridge.services.evaluation import evaluate_masks

    t0 = time.perf_counter()
    ref = classical_nuclei(rgb, mpp)
    t_ref = time.perf_counter() - t0
    out: dict[str, Any] = {"image": name, "size": [int(rgb.shape[1]), int(rgb.shape[0])], "mpp": mpp,
                           "classical_count": int(ref.max()), "classical_s": round(t_ref, 3)}
    t0 = time.perf_counter()
    nuc = run_builtin("nuclei", rgb, mpp)
    out["nuclei_s"] = round(time.perf_counter() - t0, 3)
    out["nuclei_count"] = nuc.count
    area_mm2 = rgb.shape[0] * rgb.shape[1] * mpp * mpp / 1e6
    out["nuclei_per_mm2_of_image"] = round(nuc.count / area_mm2, 1)
    out["nuclei_mean_area_um2"] = nuc.results.get("mean_nucleus_area_um2")
    vectors = nuc.results.get("stain_vectors") or {}
    out["stain_vectors"] = vectors.get("method")
    if vectors.get("method") == "macenko":
        out["stain_angles_deg"] = vectors.get("angle_from_reference_deg")
    elif vectors.get("reason"):
        out["stain_fallback"] = vectors["reason"]
    if nuc.labels is not None:
        ev = evaluate_masks(nuc.labels, ref)
        out["nuclei_vs_classical"] = {"ap50": round(ev.ap50, 3), "jaccard": round(ev.jaccard, 3),
                                      "tp": ev.tp, "fp": ev.fp, "fn": ev.fn}
        out["nuclei_centroids_in_classical"] = _round(inside_share(nuc.centroids, ref))
        ref_xy = _label_centroids(ref)
        out["classical_centroids_in_nuclei"] = _round(inside_share(ref_xy, nuc.labels))
    t0 = time.perf_counter()
    ihc = run_builtin("ihc-positivity", rgb, mpp)
    out["ihc_s"] = round(time.perf_counter() - t0, 3)
    out["ihc_count"] = ihc.count
    out["ihc_positive"] = int(ihc.positive.sum())
    out["ihc_positivity_percent"] = ihc.results.get("positivity_percent")
    out["ihc_positive_in_classical_nuclei"] = _round(inside_share(ihc.centroids[ihc.positive], ref))
    out["ihc_all_in_classical_nuclei"] = _round(inside_share(ihc.centroids, ref))
    for key in ("h_score", "cell_positive_count", "cell_positivity_percent"):
        if key in ihc.results:
            out[f"ihc_{key}"] = ihc.results[key]
    return out


def _label_centroids(labels: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    n = int(labels.max())
    if n == 0:
        return np.zeros((0, 2))
    c = np.array(ndimage.center_of_mass(labels > 0, labels, np.arange(1, n + 1)))
    return np.column_stack([c[:, 1] + 0.5, c[:, 0] + 0.5])


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 3)
