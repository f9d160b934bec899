"""Built-in models: ONNX graphs built here with the `onnx` helper API (nothing is downloaded).

`tissue`: tissue vs background from optical density and saturation, the classic whole-slide tissue
test, written as an ONNX graph so it runs through exactly the same onnxruntime path as any customer
model. Input uint8 RGB NCHW; output the tissue probability averaged over 4x4 blocks (at the spec's 2 µm/px: 8 µm per output pixel).

`nuclei` and `ihc-positivity`: colour deconvolution as a 1x1 convolution over optical density, its
matrix an optional graph input (the scan's own stain vectors, estimated once per scan by
inference/stains.py; by default Ruifrok & Johnston's 2001 H-E-DAB matrix), then nucleus detection
the way QuPath's WatershedCellDetection does it, all inside the graph (see `CellDetection`): per stain, strands thinner
than a nucleus opened away, the local background (an 8 µm opening) subtracted, smoothed, thresholded
in optical density above that background and cut at the seams between touching nuclei. Nuclei are
found on haematoxylin *and* on DAB (so Ki67-positive nuclei are nuclei too); for IHC a second channel
holds the DAB density above its neighbourhood, whose mean over a nucleus decides its positivity. Both
also output the three stain densities (`stain_od`) for per-nucleus intensity measurements. Objects
are made from these maps (distance-transform splitting, size limits in µm²) in inference/nuclei.py.

Openings are separable MaxPools (a square structuring element), blurs two 1-D convolutions, so a
512 px tile costs ~0.15 s on one CPU core; everything is a standard ONNX op and runs on any provider.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanbridge.domain.catalog import IHC_SPEC, NUCLEI_SPEC, TISSUE_SPEC
from scanbridge.domain.models import ModelSpec
from scanbridge.inference.stains import HED_FROM_RGB, STAIN_INPUT

OPSET = 18


def _const(name: str, value: float | list[int] | np.ndarray, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def tissue_score_graph() -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Initialisers and nodes computing `score` = a*(sum OD - t_od) + b*(saturation - t_sat) from uint8 `image`.

    The tissue test shared by the built-in `tissue` model and the benchmark model.
    """
    inits = [
        _const("one", 1.0), _const("inv256", 1.0 / 256.0), _const("neg_one", -1.0), _const("inv255", 1.0 / 255.0),
        _const("a", 6.0), _const("t_od", 0.4), _const("b", 15.0), _const("t_sat", 0.1),
        _const("axes", [1], np.int64),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        # optical density per channel: -ln((x + 1) / 256)
        helper.make_node("Add", ["x", "one"], ["x1"]),
        helper.make_node("Mul", ["x1", "inv256"], ["xn"]),
        helper.make_node("Log", ["xn"], ["lnx"]),
        helper.make_node("Mul", ["lnx", "neg_one"], ["od"]),
        helper.make_node("ReduceSum", ["od", "axes"], ["od_sum"], keepdims=1),
        # saturation proxy: (max - min) / 255
        helper.make_node("ReduceMax", ["x", "axes"], ["cmax"], keepdims=1),
        helper.make_node("ReduceMin", ["x", "axes"], ["cmin"], keepdims=1),
        helper.make_node("Sub", ["cmax", "cmin"], ["crange"]),
        helper.make_node("Mul", ["crange", "inv255"], ["sat"]),
        helper.make_node("Sub", ["od_sum", "t_od"], ["od_c"]),
        helper.make_node("Mul", ["od_c", "a"], ["od_s"]),
        helper.make_node("Sub", ["sat", "t_sat"], ["sat_c"]),
        helper.make_node("Mul", ["sat_c", "b"], ["sat_s"]),
        helper.make_node("Add", ["od_s", "sat_s"], ["score"]),
    ]
    return inits, nodes


