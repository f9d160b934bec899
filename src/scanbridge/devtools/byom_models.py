"""Bring-your-own-model test material: ONNX models of the patterns labs export, and a slide with known classes.

Every model is built here with the `onnx` helper API (no torch, nothing downloaded) and decides a
pixel's (or a tile's) class the same way: the nearest of a few colour prototypes, scored as
`-GAIN * |rgb - prototype|^2`. What differs is only how it is fed and what it returns, one per pattern
people export from PyTorch / TensorFlow training code:

- `tile-classifier`: torchvision-normalised float32 NCHW input, softmax output (N, K), background last;
- `segmenter`: uint8 NHWC BGR input, raw logits (N, K, h, w) at 1/2 resolution, background first;
- `static-fp16`: float16 NCHW input fixed at batch 1 (the `torch.onnx.export` default), probabilities
  (1, K, h, w) in float16.

`write_class_slide` writes an Aperio-style pyramidal TIFF whose tissue is drawn in those colours
(a tumour ring around a glass gap and a stroma disc, and a stroma rectangle) and returns each class's
true region in level-0 pixels, so a test can compare a model's polygons with the truth by IoU.

    python -m scanbridge.devtools.byom_models --out byom/     # writes <pattern>.onnx + <pattern>.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tifffile
from onnx import TensorProto, helper, numpy_helper
from shapely.geometry import Point, Polygon, box
from shapely.geometry.base import BaseGeometry

OPSET = 18
GAIN = 0.002  # logits per squared 0-255 colour distance
GLASS = (242, 242, 242)
COLOURS: dict[str, tuple[int, int, int]] = {"Tumour": (110, 60, 150), "Stroma": (235, 150, 190)}
TORCHVISION = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_DTYPES = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def build_colour_model(*, kind: str, labels: list[str], prototypes: dict[str, tuple[int, int, int]],
                       input_size: int, input_name: str = "image", output_name: str = "prob",
                       input_layout: str = "NCHW", input_dtype: str = "float32", channel_order: str = "RGB",
                       normalisation: dict[str, Any] | None = None, static_batch: int | None = None,
                       output_downsample: int = 1, softmax: bool = True, output_4d: bool = False,
                       channels_last_output: bool = False) -> bytes:
    """An ONNX model whose output channel i scores how close a pixel (or a tile's mean) is to labels[i]'s colour.

    `kind` is tile-classification (output (N, K), or (N, K, 1, 1) with `output_4d`) or
    semantic-segmentation (output (N, K, s, s), s = input_size / output_downsample; (N, s, s, K) with
    `channels_last_output`, as a Keras export gives it). The graph undoes
    `normalisation` itself, so it gives the same classes however it is fed.
    """
    norm = {"scale": 1.0, "mean": [0.0] * 3, "std": [1.0] * 3, **(normalisation or {})}
    protos = np.asarray([prototypes[lb] for lb in labels], np.float32)  # RGB
    if channel_order == "BGR":
        protos = protos[:, ::-1]
    k = len(labels)
    batch: int | str = static_batch if static_batch else "N"
    side = input_size
    in_shape: list[int | str] = [batch, side, side, 3] if input_layout == "NHWC" else [batch, 3, side, side]
    inits = [
        numpy_helper.from_array((np.asarray(norm["std"], np.float32) / np.float32(norm["scale"])).reshape(1, 3, 1, 1),
                                "norm_std"),
        numpy_helper.from_array((np.asarray(norm["mean"], np.float32) / np.float32(norm["scale"])).reshape(1, 3, 1, 1),
                                "norm_mean"),
        numpy_helper.from_array((2 * GAIN * protos).reshape(k, 3, 1, 1).astype(np.float32), "w"),
        numpy_helper.from_array((-GAIN * (protos ** 2).sum(1)).astype(np.float32), "b"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axis1"),
        numpy_helper.from_array(np.asarray(-GAIN, np.float32), "neg_gain"),
    ]
    nodes = [helper.make_node("Cast", [input_name], ["_xf"], to=TensorProto.FLOAT)]
    x = "_xf"
    if input_layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["_xt"], perm=[0, 3, 1, 2]))
        x = "_xt"
    nodes += [  # back to 0-255 pixels in the model's channel order
        helper.make_node("Mul", [x, "norm_std"], ["_xs"]),
        helper.make_node("Add", ["_xs", "norm_mean"], ["_px"]),
    ]
    x = "_px"
    if kind == "tile-classification":
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["_px_mean"]))
        x = "_px_mean"
    nodes += [  # -GAIN |x - p|^2 = 2 GAIN p.x - GAIN |p|^2 - GAIN |x|^2
        helper.make_node("Conv", [x, "w", "b"], ["_dot"], kernel_shape=[1, 1]),
        helper.make_node("Mul", [x, x], ["_x2"]),
        helper.make_node("ReduceSum", ["_x2", "axis1"], ["_x2s"], keepdims=1),
        helper.make_node("Mul", ["_x2s", "neg_gain"], ["_x2g"]),
        helper.make_node("Add", ["_dot", "_x2g"], ["_logits"]),
    ]
    y = "_logits"
    if kind == "semantic-segmentation" and output_downsample > 1:
        nodes.append(helper.make_node("AveragePool", [y], ["_pooled"], kernel_shape=[output_downsample] * 2,
                                      strides=[output_downsample] * 2))
        y = "_pooled"
    if kind == "tile-classification" and not output_4d:
        nodes.append(helper.make_node("Flatten", [y], ["_flat"], axis=1))
        y = "_flat"
    if softmax:
        nodes.append(helper.make_node("Softmax", [y], ["_soft"], axis=1))
        y = "_soft"
    if channels_last_output and kind == "semantic-segmentation":
        nodes.append(helper.make_node("Transpose", [y], ["_nhwc"], perm=[0, 2, 3, 1]))
        y = "_nhwc"
    out_type = _DTYPES["float16"] if input_dtype == "float16" else TensorProto.FLOAT
    nodes.append(helper.make_node("Cast", [y], [output_name], to=out_type))
    if kind == "tile-classification":
        out_shape: list[int | str] = [batch, k, 1, 1] if output_4d else [batch, k]
    else:
        s = side // output_downsample
        out_shape = [batch, s, s, k] if channels_last_output else [batch, k, s, s]
    graph = helper.make_graph(nodes, f"byom-{kind}",
                              [helper.make_tensor_value_info(input_name, _DTYPES[input_dtype], in_shape)],
                              [helper.make_tensor_value_info(output_name, out_type, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scanbridge-byom")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _labels(names: list[str]) -> list[dict[str, str]]:
    palette = {"Tumour": "#9b30ff", "Stroma": "#ff69b4"}
    return [{"name": n, "color": palette.get(n, "#c0c0c0")} for n in names]


# The three patterns: the spec a lab would write, and how the model is built.
PATTERNS: dict[str, dict[str, Any]] = {
    "tile-classifier": {
        "spec": {"name": "tumour-tiles", "kind": "tile-classification", "mpp": 1.0, "input_name": "input",
                 "input_size": 64, "input_layout": "NCHW", "input_dtype": "float32", "channel_order": "RGB",
                 "normalisation": TORCHVISION, "output_name": "probs", "output_activation": "none",
                 "labels": _labels(["Tumour", "Stroma", "Other"]), "background_labels": ["Other"],
                 "outputs": {"min_region_um2": 10000}},
        "prototypes": {**COLOURS, "Other": GLASS},
    },
    "segmenter": {
        "spec": {"name": "tumour-seg", "kind": "semantic-segmentation", "mpp": 2.0, "input_name": "pixels",
                 "input_size": 128, "input_layout": "NHWC", "input_dtype": "uint8", "channel_order": "BGR",
                 "output_name": "logits", "output_downsample": 2, "output_activation": "softmax",
                 "labels": _labels(["Background", "Tumour", "Stroma"]),
                 "background_labels": ["Background"], "outputs": {"tile_overlap": 16, "min_region_um2": 1000}},
        "prototypes": {**COLOURS, "Background": GLASS},
        "softmax": False,
    },
    "static-fp16": {
        "spec": {"name": "tumour-fp16", "kind": "semantic-segmentation", "mpp": 2.0, "input_name": "input",
                 "input_size": 128, "input_layout": "NCHW", "input_dtype": "float16", "channel_order": "RGB",
                 "normalisation": {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
                 "output_name": "output", "output_downsample": 4,
                 "labels": _labels(["Background", "Tumour", "Stroma"]),
                 "background_labels": ["Background"], "outputs": {"min_region_um2": 1000}},
        "prototypes": {**COLOURS, "Background": GLASS},
        "static_batch": 1,
    },
}


def build_pattern(pattern: str, *, channels_last_output: bool = False, **overrides: Any) -> tuple[bytes, dict[str, Any]]:
    """One pattern's ONNX bytes and its spec (as JSON); `overrides` change spec keys before the model is built."""
    entry = PATTERNS[pattern]
    spec = json.loads(json.dumps({**entry["spec"], **overrides}))
    data = build_colour_model(
        kind=spec["kind"], labels=[lb["name"] for lb in spec["labels"]], prototypes=entry["prototypes"],
        input_size=spec["input_size"], input_name=spec["input_name"], output_name=spec["output_name"],
        input_layout=spec["input_layout"], input_dtype=spec["input_dtype"], channel_order=spec["channel_order"],
        normalisation=spec.get("normalisation"), static_batch=entry.get("static_batch"),
        output_downsample=spec.get("output_downsample", 1), softmax=entry.get("softmax", True),
        channels_last_output=channels_last_output)
    return data, spec


def class_regions(width: int, height: int) -> dict[str, BaseGeometry]:
    """Each class's true region in level-0 pixels for a slide of width x height (shapes scale with it)."""
    u = min(width, height) / 3072
    cx, cy = 1100 * u, 1250 * u
    ring = Point(cx, cy).buffer(800 * u, quad_segs=64).difference(Point(cx, cy).buffer(350 * u, quad_segs=64))
    disc = Point(cx, cy).buffer(220 * u, quad_segs=64)
    rect: Polygon = box(2300 * u, 500 * u, min(width - 200 * u, 3800 * u), 2600 * u)
    return {"Tumour": ring, "Stroma": disc.union(rect)}


def render_classes(width: int, height: int, seed: int) -> np.ndarray:
    """The level-0 RGB image: glass, the class regions in their colours, a little noise."""
    u = min(width, height) / 3072
    cx, cy = 1100 * u, 1250 * u
    xx = np.arange(width, dtype=np.float32)[None, :] + 0.5
    yy = np.arange(height, dtype=np.float32)[:, None] + 0.5
    d = np.hypot(xx - cx, yy - cy)
    tumour = (d <= 800 * u) & (d >= 350 * u)
    stroma = (d <= 220 * u) | (((xx >= 2300 * u) & (xx <= min(width - 200 * u, 3800 * u)))
                               & ((yy >= 500 * u) & (yy <= 2600 * u)))
    del d
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GLASS
    img[tumour] = COLOURS["Tumour"]
    img[stroma] = COLOURS["Stroma"]
    noise = np.random.default_rng(seed).integers(-8, 9, size=(height, width, 1), dtype=np.int16)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_class_slide(path: str | Path, width: int = 4096, height: int = 3072, *, mpp: float = 1.0,
                      seed: int = 0, tile: int = 256) -> dict[str, BaseGeometry]:
    """Write an Aperio-style pyramidal JPEG TIFF with known class regions; returns them (level-0 px).

    Hand-written rather than imaging.synth.make_slide: that writer draws blob tissue with nuclei and
    has no notion of class regions; this one draws flat colour classes the byom models recognise.
    """
    level0 = render_classes(width, height, seed)
    levels = [level0]
    while max(levels[-1].shape[:2]) > 1024:
        prev = levels[-1]
        h, w = prev.shape[0] // 4, prev.shape[1] // 4
        levels.append(prev[:h * 4, :w * 4].reshape(h, 4, w, 4, 3).mean(axis=(1, 3)).astype(np.uint8))
    head = f"Aperio Image Library v12.0.0 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    with tifffile.TiffWriter(Path(path)) as tw:
        for i, arr in enumerate(levels):
            ds = 4.0 ** i
            if i == 0:
                desc = "|".join([f"{head} JPEG/RGB Q=90", f"AppMag = {max(1, round(10 / mpp))}", f"MPP = {mpp:g}",
                                 "ScanScope ID = SCANBRIDGE-BYOM"])
            else:
                desc = f"{head} -> {arr.shape[1]}x{arr.shape[0]} JPEG/RGB Q=90"
            res = 1e4 / (mpp * ds)
            tw.write(arr, tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                     description=desc, metadata=None, subfiletype=0 if i == 0 else 1, resolution=(res, res),
                     resolutionunit="CENTIMETER")
    return class_regions(width, height)


def main(argv: list[str] | None = None) -> int:
    """Write every pattern's model and spec (and, with --slide, a class slide) to --out."""
    parser = argparse.ArgumentParser(prog="python -m scanbridge.devtools.byom_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="byom")
    parser.add_argument("--slide", action="store_true", help="also write classes.svs, a slide with known classes")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for pattern in PATTERNS:
        data, spec = build_pattern(pattern)
        (out / f"{pattern}.onnx").write_bytes(data)
        (out / f"{pattern}.json").write_text(json.dumps(spec, indent=2))
        print(out / f"{pattern}.onnx", out / f"{pattern}.json")
    if args.slide:
        write_class_slide(out / "classes.svs")
        print(out / "classes.svs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
