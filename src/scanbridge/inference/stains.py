"""Stain vectors estimated once per scan (Macenko et al. 2009), Ruifrok & Johnston's as the fallback.

A colour-deconvolution model (the built-in `nuclei` and `ihc-positivity` graphs) takes its deconvolution
matrix as an optional graph input named `STAIN_INPUT` (its default: the reference vectors). The object
pipeline estimates the scan's matrix once, from tissue tiles at the model's resolution (nuclei resolved:
at an overview's 10+ µm per pixel nuclei blend with the stroma and the haematoxylin extreme is lost),
feeds the same matrix to every tile and reports it in the scan's results.

The estimate is the standard Macenko method (as staintools' `MacenkoStainExtractor` and HistomicsTK's
`rgb_separate_stains_macenko_pca` do it): optical density per pixel, pixels with any channel below
`BETA` dropped (glass, near-transparent), the plane of the two largest eigenvectors of the OD covariance,
the 1st and 99th percentile of each pixel's angle in that plane as the two stain directions. The one
with more red absorbance is haematoxylin; the other is eosin or DAB, whichever reference it is nearer.
The third vector is their cross product (scikit-image's completion of a two-stain matrix), so the
matrix is always invertible. The estimate is set aside for the reference vectors when it is
implausible: fewer than `MIN_PIXELS` stained pixels, or a vector more than `MAX_ANGLE_DEG` from its
reference or nearer another stain's reference than its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the graph input a colour-deconvolution model takes its (3, 3) deconvolution matrix from (optional)
STAIN_INPUT = "stain_deconvolution"
#: Ruifrok & Johnston's H-E-DAB stain vectors (rows: OD per R, G, B of one unit of each stain), as in
#: scikit-image's `rgb_from_hed`; the deconvolution matrix is its inverse
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
STAIN_NAMES = ("Hematoxylin", "Eosin", "DAB")

BETA = 0.15  # OD below which a channel counts as transparent (Macenko's beta)
ALPHA = 1.0  # percentile of the angles taken as each stain's direction (Macenko's alpha)
MIN_PIXELS = 5000  # stained pixels needed for an estimate
MAX_ANGLE_DEG = 30.0  # an estimated vector this far from its reference is implausible
SAMPLE_TILES = 16  # tissue tiles read for the estimate
MAX_SAMPLE = 200_000  # pixels used for the eigen-decomposition (a regular subsample beyond)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Base-10 optical density per channel, -log10((x + 1) / 256), as the graphs compute it (float64)."""
    return np.asarray(-np.log10((np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0))


def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    """The angle between two vectors in degrees."""
    cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v))


@dataclass(frozen=True)
class StainVectors:
    """A scan's stain matrix (rows: unit OD vectors of haematoxylin, eosin, DAB) and where it came from."""

    vectors: np.ndarray
    method: str  # "macenko" (estimated from the scan) or "reference" (Ruifrok-Johnston)
    pixels: int = 0  # stained pixels the estimate used
    second: str | None = None  # the stain of the estimate's second vector: "Eosin" or "DAB"
    reason: str = ""  # why the reference vectors, when they are
    angles_deg: dict[str, float] = field(default_factory=dict)  # each estimated vector from its reference

    @property
    def deconvolution(self) -> np.ndarray:
        """The (3, 3) float32 matrix D with stain densities = OD (a row per pixel) @ D: the model's input.

        Haematoxylin and eosin densities come from the scan's matrix (so a scan's brown DAB or pink eosin
        is not read as haematoxylin); the DAB density stays the reference matrix's, the scale on which
        the positivity thresholds are set (see the module docstring).
        """
        d = np.linalg.inv(self.vectors)
        d[:, 2] = HED_FROM_RGB[:, 2]
        return d.astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """The result's `stain_vectors`: method, vectors by stain, pixels, angles, fallback reason."""
        out: dict[str, Any] = {"method": self.method,
                               "vectors": {name: [round(float(v), 4) for v in row]
                                           for name, row in zip(STAIN_NAMES, self.vectors, strict=True)}}
        if self.method == "macenko":
            out.update(pixels=self.pixels, second_stain=self.second,
                       angle_from_reference_deg={k: round(v, 1) for k, v in self.angles_deg.items()})
        if self.reason:
            out["reason"] = self.reason
        return out

    def summary(self) -> str:
        """One line for the report's summary."""
        if self.method == "macenko":
            angles = ", ".join(f"{k} {v:.0f}°" for k, v in self.angles_deg.items())
            return f"estimated from the scan (Macenko, {self.pixels:,} px; from the reference: {angles})"
        return f"reference (Ruifrok-Johnston): {self.reason}" if self.reason else "reference (Ruifrok-Johnston)"