def build_tissue_model(block: int = 4) -> bytes:
    """The tissue graph: p = sigmoid(a*(sum OD - t_od) + b*(saturation - t_sat)), pooled block x block."""
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, "H", "W"])
    out = helper.make_tensor_value_info("tissue_prob", TensorProto.FLOAT, ["N", 1, "h", "w"])
    inits, nodes = tissue_score_graph()
    nodes += [
        helper.make_node("Sigmoid", ["score"], ["p"]),
        helper.make_node("AveragePool", ["p"], ["tissue_prob"], kernel_shape=[block, block], strides=[block, block]),
    ]
    graph = helper.make_graph(nodes, "scanbridge_tissue", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scanbridge")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()




def _finish(nodes: list[onnx.NodeProto], name: str, inputs: list[onnx.ValueInfoProto],
            outputs: list[onnx.ValueInfoProto], inits: list[onnx.TensorProto]) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scanbridge")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _deconvolution(inits: list[onnx.TensorProto],
                   inputs: list[onnx.ValueInfoProto] | None = None) -> list[onnx.NodeProto]:
    """image (uint8 NCHW RGB) -> stain_od (N, 3, H, W): haematoxylin, eosin, DAB densities (clipped at 0).

    The deconvolution matrix D (stain densities = OD @ D) is the initialiser `STAIN_INPUT`, Ruifrok-Johnston's
    inverse; with `inputs` it is declared a graph input too, so a run may feed the scan's own matrix
    (inference/stains.py) and a run that feeds nothing gets the reference.
    """
    inits += [_const("one", 1.0), _const("inv256", 1.0 / 256.0), _const("neg_inv_ln10", -1.0 / np.log(10.0)),
              _const(STAIN_INPUT, HED_FROM_RGB), _const("hed_w_shape", [3, 3, 1, 1], np.int64), _const("zero", 0.0)]
    if inputs is not None:
        inputs.append(helper.make_tensor_value_info(STAIN_INPUT, TensorProto.FLOAT, [3, 3]))
    return [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        # optical density per channel (base 10, as Ruifrok's vectors): -log10((x + 1) / 256)
        helper.make_node("Add", ["x", "one"], ["x1"]),
        helper.make_node("Mul", ["x1", "inv256"], ["xn"]),
        helper.make_node("Log", ["xn"], ["lnx"]),
        helper.make_node("Mul", ["lnx", "neg_inv_ln10"], ["od"]),
        # conv weight [out=stain, in=rgb, 1, 1] = D transposed
        helper.make_node("Transpose", [STAIN_INPUT], ["hed_t"], perm=[1, 0]),
        helper.make_node("Reshape", ["hed_t", "hed_w_shape"], ["hed_w"]),
        helper.make_node("Conv", ["od", "hed_w"], ["hed"], kernel_shape=[1, 1]),
        helper.make_node("Max", ["hed", "zero"], ["stain_od"]),
    ]


def _channel(inits: list[onnx.TensorProto], source: str, index: int, out: str) -> onnx.NodeProto:
    inits += [_const(f"{out}_start", [index], np.int64), _const(f"{out}_end", [index + 1], np.int64),
              _const(f"{out}_axis", [1], np.int64)]
    return helper.make_node("Slice", [source, f"{out}_start", f"{out}_end", f"{out}_axis"], [out])


def _soft_threshold(inits: list[onnx.TensorProto], source: str, threshold: float, gain: float,
                    out: str) -> list[onnx.NodeProto]:
    """out = sigmoid(gain * (source - threshold)): a smooth step, 0.5 at the threshold."""
    inits += [_const(f"{out}_t", threshold), _const(f"{out}_g", gain)]
    return [
        helper.make_node("Sub", [source, f"{out}_t"], [f"{out}_c"]),
        helper.make_node("Mul", [f"{out}_c", f"{out}_g"], [f"{out}_s"]),
        helper.make_node("Sigmoid", [f"{out}_s"], [out]),
    ]


def _pool(nodes: list[onnx.NodeProto], source: str, out: str, radius: int, *, minimum: bool, axis: int) -> None:
    """A running max (or min) over 2 * radius + 1 pixels along one spatial axis (2: rows, 3: columns)."""
    kernel = [1, 2 * radius + 1] if axis == 3 else [2 * radius + 1, 1]
    pads = [0, radius, 0, radius] if axis == 3 else [radius, 0, radius, 0]  # MaxPool pads with -inf
    if not minimum:
        nodes.append(helper.make_node("MaxPool", [source], [out], kernel_shape=kernel, pads=pads))
        return
    nodes += [helper.make_node("Neg", [source], [f"{out}_neg"]),
              helper.make_node("MaxPool", [f"{out}_neg"], [f"{out}_max"], kernel_shape=kernel, pads=pads),
              helper.make_node("Neg", [f"{out}_max"], [out])]


