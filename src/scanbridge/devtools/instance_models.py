"""ONNX models in the shape of the common instance exports, built with the `onnx` helper API (no weights).

They stand in for a lab's HoVer-Net, StarDist or detector export in tests and in the examples of
docs/instance-models.md, and compute their outputs from the image: nuclear probability from
haematoxylin / DAB optical density (the built-in models' colour deconvolution), and each pixel's offset
to its nucleus' centre from a local centre of mass of that probability (a (4r+1)-pixel window: exact
for a nucleus of radius r with no neighbour within 3r). From these:

- `build_hovernet_model`: `np` (N, 2, h, w) background / nucleus probabilities (or logits, for
  `output_activation: softmax`), `hv` (N, 2, h, w) horizontal then vertical offsets to the centre in
  [-1, 1], `tp` (N, 3, h, w) Background / Negative / Positive (DAB) type probabilities; optionally at
  half resolution (`downsample` 2) and/or cropped like a valid-convolution net (`crop`).
- `build_stardist_model`: `prob` (N, 1, H, W) and `rays` (N, R, H, W): the distance from each pixel
  to the edge of a disc of radius r around its centre, ray k at angle 2 pi k / R from +x towards +y.
- `build_box_model`: `boxes` (N, M, 6) x1, y1, x2, y2, score, class (0 Negative, 1 Positive) in input
  pixels, one per nucleus (the centre's local maximum), or cx, cy, w, h with `box_format="cxcywh"`.

The `*_spec` functions give the matching ModelSpec as a dict (what `PUT /admin/models/{name}` takes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from scanbridge.inference.zoo import _channel, _const, _deconvolution, _finish, _soft_threshold

H_THRESHOLD, DAB_THRESHOLD, GAIN = 0.35, 0.5, 20.0
EPS = 1e-6


def _nuclei(inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """image -> p_nuc (nucleus probability), p_dab (DAB probability), each (N, 1, H, W)."""
    nodes = _deconvolution(inits)
    nodes.append(_channel(inits, "stain_od", 0, "h_od"))
    nodes.append(_channel(inits, "stain_od", 2, "dab_od"))
    nodes += _soft_threshold(inits, "h_od", H_THRESHOLD, GAIN, "p_h")
    nodes += _soft_threshold(inits, "dab_od", DAB_THRESHOLD, GAIN, "p_dab")
    nodes.append(helper.make_node("Max", ["p_h", "p_dab"], ["p_nuc"]))
    return nodes


def _offsets(inits: list[onnx.TensorProto], radius: float) -> list[onnx.NodeProto]:
    """p_nuc -> off_x, off_y: the centre of mass of p_nuc in a (4r+1) window, relative to the pixel."""
    half = max(1, math.ceil(2 * radius))
    k = 2 * half + 1
    d = np.arange(k, dtype=np.float32) - half
    w = np.stack([np.ones((k, k), np.float32), np.tile(d, (k, 1)), np.tile(d[:, None], (1, k))])[:, None]
    inits += [_const("com_w", w), _const("com_eps", EPS)]
    nodes = [helper.make_node("Conv", ["p_nuc", "com_w"], ["com"], kernel_shape=[k, k], pads=[half] * 4)]
    for i, name in enumerate(("com_m", "com_x", "com_y")):
        nodes.append(_channel(inits, "com", i, name))
    nodes += [
        helper.make_node("Add", ["com_m", "com_eps"], ["com_m1"]),
        helper.make_node("Div", ["com_x", "com_m1"], ["off_x"]),
        helper.make_node("Div", ["com_y", "com_m1"], ["off_y"]),
    ]
    return nodes


def _centreness(inits: list[onnx.TensorProto], radius: float) -> list[onnx.NodeProto]:
    """off_x, off_y, p_nuc -> dist2 (squared offset) and centre = p_nuc * clip(1 - |offset| / r, 0, 1)."""
    inits += [_const("inv_r", 1.0 / radius), _const("c_zero", 0.0), _const("c_one", 1.0)]
    return [
        helper.make_node("Mul", ["off_x", "off_x"], ["off_x2"]),
        helper.make_node("Mul", ["off_y", "off_y"], ["off_y2"]),
        helper.make_node("Add", ["off_x2", "off_y2"], ["dist2"]),
        helper.make_node("Sqrt", ["dist2"], ["dist1"]),
        helper.make_node("Mul", ["dist1", "inv_r"], ["dist_r"]),
        helper.make_node("Sub", ["c_one", "dist_r"], ["lin"]),
        helper.make_node("Clip", ["lin", "c_zero", "c_one"], ["lin_c"]),
        helper.make_node("Mul", ["lin_c", "p_nuc"], ["centre"]),
    ]


def _resample(inits: list[onnx.TensorProto], source: str, out: str, downsample: int, crop: int) -> list[onnx.NodeProto]:
    """`source` averaged over downsample x downsample blocks, then `crop` pixels cut off every side."""
    nodes: list[onnx.NodeProto] = []
    current = source
    if downsample > 1:
        nodes.append(helper.make_node("AveragePool", [current], [f"{out}_pool"], kernel_shape=[downsample] * 2,
                                      strides=[downsample] * 2))
        current = f"{out}_pool"
    if crop:
        inits += [_const(f"{out}_cs", [crop, crop], np.int64), _const(f"{out}_ce", [-crop, -crop], np.int64),
                  _const(f"{out}_ca", [2, 3], np.int64)]
        nodes.append(helper.make_node("Slice", [current, f"{out}_cs", f"{out}_ce", f"{out}_ca"], [f"{out}_crop"]))
        current = f"{out}_crop"
    nodes.append(helper.make_node("Identity", [current], [out]))
    return nodes


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, "H", "W"])


def build_hovernet_model(radius_px: float = 6.0, *, downsample: int = 1, crop: int = 0, logits: bool = False) -> bytes:
    """A HoVer-Net-style export: `np`, `hv`, `tp` (see the module docstring); `radius_px` in input pixels."""
    inits: list[onnx.TensorProto] = []
    nodes = _nuclei(inits) + _offsets(inits, radius_px)
    inits += [_const("hv_scale", -1.0 / radius_px), _const("hv_lo", -1.0), _const("hv_hi", 1.0),
              _const("np_one", 1.0)]
    nodes += [
        helper.make_node("Mul", ["off_x", "hv_scale"], ["hv_x0"]),
        helper.make_node("Mul", ["off_y", "hv_scale"], ["hv_y0"]),
        helper.make_node("Clip", ["hv_x0", "hv_lo", "hv_hi"], ["hv_x1"]),
        helper.make_node("Clip", ["hv_y0", "hv_lo", "hv_hi"], ["hv_y1"]),
        helper.make_node("Mul", ["hv_x1", "p_nuc"], ["hv_x"]),
        helper.make_node("Mul", ["hv_y1", "p_nuc"], ["hv_y"]),
        helper.make_node("Concat", ["hv_x", "hv_y"], ["hv_full"], axis=1),
        helper.make_node("Sub", ["np_one", "p_nuc"], ["p_bg"]),
        helper.make_node("Sub", ["np_one", "p_dab"], ["p_notdab"]),
        helper.make_node("Mul", ["p_nuc", "p_notdab"], ["p_neg"]),
        helper.make_node("Mul", ["p_nuc", "p_dab"], ["p_pos"]),
        helper.make_node("Concat", ["p_bg", "p_neg", "p_pos"], ["tp_full"], axis=1),
    ]
    if logits:  # softmax([-l/2, l/2]) = [1 - p, p] with l = logit(p)
        inits += [_const("np_eps", EPS), _const("np_half", 0.5), _const("np_nhalf", -0.5)]
        nodes += [
            helper.make_node("Add", ["p_nuc", "np_eps"], ["p_e"]),
            helper.make_node("Add", ["p_bg", "np_eps"], ["q_e"]),
            helper.make_node("Log", ["p_e"], ["log_p"]),
            helper.make_node("Log", ["q_e"], ["log_q"]),
            helper.make_node("Sub", ["log_p", "log_q"], ["logit"]),
            helper.make_node("Mul", ["logit", "np_nhalf"], ["l_bg"]),
            helper.make_node("Mul", ["logit", "np_half"], ["l_fg"]),
            helper.make_node("Concat", ["l_bg", "l_fg"], ["np_full"], axis=1),
        ]
    else:
        nodes.append(helper.make_node("Concat", ["p_bg", "p_nuc"], ["np_full"], axis=1))
    for name in ("np", "hv", "tp"):
        nodes += _resample(inits, f"{name}_full", name, downsample, crop)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c, "h", "w"]) for n, c in (("np", 2), ("hv", 2),
                                                                                                 ("tp", 3))]
    return _finish(nodes, "hovernet_style", [_image_input()], outs, inits)


def build_stardist_model(radius_px: float = 6.0, *, n_rays: int = 32) -> bytes:
    """A StarDist-style export: `prob` (N, 1, H, W) and `rays` (N, n_rays, H, W) in input pixels."""
    inits: list[onnx.TensorProto] = []
    nodes = _nuclei(inits) + _offsets(inits, radius_px) + _centreness(inits, radius_px)
    phis = 2 * np.pi * np.arange(n_rays) / n_rays
    inits += [_const("ray_w", np.stack([np.cos(phis), np.sin(phis)], axis=1).reshape(n_rays, 2, 1, 1)),
              _const("neg1", -1.0), _const("r2", radius_px * radius_px), _const("r_zero", 0.0)]
    nodes += [
        # d = pixel - centre = -offset; ray k from the pixel meets the circle at t = -d.u + sqrt((d.u)^2 - |d|^2 + r^2)
        helper.make_node("Concat", ["off_x", "off_y"], ["off"], axis=1),
        helper.make_node("Mul", ["off", "neg1"], ["dvec"]),
        helper.make_node("Conv", ["dvec", "ray_w"], ["proj"], kernel_shape=[1, 1]),
        helper.make_node("Mul", ["proj", "proj"], ["proj2"]),
        helper.make_node("Sub", ["proj2", "dist2"], ["disc0"]),
        helper.make_node("Add", ["disc0", "r2"], ["disc1"]),
        helper.make_node("Max", ["disc1", "r_zero"], ["disc"]),
        helper.make_node("Sqrt", ["disc"], ["root"]),
        helper.make_node("Sub", ["root", "proj"], ["t"]),
        helper.make_node("Max", ["t", "r_zero"], ["rays"]),
        helper.make_node("Identity", ["centre"], ["prob"]),
    ]
    outs = [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, "H", "W"]),
            helper.make_tensor_value_info("rays", TensorProto.FLOAT, ["N", n_rays, "H", "W"])]
    return _finish(nodes, "stardist_style", [_image_input()], outs, inits)


def build_box_model(radius_px: float = 6.0, *, max_boxes: int = 100, box_format: str = "xyxy") -> bytes:
    """A detector export: `boxes` (N, max_boxes, 6), one box of side 2 r per nucleus, score = centre-ness."""
    inits: list[onnx.TensorProto] = []
    nodes = _nuclei(inits) + _offsets(inits, radius_px) + _centreness(inits, radius_px)
    k = 2 * math.ceil(radius_px) + 1
    inits += [_const("b_half", 0.5), _const("b_r", radius_px),
              _const("b_axis_w", 3, np.int64), _const("b_axis_h", 2, np.int64), _const("b_zero", 0.0),
              _const("b_flat", [0, -1], np.int64), _const("b_k", [max_boxes], np.int64),
              _const("b_unsq", [2], np.int64), _const("b_dab", DAB_THRESHOLD)]
    nodes += [
        helper.make_node("MaxPool", ["centre"], ["c_max"], kernel_shape=[k, k], pads=[k // 2] * 4),
        helper.make_node("Equal", ["centre", "c_max"], ["is_max"]),
        helper.make_node("Cast", ["is_max"], ["is_max_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["centre", "is_max_f"], ["score"]),
        helper.make_node("Mul", ["centre", "b_zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "b_half"], ["halves"]),
        helper.make_node("Add", ["halves", "b_half"], ["ones"]),
        helper.make_node("CumSum", ["ones", "b_axis_w"], ["x_end"]),
        helper.make_node("CumSum", ["ones", "b_axis_h"], ["y_end"]),
        helper.make_node("Sub", ["x_end", "halves"], ["x_px"]),  # pixel j's centre: j + 0.5
        helper.make_node("Sub", ["y_end", "halves"], ["y_px"]),
        helper.make_node("Add", ["x_px", "off_x"], ["cx"]),
        helper.make_node("Add", ["y_px", "off_y"], ["cy"]),
        helper.make_node("Greater", ["p_dab", "b_dab"], ["is_dab"]),
        helper.make_node("Cast", ["is_dab"], ["cls"], to=TensorProto.FLOAT),
    ]
    if box_format == "cxcywh":
        inits.append(_const("b_side", 2 * radius_px))
        nodes += [helper.make_node("Add", ["zeros", "b_side"], ["bw"]), helper.make_node("Add", ["zeros", "b_side"], ["bh"])]
        columns = ["cx", "cy", "bw", "bh", "score", "cls"]
    else:
        nodes += [helper.make_node("Sub", ["cx", "b_r"], ["bx1"]), helper.make_node("Sub", ["cy", "b_r"], ["by1"]),
                  helper.make_node("Add", ["cx", "b_r"], ["bx2"]), helper.make_node("Add", ["cy", "b_r"], ["by2"])]
        columns = ["bx1", "by1", "bx2", "by2", "score", "cls"]
    nodes += [helper.make_node("Reshape", ["score", "b_flat"], ["score_rank"]),
              helper.make_node("TopK", ["score_rank", "b_k"], ["top_v", "top_i"], axis=1)]
    for col in columns:
        nodes += [helper.make_node("Reshape", [col, "b_flat"], [f"{col}_flat"]),
                  helper.make_node("GatherElements", [f"{col}_flat", "top_i"], [f"{col}_top"], axis=1),
                  helper.make_node("Unsqueeze", [f"{col}_top", "b_unsq"], [f"{col}_col"])]
    nodes.append(helper.make_node("Concat", [f"{c}_col" for c in columns], ["boxes"], axis=2))
    outs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", max_boxes, 6])]
    return _finish(nodes, "box_detector", [_image_input()], outs, inits)


TYPE_LABELS = [{"name": "Background", "color": "#000000"}, {"name": "Negative", "color": "#1e3a8a"},
               {"name": "Positive", "color": "#8b4513"}]


def hovernet_spec(name: str = "hovernet-style", *, mpp: float = 0.5, input_size: int = 256, downsample: int = 1,
                  crop: int = 0, logits: bool = False, typed: bool = True) -> dict[str, Any]:
    """The ModelSpec (as a dict) of `build_hovernet_model` with the same arguments."""
    outputs: dict[str, Any] = {"decoder": "hovernet", "hv_output": "hv", "tile_overlap": 64, "min_tissue": 0.1}
    if crop:
        outputs["output_crop"] = crop
    spec: dict[str, Any] = {"name": name, "kind": "segmentation", "mpp": mpp, "input_size": input_size,
                            "input_name": "image", "output_name": "np", "output_downsample": downsample,
                            "thresholds": {"nucleus": 0.5}, "outputs": outputs}
    if logits:
        spec["output_activation"] = "softmax"
    if typed:
        outputs["type_output"] = "tp"
        spec["labels"] = TYPE_LABELS
        spec["background_labels"] = ["Background"]
    else:
        spec["labels"] = [{"name": "Nucleus", "color": "#3f51b5"}]
    return spec


def stardist_spec(name: str = "stardist-style", *, mpp: float = 0.5, input_size: int = 256) -> dict[str, Any]:
    """The ModelSpec (as a dict) of `build_stardist_model`."""
    return {"name": name, "kind": "segmentation", "mpp": mpp, "input_size": input_size, "input_name": "image",
            "output_name": "prob", "thresholds": {"probability": 0.5},
            "labels": [{"name": "Nucleus", "color": "#3f51b5"}],
            "outputs": {"decoder": "stardist", "rays_output": "rays", "nms_iou": 0.4, "tile_overlap": 64,
                        "min_tissue": 0.1}}


def box_spec(name: str = "box-detector", *, mpp: float = 0.5, input_size: int = 256, box_format: str = "xyxy",
             draw: str = "both") -> dict[str, Any]:
    """The ModelSpec (as a dict) of `build_box_model`."""
    return {"name": name, "kind": "detection", "mpp": mpp, "input_size": input_size, "input_name": "image",
            "output_name": "boxes", "thresholds": {"score": 0.5},
            "labels": [{"name": "Negative", "color": "#1e3a8a"}, {"name": "Positive", "color": "#8b4513"}],
            "outputs": {"decoder": "boxes", "box_format": box_format, "draw": draw, "nms_iou": 0.5,
                        "tile_overlap": 32, "min_tissue": 0.1}}
