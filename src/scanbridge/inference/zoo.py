"""Built-in models: ONNX graphs built here with the `onnx` helper API (nothing is downloaded).

`tissue`: tissue vs background from optical density and saturation, the classic whole-slide tissue
test, written as an ONNX graph so it runs through exactly the same onnxruntime path as any customer
model. Input uint8 RGB NCHW; output the tissue probability averaged over 4x4 blocks (at the spec's 2 µm/px: 8 µm per output pixel).

`nuclei` and `ihc-positivity`: colour deconvolution (Ruifrok & Johnston 2001, the H-E-DAB stain
matrix) as a 1x1 convolution over optical density, then a per-pixel nucleus probability (haematoxylin
above a threshold; for IHC haematoxylin or DAB) and, for IHC, a DAB-positive probability. Both also
output the three stain densities (`stain_od`) for per-nucleus intensity measurements. Objects are
made from these maps in inference/nuclei.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanbridge.domain.catalog import IHC_SPEC, NUCLEI_SPEC, TISSUE_SPEC
from scanbridge.domain.models import ModelSpec

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


# Ruifrok & Johnston's H-E-DAB stain vectors (rows: OD per R, G, B of one unit of each stain), as in
# scikit-image's `rgb_from_hed`; the deconvolution matrix is its inverse.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def _finish(nodes: list[onnx.NodeProto], name: str, inputs: list[onnx.ValueInfoProto],
            outputs: list[onnx.ValueInfoProto], inits: list[onnx.TensorProto]) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scanbridge")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _deconvolution(inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """image (uint8 NCHW RGB) -> stain_od (N, 3, H, W): haematoxylin, eosin, DAB densities (clipped at 0)."""
    weights = HED_FROM_RGB.T.reshape(3, 3, 1, 1)  # conv weight [out=stain, in=rgb, 1, 1]
    inits += [_const("one", 1.0), _const("inv256", 1.0 / 256.0), _const("neg_inv_ln10", -1.0 / np.log(10.0)),
              _const("hed_w", weights), _const("zero", 0.0)]
    return [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        # optical density per channel (base 10, as Ruifrok's vectors): -log10((x + 1) / 256)
        helper.make_node("Add", ["x", "one"], ["x1"]),
        helper.make_node("Mul", ["x1", "inv256"], ["xn"]),
        helper.make_node("Log", ["xn"], ["lnx"]),
        helper.make_node("Mul", ["lnx", "neg_inv_ln10"], ["od"]),
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


def build_nuclei_model(h_threshold: float = 0.35, gain: float = 20.0) -> bytes:
    """Nuclear segmentation graph: nuclei_prob (N,1,H,W) = sigmoid(gain*(haematoxylin OD - t)), plus stain_od."""
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, "H", "W"])
    outs = [helper.make_tensor_value_info("nuclei_prob", TensorProto.FLOAT, ["N", 1, "H", "W"]),
            helper.make_tensor_value_info("stain_od", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    inits: list[onnx.TensorProto] = []
    nodes = _deconvolution(inits)
    nodes.append(_channel(inits, "stain_od", 0, "h_od"))
    nodes += _soft_threshold(inits, "h_od", h_threshold, gain, "nuclei_prob")
    return _finish(nodes, "scanbridge_nuclei", [inp], outs, inits)


def build_ihc_model(h_threshold: float = 0.35, dab_threshold: float = 0.5, gain: float = 20.0) -> bytes:
    """IHC graph: nuclei_prob (N,2,H,W) = [max(p_haematoxylin, p_dab), p_dab], plus stain_od."""
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, "H", "W"])
    outs = [helper.make_tensor_value_info("nuclei_prob", TensorProto.FLOAT, ["N", 2, "H", "W"]),
            helper.make_tensor_value_info("stain_od", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    inits: list[onnx.TensorProto] = []
    nodes = _deconvolution(inits)
    nodes.append(_channel(inits, "stain_od", 0, "h_od"))
    nodes.append(_channel(inits, "stain_od", 2, "dab_od"))
    nodes += _soft_threshold(inits, "h_od", h_threshold, gain, "p_h")
    nodes += _soft_threshold(inits, "dab_od", dab_threshold, gain, "p_dab")
    nodes.append(helper.make_node("Max", ["p_h", "p_dab"], ["p_nucleus"]))
    nodes.append(helper.make_node("Concat", ["p_nucleus", "p_dab"], ["nuclei_prob"], axis=1))
    return _finish(nodes, "scanbridge_ihc_positivity", [inp], outs, inits)


BUILTINS: dict[str, tuple[ModelSpec, Callable[[], bytes]]] = {
    "tissue": (TISSUE_SPEC, build_tissue_model),
    "nuclei": (NUCLEI_SPEC, build_nuclei_model),
    "ihc-positivity": (IHC_SPEC, build_ihc_model),
}


def builtin_names() -> list[str]:
    """Names of the built-in models."""
    return sorted(BUILTINS)