def _opening(nodes: list[onnx.NodeProto], source: str, out: str, radius: int) -> None:
    """Grey-level opening by a (2r+1)-pixel square (separable min then max): removes bright detail narrower
    than the square and keeps what holds it. Borders do not count (the pools pad with -inf / +inf)."""
    if radius <= 0:
        nodes.append(helper.make_node("Identity", [source], [out]))
        return
    _pool(nodes, source, f"{out}_e1", radius, minimum=True, axis=3)
    _pool(nodes, f"{out}_e1", f"{out}_e2", radius, minimum=True, axis=2)
    _pool(nodes, f"{out}_e2", f"{out}_d1", radius, minimum=False, axis=3)
    _pool(nodes, f"{out}_d1", out, radius, minimum=False, axis=2)


def _gaussian(inits: list[onnx.TensorProto], nodes: list[onnx.NodeProto], source: str, out: str,
              sigma: float) -> None:
    """Separable Gaussian blur (sigma in pixels), border pixels repeated: two 1-D convolutions."""
    radius = max(1, math.ceil(3.0 * sigma))
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    g /= g.sum()
    inits += [_const(f"{out}_kx", g.reshape(1, 1, 1, -1)), _const(f"{out}_ky", g.reshape(1, 1, -1, 1)),
              _const(f"{out}_pads", [0, 0, radius, radius, 0, 0, radius, radius], np.int64)]
    nodes += [helper.make_node("Pad", [source, f"{out}_pads"], [f"{out}_padded"], mode="edge"),
              helper.make_node("Conv", [f"{out}_padded", f"{out}_kx"], [f"{out}_x"]),
              helper.make_node("Conv", [f"{out}_x", f"{out}_ky"], [out])]


def _coarse(inits: list[onnx.TensorProto], nodes: list[onnx.NodeProto], source: str, out: str, factor: int, *,
            minimum: bool) -> None:
    """`source` reduced by `factor` per side: block minima (for an opening) or block means (for a blur)."""
    if minimum:
        nodes += [helper.make_node("Neg", [source], [f"{out}_neg"]),
                  helper.make_node("MaxPool", [f"{out}_neg"], [f"{out}_max"], kernel_shape=[factor, factor],
                                   strides=[factor, factor], ceil_mode=1),
                  helper.make_node("Neg", [f"{out}_max"], [out])]
    else:
        nodes.append(helper.make_node("AveragePool", [source], [out], kernel_shape=[factor, factor],
                                      strides=[factor, factor], ceil_mode=1))


def _back_to(inits: list[onnx.TensorProto], nodes: list[onnx.NodeProto], source: str, like: str, out: str) -> None:
    """`source` resized (bilinear, pixel centres aligned) to the spatial size of `like`."""
    inits += [_const(f"{out}_s0", [2], np.int64), _const(f"{out}_s1", [4], np.int64), _const(f"{out}_ax", [0], np.int64)]
    nodes += [helper.make_node("Shape", [like], [f"{out}_shape"]),
              helper.make_node("Shape", [source], [f"{out}_sshape"]),
              helper.make_node("Slice", [f"{out}_sshape", f"{out}_ax", f"{out}_s0", f"{out}_ax"], [f"{out}_nc"]),
              helper.make_node("Slice", [f"{out}_shape", f"{out}_s0", f"{out}_s1", f"{out}_ax"], [f"{out}_hw"]),
              helper.make_node("Concat", [f"{out}_nc", f"{out}_hw"], [f"{out}_sizes"], axis=0),
              helper.make_node("Resize", [source, "", "", f"{out}_sizes"], [out], mode="linear",
                               coordinate_transformation_mode="half_pixel")]


def _smooth_background(inits: list[onnx.TensorProto], nodes: list[onnx.NodeProto], source: str, out: str,
                       radius: int, factor: int = 4) -> None:
    """The opening by a (2r+1)-pixel square, computed on a `factor`-times coarser grid (block minima,
    opening by r / factor, bilinear back): the background is smooth, so 1/16 of the work gives it."""
    if radius < 2 * factor:
        _opening(nodes, source, out, radius)
        return
    _coarse(inits, nodes, source, f"{out}_lo", factor, minimum=True)
    _opening(nodes, f"{out}_lo", f"{out}_lo_open", max(1, round((radius - factor / 2) / factor)))
    _back_to(inits, nodes, f"{out}_lo_open", source, out)


