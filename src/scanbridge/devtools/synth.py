"""Synthetic whole-slide images (Aperio-style pyramidal JPEG TIFF) with exact ground truth.

The slide is described analytically (tissue = union of ellipses, nuclei = discs) and every
pyramid level is rendered tile by tile straight from that description, so memory stays flat
no matter how large the slide is.  ``SlideTruth.tissue_mask`` uses exactly the same
row-span ellipse test as the renderer, so the truth is pixel-exact at any downsample
``4**level``.

The layout is the one Aperio scanners write, so other readers see an Aperio file: level 0 (tiled), the
thumbnail (stripped JPEG) as the second IFD, the lower levels (tiled top-level IFDs, not SubIFDs), then
the label (LZW, NewSubfileType 1) and the macro (JPEG, NewSubfileType 9). OpenSlide detects Aperio when
the *first* IFD is tiled and its ImageDescription starts with "Aperio"; tifffile reads the same layout as
its SVS series (Baseline levels, Thumbnail, Label, Macro).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile

from scanbridge.cpus import usable_cores

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]

BACKGROUND_LEVEL = 240.0
BACKGROUND_NOISE_SIGMA = 1.2
TISSUE_NOISE_SIGMA = 4.0
STROMA_RGB = (232.0, 150.0, 192.0)
NUCLEUS_RGB = (80.0, 60.0, 140.0)
DAB_RGB = (140.0, 90.0, 40.0)
NUCLEUS_DENSITY_PER_MM2 = 1500.0
LEVEL_DOWNSAMPLE = 4
MIN_PYRAMID_SIDE = 1024
FRACTION_TOLERANCE = 0.02
_FIT_MASK_SIDE = 1024
_NOISE_PERIOD = 512
_TEXTURE_COMPONENTS = 4


@dataclass(frozen=True)
class Blob:
    """An elliptical tissue region in level-0 pixels (angle in radians)."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float


@dataclass(frozen=True)
class Nucleus:
    """A nucleus disc in level-0 pixels; ``positive`` nuclei are DAB-brown."""

    cx: float
    cy: float
    r: float
    positive: bool