REFERENCE = StainVectors(vectors=RGB_FROM_HED, method="reference")


def macenko_directions(od: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The two stain directions (unit OD vectors) of stained pixels `od` (n, 3): haematoxylin first."""
    _, eigvecs = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = eigvecs[:, [2, 1]]  # the two largest eigenvalues' vectors (eigh sorts ascending)
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    a = _unit(plane @ np.array([math.cos(lo), math.sin(lo)]))
    b = _unit(plane @ np.array([math.cos(hi), math.sin(hi)]))
    return (a, b) if a[0] >= b[0] else (b, a)  # haematoxylin absorbs more red than eosin or DAB


def estimate(pixels: np.ndarray) -> StainVectors:
    """The stain vectors of RGB `pixels` (any shape ending in 3, uint8): Macenko's, or the reference with a reason."""
    od = optical_density(np.asarray(pixels).reshape(-1, 3))
    od = od[(od > BETA).all(axis=1)]
    if len(od) < MIN_PIXELS:
        return StainVectors(RGB_FROM_HED, "reference", pixels=len(od),
                            reason=f"{len(od):,} stained pixels (at least {MIN_PIXELS:,} needed)")
    if len(od) > MAX_SAMPLE:
        od = od[np.linspace(0, len(od) - 1, MAX_SAMPLE).astype(np.intp)]
    h, other = macenko_directions(od)
    ref = [_unit(v) for v in RGB_FROM_HED]
    second = 1 if angle_deg(other, ref[1]) <= angle_deg(other, ref[2]) else 2
    angles = {STAIN_NAMES[0]: angle_deg(h, ref[0]), STAIN_NAMES[second]: angle_deg(other, ref[second])}
    for vec, own in ((h, 0), (other, second)):
        name = STAIN_NAMES[own]
        if angles[name] > MAX_ANGLE_DEG:
            return StainVectors(RGB_FROM_HED, "reference", pixels=len(od), angles_deg=angles,
                                reason=f"the estimated {name} vector is {angles[name]:.0f}° from its reference "
                                       f"(at most {MAX_ANGLE_DEG:.0f}°)")
        nearest = min(range(3), key=lambda i: angle_deg(vec, ref[i]))
        if nearest != own:
            return StainVectors(RGB_FROM_HED, "reference", pixels=len(od), angles_deg=angles,
                                reason=f"the estimated {name} vector is nearer the {STAIN_NAMES[nearest]} reference")
    rows = [h, ref[1], other] if second == 2 else [h, other, ref[2]]
    return StainVectors(np.array(rows), "macenko", pixels=len(od), second=STAIN_NAMES[second], angles_deg=angles)


def spread(count: int, wanted: int = SAMPLE_TILES) -> list[int]:
    """`wanted` indices spread evenly over range(count) (all of them when there are no more)."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def estimate_from_tiles(tiles: Sequence[np.ndarray]) -> StainVectors:
    """The stain vectors of a scan from some of its tissue tiles (RGB, model resolution): every pixel of
    a small sample, every k-th row and column of a large one (about MAX_SAMPLE pixels in all)."""
    if not tiles:
        return StainVectors(RGB_FROM_HED, "reference", reason="no tissue tile")
    stride = max(1, math.isqrt(sum(t.shape[0] * t.shape[1] for t in tiles) // MAX_SAMPLE))
    return estimate(np.concatenate([t[::stride, ::stride].reshape(-1, 3) for t in tiles]))