def _wide_mean(inits: list[onnx.TensorProto], nodes: list[onnx.NodeProto], source: str, out: str,
               sigma: float, factor: int = 4) -> None:
    """A Gaussian mean of `sigma` pixels, on a `factor`-times coarser grid when sigma is wide enough."""
    if sigma < 2 * factor:
        _gaussian(inits, nodes, source, out, sigma)
        return
    _coarse(inits, nodes, source, f"{out}_lo", factor, minimum=False)
    _gaussian(inits, nodes, f"{out}_lo", f"{out}_lo_blur", math.sqrt(max(sigma * sigma - factor * factor / 12.0, 0.25)) / factor)
    _back_to(inits, nodes, f"{out}_lo_blur", source, out)


@dataclass(frozen=True)
class CellDetection:
    """QuPath-style nucleus detection parameters (WatershedCellDetection's, in µm at the model's pixel size).

    Per stain: an opening by `blob_um` drops strands narrower than a nucleus (collagen fibres, membranes),
    an opening by `background_um` (larger than a nucleus) is the local background and is subtracted, the
    rest is smoothed by `sigma_um`; a pixel is nuclear where that is above `threshold` (optical density
    above local background) *and* above its own neighbourhood mean (Gaussian `split_sigma_um`) by
    `split_margin`, which cuts touching nuclei apart along the paler seam between them.
    """

    mpp: float = 0.5
    background_um: float = 8.0  # QuPath's backgroundRadiusMicrons default
    sigma_um: float = 0.25
    split_sigma_um: float = 3.0
    split_margin: float = 0.0
    h_blob_um: float = 1.0
    h_threshold: float = 0.1  # QuPath's default threshold (optical density)
    dab_blob_um: float = 1.0
    dab_threshold: float = 0.2
    positive_sigma_um: float = 3.0  # the positive channel: DAB minus its Gaussian neighbourhood mean
    dab_seed: float = 0.65  # a DAB nucleus holds a core this dense; membranes and cytoplasm do not
    nucleus_um: float = 3.0  # radius the DAB seeds grow by (hysteresis)
    gain: float = 40.0  # steepness of the soft thresholds (the 0.5 crossing is the threshold itself)

    def px(self, um: float) -> int:
        """A length in model pixels (rounded)."""
        return round(um / self.mpp)


def _stain_nuclei(inits: list[onnx.TensorProto], nodes: list[onnx.NodeProto], stain: str, out: str,
                  blob_um: float, threshold: float, p: CellDetection, seed: float | None = None) -> None:
    """out = the per-pixel nucleus probability from one stain's optical density (see CellDetection).

    With `seed`, hysteresis: only regions above `threshold` that hold a pixel above `seed` count (a
    geodesic dilation of the seeds inside the region, a nucleus radius of 3x3 steps).
    """
    _opening(nodes, stain, f"{out}_blob", p.px(blob_um))
    _smooth_background(inits, nodes, f"{out}_blob", f"{out}_bg", p.px(p.background_um))
    nodes.append(helper.make_node("Sub", [f"{out}_blob", f"{out}_bg"], [f"{out}_top"]))
    _gaussian(inits, nodes, f"{out}_top", f"{out}_smooth", p.sigma_um / p.mpp)
    if seed is None:
        nodes += _soft_threshold(inits, f"{out}_smooth", threshold, p.gain, f"{out}_above")
    else:
        nodes += _soft_threshold(inits, f"{out}_smooth", threshold, p.gain, f"{out}_weak")
        nodes += _soft_threshold(inits, f"{out}_smooth", seed, p.gain, f"{out}_grow0")
        steps = max(1, p.px(p.nucleus_um))
        for i in range(steps):
            nodes += [helper.make_node("MaxPool", [f"{out}_grow{i}"], [f"{out}_dil{i}"], kernel_shape=[3, 3],
                                       pads=[1, 1, 1, 1]),
                      helper.make_node("Min", [f"{out}_dil{i}", f"{out}_weak"],
                                       [f"{out}_grow{i + 1}" if i + 1 < steps else f"{out}_above"])]
    _wide_mean(inits, nodes, f"{out}_top", f"{out}_wide", p.split_sigma_um / p.mpp)
    nodes.append(helper.make_node("Sub", [f"{out}_smooth", f"{out}_wide"], [f"{out}_local"]))
    nodes += _soft_threshold(inits, f"{out}_local", p.split_margin, p.gain, f"{out}_peak")
    nodes.append(helper.make_node("Min", [f"{out}_above", f"{out}_peak"], [out]))