@dataclass(frozen=True)
class SlideTruth:
    """Ground truth of a synthetic slide."""

    width: int
    height: int
    mpp: float
    tile_size: int
    blobs: tuple[Blob, ...]
    nuclei: tuple[Nucleus, ...]
    tissue_fraction: float
    level_dimensions: tuple[tuple[int, int], ...] = field(default=())

    def tissue_mask(self, downsample: int) -> BoolArray:
        """Return the bool tissue mask at ``downsample`` (pixel-centre sampling, same test as renderer)."""
        if downsample < 1:
            raise ValueError("downsample must be >= 1")
        h = -(-self.height // downsample)
        w = -(-self.width // downsample)
        start, end = _row_spans(_blob_array(self.blobs), float(downsample), 0, h, 0, w)
        return _spans_to_mask(start, end, w)

    def whole_nuclei(self) -> BoolArray:
        """Per nucleus: whether its whole disc (radius + 1 px) lies in tissue (the renderer clips the others)."""
        mask = self.tissue_mask(1)
        angles = np.linspace(0, 2 * math.pi, 16)
        keep = []
        for n in self.nuclei:
            ring = [(n.cx + (n.r + 1) * math.cos(a), n.cy + (n.r + 1) * math.sin(a)) for a in angles]
            keep.append(all(0 <= x < self.width and 0 <= y < self.height and mask[int(y), int(x)] for x, y in ring))
        return np.array(keep, dtype=bool)

    @property
    def positive_count(self) -> int:
        """Return the number of DAB-positive nuclei."""
        return sum(1 for n in self.nuclei if n.positive)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the truth."""
        return {
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "tile_size": self.tile_size,
            "tissue_fraction": self.tissue_fraction,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "blobs": [{"cx": b.cx, "cy": b.cy, "rx": b.rx, "ry": b.ry, "angle": b.angle} for b in self.blobs],
            "nuclei_count": len(self.nuclei),
            "positive_count": self.positive_count,
            "nuclei": [[round(n.cx, 2), round(n.cy, 2), round(n.r, 3), int(n.positive)] for n in self.nuclei],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlideTruth:
        """Rebuild a truth object from ``to_json`` output."""
        return cls(
            width=int(data["width"]),
            height=int(data["height"]),
            mpp=float(data["mpp"]),
            tile_size=int(data["tile_size"]),
            blobs=tuple(Blob(**{k: float(v) for k, v in b.items()}) for b in data["blobs"]),
            nuclei=tuple(Nucleus(float(n[0]), float(n[1]), float(n[2]), bool(n[3])) for n in data["nuclei"]),
            tissue_fraction=float(data["tissue_fraction"]),
            level_dimensions=tuple((int(d[0]), int(d[1])) for d in data.get("level_dimensions", [])),
        )


# --------------------------------------------------------------------------- geometry


def _blob_array(blobs: Sequence[Blob]) -> FloatArray:
    if not blobs:
        return np.zeros((0, 5), dtype=np.float64)
    return np.array([[b.cx, b.cy, b.rx, b.ry, b.angle] for b in blobs], dtype=np.float64)


def _blob_bboxes(arr: FloatArray) -> FloatArray:
    """Return (n, 4) [x0, x1, y0, y1] level-0 bounding boxes of the ellipses."""
    cx, cy, rx, ry, ang = arr.T
    c, s = np.cos(ang), np.sin(ang)
    hx = np.sqrt((rx * c) ** 2 + (ry * s) ** 2)
    hy = np.sqrt((rx * s) ** 2 + (ry * c) ** 2)
    return np.stack([cx - hx, cx + hx, cy - hy, cy + hy], axis=1)


def _row_intervals(arr: FloatArray, ys: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Return (lo, hi), each (len(ys), n): x-range inside each ellipse on row y (empty: lo=inf, hi=-inf)."""
    cx, cy, rx, ry, ang = (col[None, :] for col in arr.T)
    c, s = np.cos(ang), np.sin(ang)
    irx2, iry2 = 1.0 / (rx * rx), 1.0 / (ry * ry)
    a = c * c * irx2 + s * s * iry2
    dy = ys[:, None] - cy
    b = 2.0 * dy * c * s * (irx2 - iry2)
    cc = dy * dy * (s * s * irx2 + c * c * iry2) - 1.0
    disc = b * b - 4.0 * a * cc
    root = np.sqrt(np.maximum(disc, 0.0))
    lo = cx + (-b - root) / (2.0 * a)
    hi = cx + (-b + root) / (2.0 * a)
    empty = disc < 0.0
    lo = np.where(empty, np.inf, lo)
    hi = np.where(empty, -np.inf, hi)
    return lo, hi


def _row_spans(arr: FloatArray, ds: float, iy0: int, h: int, ix0: int, w: int) -> tuple[IntArray, IntArray]:
    """Return column spans [start, end) per row and blob of the window at downsample ``ds``.

    Pixel (i, j) of the level samples level-0 point ((j + 0.5) * ds, (i + 0.5) * ds); it is
    tissue iff lo(y) <= x <= hi(y) for some ellipse.  This is *the* inside test of the module.
    """
    ys = (np.arange(iy0, iy0 + h, dtype=np.float64) + 0.5) * ds
    xs = (np.arange(ix0, ix0 + w, dtype=np.float64) + 0.5) * ds
    if arr.shape[0] == 0:
        z = np.zeros((h, 0), dtype=np.int64)
        return z, z.copy()
    lo, hi = _row_intervals(arr, ys)
    start = np.searchsorted(xs, lo.ravel(), side="left").reshape(lo.shape).astype(np.int64)
    end = np.searchsorted(xs, hi.ravel(), side="right").reshape(hi.shape).astype(np.int64)
    return start, np.maximum(end, start)


def _spans_to_mask(start: IntArray, end: IntArray, w: int) -> BoolArray:
    cols = np.arange(w, dtype=np.int64)[None, :]
    mask = np.zeros((start.shape[0], w), dtype=np.bool_)
    for k in range(start.shape[1]):
        mask |= (cols >= start[:, k, None]) & (cols < end[:, k, None])
    return mask


def _spans_count(start: IntArray, end: IntArray) -> int:
    """Return the number of pixels covered by the union of the spans (exact, no mask)."""
    if start.shape[1] == 0:
        return 0
    order = np.argsort(start, axis=1)
    s = np.take_along_axis(start, order, axis=1)
    e = np.take_along_axis(end, order, axis=1)
    cur = np.zeros(start.shape[0], dtype=np.int64)
    total = 0
    for k in range(s.shape[1]):
        seg_start = np.maximum(s[:, k], cur)
        total += int(np.clip(e[:, k] - seg_start, 0, None).sum())
        cur = np.maximum(cur, e[:, k])
    return total


def _points_inside(arr: FloatArray, x: FloatArray, y: FloatArray) -> BoolArray:
    if arr.shape[0] == 0 or x.size == 0:
        return np.zeros(x.shape, dtype=np.bool_)
    lo, hi = _row_intervals(arr, y)
    return np.any((x[:, None] >= lo) & (x[:, None] <= hi), axis=1)


def _exact_fraction(arr: FloatArray, width: int, height: int, chunk: int = 8192) -> float:
    covered = 0
    for y0 in range(0, height, chunk):
        h = min(chunk, height - y0)
        covered += _spans_count(*_row_spans(arr, 1.0, y0, h, 0, width))
    return covered / float(width * height)


def _measured_fraction(arr: FloatArray, width: int, height: int) -> float:
    ds = max(1, math.ceil(max(width, height) / _FIT_MASK_SIDE))
    h, w = -(-height // ds), -(-width // ds)
    return _spans_count(*_row_spans(arr, float(ds), 0, h, 0, w)) / float(h * w)


def _fit_blobs(rng: np.random.Generator, width: int, height: int, target: float) -> tuple[Blob, ...]:
    """Place a few random ellipses and scale them until their union covers ``target`` of the slide."""
    n = int(rng.integers(2, 6))
    cx = rng.uniform(0.2, 0.8, n) * width
    cy = rng.uniform(0.2, 0.8, n) * height
    rel = rng.uniform(0.6, 1.0, n)
    aspect = rng.uniform(0.45, 1.0, n)
    angle = rng.uniform(0.0, math.pi, n)
    base = 0.5 * min(width, height)

    def build(k: float) -> FloatArray:
        rx = np.maximum(k * base * rel, 0.5)
        ry = np.maximum(rx * aspect, 0.5)
        return np.stack([cx, cy, rx, ry, angle], axis=1)

    lo_k, hi_k = 0.0, 1.0
    while _measured_fraction(build(hi_k), width, height) < target and hi_k < 1e4:
        lo_k, hi_k = hi_k, hi_k * 2.0
    best = build(hi_k)
    best_err = abs(_measured_fraction(best, width, height) - target)
    tol = min(FRACTION_TOLERANCE / 8, 0.02 * target)
    for _ in range(60):
        mid = 0.5 * (lo_k + hi_k)
        arr = build(mid)
        frac = _measured_fraction(arr, width, height)
        err = abs(frac - target)
        if err < best_err:
            best, best_err = arr, err
        if err < tol:
            break
        if frac < target:
            lo_k = mid
        else:
            hi_k = mid
    return tuple(Blob(*(float(v) for v in row)) for row in best)


def _place_nuclei(
    rng: np.random.Generator,
    arr: FloatArray,
    width: int,
    height: int,
    mpp: float,
    radius_um: float,
    positive_fraction: float,
) -> tuple[Nucleus, ...]:
    """Jittered-grid (hence non-overlapping) nuclei at ~NUCLEUS_DENSITY_PER_MM2 inside the blobs."""
    r = radius_um / mpp
    spacing = max(1000.0 / math.sqrt(NUCLEUS_DENSITY_PER_MM2) / mpp, 2.0 * r + 2.0)
    jitter = max(spacing / 2.0 - r - 1.0, 0.0)
    nx, ny = math.ceil(width / spacing), math.ceil(height / spacing)
    gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    x = (gx.ravel() + 0.5) * spacing + rng.uniform(-jitter, jitter, gx.size)
    y = (gy.ravel() + 0.5) * spacing + rng.uniform(-jitter, jitter, gy.size)
    positive = rng.random(gx.size) < positive_fraction
    keep = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    keep[keep] = _points_inside(arr, x[keep], y[keep])
    return tuple(
        Nucleus(float(a), float(b), float(r), bool(p))
        for a, b, p in zip(x[keep], y[keep], positive[keep], strict=True)
    )


def _level_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while min(dims[-1]) >= MIN_PYRAMID_SIDE:
        w, h = dims[-1]
        dims.append((-(-w // LEVEL_DOWNSAMPLE), -(-h // LEVEL_DOWNSAMPLE)))
    return dims


# --------------------------------------------------------------------------- rendering


def _gaussian_blur_valid(img: F32Array, sigma: float, radius: int) -> F32Array:
    """Separable Gaussian blur in 'valid' mode: output shrinks by 2*radius on both axes."""
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    h, w = img.shape[0] - 2 * radius, img.shape[1] - 2 * radius
    tmp = np.zeros((h, img.shape[1], img.shape[2]), dtype=np.float32)
    for i, kv in enumerate(k):
        tmp += kv * img[i : i + h]
    out = np.zeros((h, w, img.shape[2]), dtype=np.float32)
    for i, kv in enumerate(k):
        out += kv * tmp[:, i : i + w]
    return out


class _Renderer:
    """Renders any window of any level from the analytic slide description."""

    def __init__(self, truth: SlideTruth, seed: int, blur_sigma: float) -> None:
        self.truth = truth
        self.blur_sigma = blur_sigma
        self.blobs = _blob_array(truth.blobs)
        self.bboxes = _blob_bboxes(self.blobs) if truth.blobs else np.zeros((0, 4))
        rng = np.random.default_rng([seed, 0x5CA4B])
        self.noise = rng.normal(0.0, 1.0, (_NOISE_PERIOD, _NOISE_PERIOD, 3)).astype(np.float32)
        self.bg_u8 = np.clip(np.rint(BACKGROUND_LEVEL + BACKGROUND_NOISE_SIGMA * self.noise), 0, 255).astype(
            np.uint8
        )
        # texture: sum of plane waves with wavelengths 15..150 um (level-0 px)
        wl = rng.uniform(15.0, 150.0, _TEXTURE_COMPONENTS) / truth.mpp
        theta = rng.uniform(0.0, math.pi, _TEXTURE_COMPONENTS)
        self.tex_kx = 2.0 * math.pi / wl * np.cos(theta)
        self.tex_ky = 2.0 * math.pi / wl * np.sin(theta)
        self.tex_phase = rng.uniform(0.0, 2.0 * math.pi, _TEXTURE_COMPONENTS)
        self.tex_amp = rng.uniform(0.03, 0.07, _TEXTURE_COMPONENTS)
        self.tex_wl = wl
        # nuclei: arrays + a coarse grid index for window queries
        n = truth.nuclei
        self.nx = np.array([q.cx for q in n], dtype=np.float64)
        self.ny = np.array([q.cy for q in n], dtype=np.float64)
        self.nr = np.array([q.r for q in n], dtype=np.float64)
        self.npos = np.array([q.positive for q in n], dtype=np.bool_)
        self.rmax = float(self.nr.max()) if n else 0.0
        self.cell = max(64.0, 4.0 * self.rmax)
        gw = math.ceil(truth.width / self.cell) + 1
        gh = math.ceil(truth.height / self.cell) + 1
        cell_id = np.floor(self.ny / self.cell).astype(np.int64) * gw + np.floor(self.nx / self.cell).astype(
            np.int64
        )
        self.grid_w, self.grid_h = gw, gh
        self.order = np.argsort(cell_id, kind="stable")
        sorted_ids = cell_id[self.order]
        self.cell_start = np.searchsorted(sorted_ids, np.arange(gw * gh), side="left")
        self.cell_end = np.searchsorted(sorted_ids, np.arange(gw * gh), side="right")

    # -- helpers
    def _noise_window(self, bank: npt.NDArray[Any], y0: int, x0: int, h: int, w: int) -> npt.NDArray[Any]:
        p = _NOISE_PERIOD
        ry, rx = y0 % p, x0 % p
        if ry + h <= p and rx + w <= p:
            return bank[ry : ry + h, rx : rx + w]
        rows = np.arange(y0, y0 + h) % p
        cols = np.arange(x0, x0 + w) % p
        return bank[rows[:, None], cols[None, :]]

    def _nuclei_in(self, x0: float, x1: float, y0: float, y1: float) -> IntArray:
        if self.nx.size == 0:
            return np.zeros(0, dtype=np.int64)
        c0 = max(int((x0 - self.rmax) // self.cell), 0)
        c1 = min(int((x1 + self.rmax) // self.cell), self.grid_w - 1)
        r0 = max(int((y0 - self.rmax) // self.cell), 0)
        r1 = min(int((y1 + self.rmax) // self.cell), self.grid_h - 1)
        if c1 < c0 or r1 < r0:
            return np.zeros(0, dtype=np.int64)
        parts = [
            self.order[self.cell_start[row * self.grid_w + c0] : self.cell_end[row * self.grid_w + c1]]
            for row in range(r0, r1 + 1)
        ]
        idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return idx.astype(np.int64)

    def _texture(self, ds: float, iy0: int, h: int, ix0: int, w: int) -> F32Array:
        ys = (np.arange(iy0, iy0 + h, dtype=np.float64) + 0.5) * ds
        xs = (np.arange(ix0, ix0 + w, dtype=np.float64) + 0.5) * ds
        tex = np.ones((h, w), dtype=np.float32)
        for k in range(_TEXTURE_COMPONENTS):
            if self.tex_wl[k] < 4.0 * ds:  # would alias at this level: drop it (a crude low-pass)
                continue
            ax = self.tex_kx[k] * xs + self.tex_phase[k]
            ay = self.tex_ky[k] * ys
            amp = self.tex_amp[k]
            tex += (
                amp * (np.cos(ay)[:, None] * np.sin(ax)[None, :] + np.sin(ay)[:, None] * np.cos(ax)[None, :])
            ).astype(np.float32)
        return tex

    def _draw_nuclei(self, img: F32Array, mask: BoolArray, ds: float, iy0: int, ix0: int) -> None:
        h, w = mask.shape
        idx = self._nuclei_in(ix0 * ds, (ix0 + w) * ds, iy0 * ds, (iy0 + h) * ds)
        if idx.size == 0:
            return
        hema = np.array(NUCLEUS_RGB, dtype=np.float32)
        dab = np.array(DAB_RGB, dtype=np.float32)
        # nucleus centre / radius in window pixel coordinates (pixel j has centre j + 0.5)
        px = self.nx[idx] / ds - ix0
        py = self.ny[idx] / ds - iy0
        pr = self.nr[idx] / ds
        if float(pr.max()) < 1.0:
            # sub-pixel nuclei: splat partial coverage onto the nearest pixel
            jx, jy = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
            ok = (jx >= 0) & (jx < w) & (jy >= 0) & (jy < h)
            jx, jy, pr_ok, pos = jx[ok], jy[ok], pr[ok], self.npos[idx][ok]
            alpha = (np.minimum(math.pi * pr_ok * pr_ok, 1.0) * mask[jy, jx]).astype(np.float32)[:, None]
            col = np.where(pos[:, None], dab[None, :], hema[None, :])
            img[jy, jx] = img[jy, jx] * (1.0 - alpha) + col * alpha
            return
        for k, i in enumerate(idx):
            cx, cy, r = px[k], py[k], pr[k]
            x0, x1 = max(math.floor(cx - r - 1), 0), min(math.ceil(cx + r + 1), w)
            y0, y1 = max(math.floor(cy - r - 1), 0), min(math.ceil(cy + r + 1), h)
            if x1 <= x0 or y1 <= y0:
                continue
            dx = np.arange(x0, x1, dtype=np.float32) + 0.5 - np.float32(cx)
            dy = np.arange(y0, y1, dtype=np.float32) + 0.5 - np.float32(cy)
            dist = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
            alpha = np.clip(np.float32(r) + 0.5 - dist, 0.0, 1.0) * mask[y0:y1, x0:x1]
            # slightly darker rim / lighter centre for a chromatin-like look
            shade = (0.9 + 0.15 * np.clip(dist / max(r, 1e-6), 0.0, 1.0)).astype(np.float32)
            col = dab if self.npos[i] else hema
            a3 = alpha[:, :, None]
            patch = img[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = patch * (1.0 - a3) + (col[None, None, :] * shade[:, :, None]) * a3

    # -- main entry
    def render(self, ds: float, iy0: int, ix0: int, h: int, w: int) -> U8Array:
        """Render the level window (level-pixel origin iy0, ix0; size h x w) as uint8 RGB."""
        sigma = self.blur_sigma / ds
        margin = math.ceil(3.0 * sigma) if sigma >= 0.3 else 0
        my0, mx0, mh, mw = iy0 - margin, ix0 - margin, h + 2 * margin, w + 2 * margin
        lx0, lx1, ly0, ly1 = mx0 * ds, (mx0 + mw) * ds, my0 * ds, (my0 + mh) * ds
        hit = (
            (
                (self.bboxes[:, 1] >= lx0)
                & (self.bboxes[:, 0] <= lx1)
                & (self.bboxes[:, 3] >= ly0)
                & (self.bboxes[:, 2] <= ly1)
            )
            if self.bboxes.shape[0]
            else np.zeros(0, dtype=np.bool_)
        )
        if not hit.any():
            return np.ascontiguousarray(self._noise_window(self.bg_u8, iy0, ix0, h, w))
        start, end = _row_spans(self.blobs[hit], ds, my0, mh, mx0, mw)
        mask = _spans_to_mask(start, end, mw)
        if not mask.any():
            return np.ascontiguousarray(self._noise_window(self.bg_u8, iy0, ix0, h, w))
        tex = self._texture(ds, my0, mh, mx0, mw)
        stroma = np.array(STROMA_RGB, dtype=np.float32)
        img = np.empty((mh, mw, 3), dtype=np.float32)
        img[...] = np.float32(BACKGROUND_LEVEL)
        img[mask] = tex[mask][:, None] * stroma[None, :]
        self._draw_nuclei(img, mask, ds, my0, mx0)
        if margin:
            img = _gaussian_blur_valid(img, sigma, margin)
            inner = mask[margin : margin + h, margin : margin + w]
        else:
            inner = mask
        sig = np.where(inner, np.float32(TISSUE_NOISE_SIGMA), np.float32(BACKGROUND_NOISE_SIGMA))
        img += sig[:, :, None] * self._noise_window(self.noise, iy0, ix0, h, w)
        np.clip(img, 0.0, 255.0, out=img)
        return np.rint(img).astype(np.uint8)


def _tile_iter(render: _Renderer, ds: float, lw: int, lh: int, ts: int, workers: int) -> Iterator[U8Array]:
    coords = [(ty * ts, tx * ts) for ty in range(-(-lh // ts)) for tx in range(-(-lw // ts))]
    if workers <= 1:
        for y, x in coords:
            yield render.render(ds, y, x, ts, ts)
        return
    with ThreadPoolExecutor(workers) as ex:
        pending: deque[Future[U8Array]] = deque()
        for y, x in coords:
            pending.append(ex.submit(render.render, ds, y, x, ts, ts))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _aperio_description(
    truth: SlideTruth, quality: int, level_dims: tuple[int, int] | None, name: str
) -> str:
    w, h, ts = truth.width, truth.height, truth.tile_size
    head = f"Aperio Image Library v12.0.0 \r\n{w}x{h} [0,0 {w}x{h}] ({ts}x{ts})"
    if level_dims is not None:
        return f"{head} -> {level_dims[0]}x{level_dims[1]} JPEG/RGB Q={quality}"
    mag = max(1, round(10.0 / truth.mpp))
    fields = [
        f"{head} JPEG/RGB Q={quality}",
        f"AppMag = {mag}",
        "StripeWidth = 2048",
        "ScanScope ID = SCANBRIDGE-SYNTH",
        f"Filename = {name}",
        "Date = 01/01/26",
        "Time = 00:00:00",
        "User = scanbridge",
        f"MPP = {truth.mpp:g}",
        "Left = 0.000000",
        "Top = 0.000000",
        f"Synthetic = scanbridge.devtools.synth nuclei={len(truth.nuclei)}",
    ]
    return "|".join(fields)


def make_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    tissue_fraction: float = 0.25,
    tile_size: int = 256,
    mpp: float = 0.25,
    seed: int = 0,
    quality: int = 85,
    nuclei: bool = True,
    nucleus_radius_um: float = 3.0,
    positive_fraction: float = 0.0,
    blur_sigma: float = 0.0,
    blank: bool = False,
) -> SlideTruth:
    """Write a synthetic Aperio-style pyramidal JPEG TIFF to ``path`` and return its exact truth."""
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    if tile_size < 16 or tile_size % 16:
        raise ValueError("tile_size must be a positive multiple of 16 (JPEG 4:2:0 subsampling)")
    if not 0.0 <= tissue_fraction <= 1.0:
        raise ValueError("tissue_fraction must be in [0, 1]")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError("positive_fraction must be in [0, 1]")
    if mpp <= 0 or nucleus_radius_um <= 0 or blur_sigma < 0:
        raise ValueError("mpp and nucleus_radius_um must be > 0, blur_sigma >= 0")
    if not 1 <= quality <= 100:
        raise ValueError("quality must be in [1, 100]")

    rng = np.random.default_rng(seed)
    blobs: tuple[Blob, ...] = ()
    if not blank and tissue_fraction > 0.0:
        blobs = _fit_blobs(rng, width, height, tissue_fraction)
    arr = _blob_array(blobs)
    exact = _exact_fraction(arr, width, height) if blobs else 0.0
    nucs: tuple[Nucleus, ...] = ()
    if nuclei and blobs:
        nucs = _place_nuclei(rng, arr, width, height, mpp, nucleus_radius_um, positive_fraction)
    dims = _level_dimensions(width, height)
    truth = SlideTruth(
        width=width,
        height=height,
        mpp=float(mpp),
        tile_size=tile_size,
        blobs=blobs,
        nuclei=nucs,
        tissue_fraction=exact,
        level_dimensions=tuple(dims),
    )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    renderer = _Renderer(truth, seed, blur_sigma)
    workers = min(4, usable_cores())
    tile_bytes = tile_size * tile_size * 3
    name = path.stem.replace("|", "_")
    bigtiff = width * height * 3 > 2**31  # JPEG is far smaller, but stay safe for huge slides
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for level, (lw, lh) in enumerate(dims):
            ds = float(LEVEL_DOWNSAMPLE**level)
            desc = _aperio_description(truth, quality, None if level == 0 else (lw, lh), name)
            res = 1e4 / (mpp * ds)
            tw.write(
                data=_tile_iter(renderer, ds, lw, lh, tile_size, workers),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                photometric="rgb",  # stored as JPEG YCbCr 4:2:0, PhotometricInterpretation=YCbCr
                compression="jpeg",
                compressionargs={"level": quality},
                description=desc,
                metadata=None,
                subfiletype=0,  # Aperio writes NewSubfileType 0 for every level (1 marks the label)
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                maxworkers=workers,
                # tifffile buffers buffersize bytes of tiles before compressing (default 512 MiB)
                buffersize=64 * tile_bytes,
            )
            if level == 0:  # Aperio writes the thumbnail (stripped JPEG) as the second image
                _write_associated(tw, "thumbnail", renderer, truth, quality, name)
        _write_associated(tw, "label", renderer, truth, quality, name)
        _write_associated(tw, "macro", renderer, truth, quality, name)
    return truth


THUMBNAIL_SIDE, MACRO_SIDE, LABEL_SIDE = 1024, 1024, 256


def _write_associated(tw: tifffile.TiffWriter, kind: str, renderer: _Renderer, truth: SlideTruth, quality: int,
                      name: str) -> None:
    """An Aperio associated image: the thumbnail (2nd IFD), label (LZW, NewSubfileType 1) and macro
    (JPEG, NewSubfileType 9), untiled, named on the second line of their ImageDescription."""
    w, h = truth.width, truth.height
    head = f"Aperio Image Library v12.0.0 \r\n{w}x{h} [0,0 {w}x{h}] ({truth.tile_size}x{truth.tile_size})"
    if kind == "label":
        img = np.full((LABEL_SIDE, LABEL_SIDE, 3), 250, np.uint8)
        img[32:64, 24:232] = 20  # a printed barcode-like bar, then the slide name's "text" rows
        for row in range(96, 224, 32):
            img[row:row + 12, 24:24 + 16 * (1 + len(name) % 12)] = 40
        tw.write(img, photometric="rgb", compression="lzw", subfiletype=1, metadata=None,
                 description=f"Aperio Image Library v12.0.0\r\nlabel {LABEL_SIDE}x{LABEL_SIDE}")
        return
    side = THUMBNAIL_SIDE if kind == "thumbnail" else MACRO_SIDE
    ds = max(w / side, h / side, 1.0)
    tw_, th_ = max(1, round(w / ds)), max(1, round(h / ds))
    img = renderer.render(ds, 0, 0, th_, tw_)
    if kind == "thumbnail":
        tw.write(img, photometric="rgb", compression="jpeg", compressionargs={"level": quality}, metadata=None,
                 subfiletype=0, rowsperstrip=16, description=f"{head} -> {tw_}x{th_} JPEG/RGB Q={quality}")
    else:
        macro = np.full((th_, tw_ + th_ // 2, 3), 235, np.uint8)  # the slide glass with its label end
        macro[:, : th_ // 2] = 200
        macro[:, th_ // 2:] = img
        tw.write(macro, photometric="rgb", compression="jpeg", compressionargs={"level": quality}, metadata=None,
                 subfiletype=9, rowsperstrip=16,
                 description=f"Aperio Image Library v12.0.0\r\nmacro {macro.shape[1]}x{macro.shape[0]}")


def make_slide_command(out: Path, *, width: int = 8192, height: int = 8192, tissue_fraction: float = 0.25,
                       tile_size: int = 256, mpp: float = 0.25, seed: int = 0, quality: int = 85,
                       nuclei: bool = True, positive_fraction: float = 0.0, blur_sigma: float = 0.0,
                       blank: bool = False, truth_json: Path | None = None) -> int:
    """`scanbridge dev make-slide`: write a synthetic slide (and optionally its truth JSON), print a summary."""
    t0 = time.perf_counter()
    truth = make_slide(out, width, height, tissue_fraction=tissue_fraction, tile_size=tile_size, mpp=mpp, seed=seed,
                       quality=quality, nuclei=nuclei, positive_fraction=positive_fraction, blur_sigma=blur_sigma,
                       blank=blank)
    dt = time.perf_counter() - t0
    if truth_json is not None:
        truth_json.parent.mkdir(parents=True, exist_ok=True)
        truth_json.write_text(json.dumps(truth.to_json()))
    print(
        f"wrote {out} {truth.width}x{truth.height} levels={len(truth.level_dimensions)} "
        f"tissue={truth.tissue_fraction:.4f} blobs={len(truth.blobs)} nuclei={len(truth.nuclei)} "
        f"positive={truth.positive_count} size={out.stat().st_size / 1e6:.1f}MB in {dt:.1f}s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m scanbridge.devtools.synth ARGS`: the same as `scanbridge dev make-slide ARGS` (entrypoints/cli.py)."""
    from scanbridge.entrypoints.cli import main as cli

    return cli(["dev", "make-slide", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
