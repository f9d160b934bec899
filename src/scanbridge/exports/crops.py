"""`crops.zip`: RGBA PNG crops of a scan's cells / nuclei at level 0, transparent outside each outline."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterable
from typing import IO, Any

import numpy as np
from PIL import Image

from scanbridge.domain import geojson as gj
from scanbridge.exports.raster import rasterize
from scanbridge.imaging.readers.base import ScanReader

CELL_TYPES = frozenset({"nucleus", "nuclei", "cell", "cells"})


def is_cell_feature(feature: dict[str, Any]) -> bool:
    """A polygon whose annotation_type says it is a cell or nucleus."""
    return str(gj.properties(feature).get("annotation_type", "")).lower() in CELL_TYPES and \
        gj.geometry_type(feature) in gj.POLYGONAL


def write_cell_crops(out: IO[bytes], reader: ScanReader, features: Iterable[dict[str, Any]], *,
                     max_crops: int = 200, pad: int = 4, max_side: int = 256) -> int:
    """A ZIP into `out` of RGBA PNG crops (level 0, outside the outline transparent) of the first
    `max_crops` cells of `features` (read only as far as those), with `index.csv` (file, object id,
    level-0 bbox); returns the crop count."""
    width, height = reader.metadata.dimensions
    rows = ["file,object_id,x,y,width,height"]
    count = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in features:
            if count >= max_crops:
                break
            outlines = gj.rings(gj.geometry(f))
            if not outlines:
                continue
            pts = np.asarray(outlines[0], dtype=np.float64)
            x0 = max(0, math.floor(pts[:, 0].min()) - pad)
            y0 = max(0, math.floor(pts[:, 1].min()) - pad)
            x1 = min(width, math.ceil(pts[:, 0].max()) + pad)
            y1 = min(height, math.ceil(pts[:, 1].max()) + pad)
            w, h = x1 - x0, y1 - y0
            if w <= 0 or h <= 0 or max(w, h) > max_side:
                continue
            rgb = reader.read_region((x0, y0), 0, (w, h))
            alpha = rasterize([[[pts]]], (w, h), values=[255], origin=(x0, y0), dtype=np.uint8)
            png = io.BytesIO()
            Image.fromarray(np.dstack([rgb[..., :3], alpha]), "RGBA").save(png, "PNG")
            count += 1
            name = f"cell_{count:04d}.png"
            zf.writestr(name, png.getvalue())
            rows.append(f"{name},{f.get('id', '')},{x0},{y0},{w},{h}")
        zf.writestr("index.csv", "\n".join(rows) + "\n")
        zf.writestr("README.json", json.dumps({"crops": count, "cap": max_crops, "level": 0,
                                               "note": "RGBA PNG; alpha 0 outside the object's outline"}))
    return count