def _nuclei_nodes(inits: list[onnx.TensorProto], p: CellDetection,
                  inputs: list[onnx.ValueInfoProto] | None) -> list[onnx.NodeProto]:
    """Deconvolution (its matrix an optional input when `inputs` is given), then p_nucleus = max(haematoxylin
    nuclei, DAB nuclei) and p_dab (DAB above its threshold)."""
    nodes = _deconvolution(inits, inputs)
    nodes.append(_channel(inits, "stain_od", 0, "h_od"))
    nodes.append(_channel(inits, "stain_od", 2, "dab_od"))
    _stain_nuclei(inits, nodes, "h_od", "p_h", p.h_blob_um, p.h_threshold, p)
    _stain_nuclei(inits, nodes, "dab_od", "p_d", p.dab_blob_um, p.dab_threshold, p, p.dab_seed)
    nodes.append(helper.make_node("Max", ["p_h", "p_d"], ["p_nucleus"]))
    # DAB above its neighbourhood: brown cytoplasm or membranes around a blue nucleus raise the
    # neighbourhood, not the nucleus's own value
    if p.positive_sigma_um > 0:
        _wide_mean(inits, nodes, "dab_od", "dab_bg", p.positive_sigma_um / p.mpp)
    else:
        _smooth_background(inits, nodes, "dab_od", "dab_bg", p.px(p.background_um))
    nodes.append(helper.make_node("Sub", ["dab_od", "dab_bg"], ["dab_local"]))
    return nodes


def build_nuclei_model(params: CellDetection | None = None) -> bytes:
    """Nuclear segmentation graph: nuclei_prob (N,1,H,W) from haematoxylin *and* DAB nuclei, plus stain_od.

    DAB-stained nuclei (Ki67-positive ones) are nuclei too: they are found on the DAB density.
    """
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, "H", "W"])
    outs = [helper.make_tensor_value_info("nuclei_prob", TensorProto.FLOAT, ["N", 1, "H", "W"]),
            helper.make_tensor_value_info("stain_od", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    inits: list[onnx.TensorProto] = []
    inputs = [inp]
    nodes = _nuclei_nodes(inits, params or CellDetection(), inputs)
    nodes.append(helper.make_node("Identity", ["p_nucleus"], ["nuclei_prob"]))
    return _finish(nodes, "scanbridge_nuclei", inputs, outs, inits)


def build_ihc_model(params: CellDetection | None = None) -> bytes:
    """IHC graph: nuclei_prob (N,2,H,W) = [p_nucleus, DAB OD above its neighbourhood], plus stain_od.

    Channel 1 is the DAB density minus its Gaussian mean over `positive_sigma_um` (3 µm, about a cell),
    so the positive channel's mean over a nucleus is how much browner the nucleus is than the cell around
    it, an OD that `thresholds.positive` is compared with (QuPath's "Nucleus: DAB OD mean" rule, made
    relative): DAB on the membranes or in the cytoplasm around a blue nucleus never makes it positive.

    It deconvolves with the reference (Ruifrok-Johnston) matrix and takes no per-scan stain vectors: fed
    the scan's, the real IHC colon image got three positive points on brown membranes instead of one
    (docs/built-in-models.md), so its H/DAB split stays the one its thresholds were set on.
    """
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, "H", "W"])
    outs = [helper.make_tensor_value_info("nuclei_prob", TensorProto.FLOAT, ["N", 2, "H", "W"]),
            helper.make_tensor_value_info("stain_od", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    inits: list[onnx.TensorProto] = []
    nodes = _nuclei_nodes(inits, params or CellDetection(), None)
    nodes.append(helper.make_node("Concat", ["p_nucleus", "dab_local"], ["nuclei_prob"], axis=1))
    return _finish(nodes, "scanbridge_ihc_positivity", [inp], outs, inits)


BUILTINS: dict[str, tuple[ModelSpec, Callable[[], bytes]]] = {
    "tissue": (TISSUE_SPEC, build_tissue_model),
    "nuclei": (NUCLEI_SPEC, build_nuclei_model),
    "ihc-positivity": (IHC_SPEC, build_ihc_model),
}


@functools.cache
def builtin_model_bytes(name: str) -> bytes:
    """The ONNX bytes of built-in model `name`, built (and checked by onnx) once per process: the local warm
    worker server builds them before it forks, so no task pays the ~30 ms again."""
    return BUILTINS[name][1]()


def builtin_names() -> list[str]:
    """Names of the built-in models."""
    return sorted(BUILTINS)
