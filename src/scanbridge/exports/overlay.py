"""The one overlay renderer: a thumbnail with a scan's results drawn on it (`overlay.png`, the MHS debug ZIP).

Drawn from the scan's level-0 GeoJSON (exactly what was posted to the platform), so the picture and the
posted results never disagree. Readability rules (#20): class colours too close to the scan's own stains
(haematoxylin, eosin, DAB) are swapped for a contrasting one, outlines scale with the picture, small scans
are scaled up pixel-sharp (nearest), and a legend names each class drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from scanbridge.domain import geojson as gj
from scanbridge.inference.stains import RGB_FROM_HED

MIN_OVERLAY_SIDE = 512  # tiny scans are scaled up (nearest) so outlines stay visible
HEATMAP_ALPHA = 0.35
# Outline colours that stand out on haematoxylin (blue-purple), eosin (pink) and DAB (brown): a class colour
# too close to the scan's own stain colours is drawn in the first of these far enough from them.
CONTRAST_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 230, 118), (255, 214, 0), (0, 229, 255), (255, 109, 0), (118, 255, 3), (255, 23, 68))
MIN_COLOUR_DISTANCE = 120.0  # RGB distance below which an outline vanishes into the stain
#: haematoxylin, eosin and DAB as transmitted light shows them at light, usual and dense staining (Ruifrok-Johnston
#: OD vectors, 255 * 10^-OD): outlines keep clear of these on every scan, however little of it a stain covers (the
#: nuclei of a slide are a few % of its pixels, too few to move the thumbnail's quartiles)
REFERENCE_STAIN_RGB = np.array([255.0 * 10.0 ** (-density * od) for od in RGB_FROM_HED for density in (0.3, 0.6, 1.0)],
                               np.float32)


def _rgb(colour: Any, default: tuple[int, int, int] = (0, 200, 0)) -> tuple[int, int, int]:
    if isinstance(colour, (list, tuple)) and len(colour) >= 3:
        return int(colour[0]), int(colour[1]), int(colour[2])
    if isinstance(colour, str) and colour.startswith("#") and len(colour) == 7:
        return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
    return default


def stain_colours(thumb: np.ndarray) -> np.ndarray:
    """The colours an outline must stand out from (k x 3 float RGB): the scan's tissue median and its dark
    (nuclear) and light quartiles, glass (near-white) pixels left out, then the reference stain colours
    (REFERENCE_STAIN_RGB)."""
    rgb = thumb[..., :3].reshape(-1, 3).astype(np.float32)
    tissue = rgb[rgb.min(axis=1) < 215]
    if len(tissue) < 16:
        return REFERENCE_STAIN_RGB
    order = np.argsort(tissue.sum(axis=1))
    n = len(order)
    picks = [order[n // 8], order[n // 4], order[n // 2], order[(3 * n) // 4]]
    return np.concatenate([np.stack([np.median(tissue, axis=0)] + [tissue[i] for i in picks]), REFERENCE_STAIN_RGB])


def visible_colour(colour: tuple[int, int, int], stains: np.ndarray,
                   used: set[tuple[int, int, int]] | None = None) -> tuple[int, int, int]:
    """`colour` when it stands out from every stain colour, else the palette colour farthest from them."""
    if not len(stains):
        return colour

    def distance(c: tuple[int, int, int]) -> float:
        return float(np.sqrt(((stains - np.asarray(c, np.float32)) ** 2).sum(axis=1)).min())

    if distance(colour) >= MIN_COLOUR_DISTANCE:
        return colour
    taken = used or set()
    choices = [c for c in CONTRAST_PALETTE if c not in taken] or list(CONTRAST_PALETTE)
    return max(choices, key=distance)


def _legend(out: Image.Image, entries: dict[str, tuple[int, int, int]]) -> None:
    """A box in the top-left corner with a swatch and the name of each class drawn, its text 1/40 of the
    picture's side (readable where the picture is shown shrunk, as on the dashboard)."""
    if not entries:
        return
    draw = ImageDraw.Draw(out)
    size = max(12, round(max(out.size) / 40))
    font = ImageFont.load_default(size=size)  # Pillow's bundled scalable font: nothing read from the system
    pad = size // 2
    width = pad * 3 + size + max(math.ceil(draw.textlength(name, font=font)) for name in entries)
    height = pad + len(entries) * (size + pad)
    draw.rectangle((0, 0, width, height), fill=(255, 255, 255, 255), outline=(60, 60, 60, 255))
    for i, (name, colour) in enumerate(entries.items()):
        y = pad + i * (size + pad)
        draw.rectangle((pad, y, pad + size, y + size), fill=(*colour, 255), outline=(0, 0, 0, 255))
        draw.text((pad * 2 + size, y + size / 2), name, fill=(0, 0, 0, 255), font=font, anchor="lm")


