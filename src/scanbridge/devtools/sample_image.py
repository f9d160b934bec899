"""A small H&E-like image with known nuclei and its truth, for `/v1/infer` and `scanbridge evaluate`.

`scanbridge dev make-image cells.png --truth truth.geojson` writes what the synchronous inference
example (docs/inference-and-evaluation.md) uses: pink tissue with a white margin and dark haematoxylin discs (3 µm radius at
0.5 µm/px) on a jittered grid, and the true nuclei as GeoJSON polygons.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scanbridge.devtools import synth

RADIUS_PX = 6.0  # 3 µm at 0.5 µm/px, like the synthetic slides
MARGIN = 32


def nuclei_image(size: int = 640, spacing: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pink tissue (white margin) with dark haematoxylin discs on a jittered grid; returns (rgb, centres)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), synth.BACKGROUND_LEVEL, np.float32)
    img[MARGIN:size - MARGIN, MARGIN:size - MARGIN] = synth.STROMA_RGB
    colour = np.array(synth.NUCLEUS_RGB, np.float32)
    centres = []
    first, last = MARGIN + spacing // 2, size - MARGIN - spacing // 2
    for gy in range(first, last + 1, spacing):
        for gx in range(first, last + 1, spacing):
            cx, cy = gx + rng.uniform(-8, 8), gy + rng.uniform(-8, 8)
            centres.append((cx, cy))
            x0, x1 = int(cx - RADIUS_PX - 2), int(cx + RADIUS_PX + 3)
            y0, y1 = int(cy - RADIUS_PX - 2), int(cy + RADIUS_PX + 3)
            dx = np.arange(x0, x1) + 0.5 - cx  # pixel j has its centre at j + 0.5
            dy = np.arange(y0, y1) + 0.5 - cy
            alpha = np.clip(RADIUS_PX + 0.5 - np.hypot(dy[:, None], dx[None, :]), 0, 1)[..., None]
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + colour * alpha
    img += rng.normal(0, 3, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), np.array(centres)


def disc_truth(centres: np.ndarray, r: float = RADIUS_PX) -> dict[str, Any]:
    """The true nuclei as GeoJSON polygons (64-gons)."""
    angles = np.linspace(0, 2 * math.pi, 65)
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[float(x + r * math.cos(a)), float(y + r * math.sin(a))] for a in angles]]}} for x, y in centres]}


def make_image_command(out: Path, *, truth: Path | None = None, size: int = 640, seed: int = 0) -> int:
    """`scanbridge dev make-image OUT [--truth GEOJSON] [--size N] [--seed S]`: write the image (and its truth)."""
    rgb, centres = nuclei_image(size, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out)
    print(f"wrote {out} ({size}x{size} px at 0.5 µm/px, {len(centres)} nuclei)")
    if truth:
        truth.write_text(json.dumps(disc_truth(centres)))
        print(f"wrote {truth}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m scanbridge.devtools.sample_image ARGS`: the same as `scanbridge dev make-image ARGS`."""
    from scanbridge.entrypoints.cli import main as cli

    return cli(["dev", "make-image", *(sys.argv[1:] if argv is None else argv)])
