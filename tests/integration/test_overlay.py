"""Overlays a person can read: outlines that stand out from the stain, a legend of the classes drawn."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from scanbridge.devtools import synth
from scanbridge.domain.catalog import NUCLEI_SPEC
from scanbridge.exports.overlay import MIN_COLOUR_DISTANCE, render_overlay, stain_colours, visible_colour
from tests.conftest import fixture_path


def _square(x: float, y: float, side: float, name: str, colour: list[int]) -> dict[str, object]:
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"classification": {"name": name, "color": colour}}}


def _distance(a: np.ndarray, b: tuple[int, int, int]) -> float:
    return float(np.sqrt(((a.astype(np.float32) - np.asarray(b, np.float32)) ** 2).sum()))


def test_nucleus_outlines_stand_out_from_haematoxylin_and_carry_a_legend() -> None:
    # GIVEN a real H&E thumbnail and nuclei in the built-in nucleus colour (indigo, close to haematoxylin)
    thumb = tifffile.imread(fixture_path("thirdparty/vips_pyramid_jpeg.tif"), level=1)  # 960 x 720
    nucleus = NUCLEI_SPEC.labels[0]
    indigo = tuple(int(nucleus.color[i:i + 2], 16) for i in (1, 3, 5))
    stains = stain_colours(thumb)
    geojson = {"type": "FeatureCollection", "features": [
        _square(400, 400, 200, nucleus.name, list(indigo)), _square(1000, 600, 240, "Stroma", [0, 230, 118])]}
    # WHEN the overlay is drawn
    png = np.asarray(Image.open(io.BytesIO(render_overlay(thumb, 2.0, geojson))).convert("RGB"))
    shown = visible_colour(indigo, stains)  # type: ignore[arg-type]
    # THEN the indigo outlines are drawn in a colour far from every stain colour of the scan
    assert _distance(stains[0], indigo) < MIN_COLOUR_DISTANCE  # the problem is real on this tissue
    assert min(_distance(s, shown) for s in stains) >= MIN_COLOUR_DISTANCE
    top_edge = png[200, 220:280]  # y = 400 level-0 px / 2 = row 200; x 440-560 -> cols 220-280
    assert (np.abs(top_edge.astype(int) - shown).sum(axis=1) < 30).mean() > 0.8
    # AND a colour that already stands out is kept, and both classes have a swatch in the legend corner
    assert visible_colour((0, 230, 118), stains) == (0, 230, 118)
    corner = png[:80, :200].reshape(-1, 3)
    for colour in (shown, (0, 230, 118)):
        assert (np.abs(corner.astype(int) - colour).sum(axis=1) < 10).sum() > 20


def test_nucleus_outlines_stand_out_on_a_generated_slide_whose_nuclei_are_a_few_percent_of_it(tmp_path: Path) -> None:
    # GIVEN a generated H&E slide, whose nuclei are too few pixels to move its thumbnail's colour quartiles, and
    # its true nuclei as outlines in the built-in nucleus colour (indigo)
    path = tmp_path / "slide.svs"
    truth = synth.make_slide(path, 2048, 2048, tissue_fraction=0.5, mpp=0.25, seed=1)
    thumb = tifffile.imread(path, key=1)  # the thumbnail, the second image as Aperio writes it
    ds = truth.width / thumb.shape[1]
    nucleus = NUCLEI_SPEC.labels[0]
    indigo = tuple(int(nucleus.color[i:i + 2], 16) for i in (1, 3, 5))
    geojson = {"type": "FeatureCollection", "features": [
        _square(n.cx - n.r, n.cy - n.r, 2 * n.r, nucleus.name, list(indigo)) for n in truth.nuclei]}
    # WHEN the overlay is drawn
    png = np.asarray(Image.open(io.BytesIO(render_overlay(thumb, ds, geojson))).convert("RGB"))
    # THEN the nuclei's own colour on the thumbnail is near indigo (the problem is real on this slide) ...
    centres = np.array([(round(n.cy / ds), round(n.cx / ds)) for n in truth.nuclei])
    stained = np.median(thumb[centres[:, 0], centres[:, 1]].astype(np.float32), axis=0)
    assert _distance(stained, indigo) < MIN_COLOUR_DISTANCE, stained  # type: ignore[arg-type]
    # AND the colour the outlines are drawn in (the legend's swatch) is far from it, and is what the outlines show
    swatch = tuple(int(v) for v in png[12, 12])
    assert _distance(stained, swatch) >= MIN_COLOUR_DISTANCE, (stained, swatch)  # type: ignore[arg-type]
    tissue = png[200:]
    assert (np.abs(tissue.astype(int) - swatch).sum(axis=2) < 30).sum() > 5 * len(truth.nuclei)