def write_overlay(out: IO[bytes], thumb: np.ndarray, downsample: float, source: gj.FeatureSource) -> None:
    """PNG into `out`: the thumbnail with heat-map levels filled, every outline / point drawn in its class
    colour (or a contrasting one where that colour would vanish into the stain: see visible_colour),
    outline width scaled to the picture, and a legend of the classes drawn.

    `downsample` is level-0 pixels per thumbnail pixel. The features are read once, one at a time: heat
    maps are composited as they come, outlines and points drawn on a layer of their own laid over them at
    the end (the same picture as drawing every heat map first).
    """
    stains = stain_colours(thumb)
    shown: dict[str, tuple[int, int, int]] = {}
    base = Image.fromarray(np.ascontiguousarray(thumb[..., :3]), "RGB")
    scale_up = max(1, math.ceil(MIN_OVERLAY_SIDE / max(base.size)))
    if scale_up > 1:
        base = base.resize((base.width * scale_up, base.height * scale_up), Image.Resampling.NEAREST)
    k = scale_up / downsample  # thumbnail-out pixels per level-0 pixel

    def xy(ring: list[list[float]]) -> list[tuple[float, float]]:
        return [(x * k, y * k) for x, y in ring]

    picture = base.convert("RGBA")
    marks = Image.new("RGBA", picture.size, (0, 0, 0, 0))  # outlines and points, over every heat map
    draw = ImageDraw.Draw(marks)
    line = max(1, round(max(picture.size) / 400))
    r = max(2, line * 2)
    for f in gj.features(source):
        if gj.is_heatmap(f):  # translucent, under the outlines
            picture = Image.alpha_composite(picture, _heatmap_layer(f, picture.size, xy))
            continue
        geometry = gj.geometry(f)
        if geometry.get("type") not in gj.POLYGONAL | gj.PUNCTUAL:
            continue
        name = gj.class_name(f)
        if name not in shown:
            classification = gj.properties(f).get("classification") or {}
            shown[name] = visible_colour(_rgb(classification.get("color")), stains, set(shown.values()))
        colour = shown[name]
        for ring in gj.rings(geometry):
            if len(ring) >= 2:  # a white halo keeps outlines visible on stain of the class's own colour
                draw.line(xy(ring) + xy(ring[:1]), fill=(255, 255, 255, 255), width=line + 2)
                draw.line(xy(ring) + xy(ring[:1]), fill=(*colour, 255), width=line)
        for x, y in gj.points(geometry):
            draw.ellipse((x * k - r, y * k - r, x * k + r, y * k + r), outline=(*colour, 255), width=line)
    picture = Image.alpha_composite(picture, marks)
    _legend(picture, shown)
    picture.convert("RGB").save(out, "PNG", compress_level=3)  # optimize=True: 7x the time for 7 % fewer bytes


def _heatmap_layer(feature: dict[str, Any], size: tuple[int, int],
                   xy: Callable[[list[list[float]]], list[tuple[float, float]]]) -> Image.Image:
    """One heat map's levels filled in their contour colours, translucent, on a transparent layer."""
    colours = gj.properties(feature).get("contour_colors") or []
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for lv, g in gj.heatmap_parts(feature):
        colour = _rgb(colours[lv] if lv < len(colours) else "#ff0000", (255, 0, 0))
        for ring in gj.rings(g)[:1]:
            if len(ring) >= 3:
                draw.polygon(xy(ring), fill=(*colour, int(255 * HEATMAP_ALPHA)))
    return layer


def render_overlay(thumb: np.ndarray, downsample: float, source: gj.FeatureSource) -> bytes:
    """`write_overlay` as PNG bytes (the MHS debug ZIP)."""
    out = io.BytesIO()
    write_overlay(out, thumb, downsample, source)
    return out.getvalue()
