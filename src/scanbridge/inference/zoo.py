"""Built-in models: ONNX graphs built here with the `onnx` helper API (nothing is downloaded).

`tissue`: tissue vs background from optical density and saturation, the classic whole-slide tissue
test, written as an ONNX graph so it runs through exactly the same onnxruntime path as any customer
model. Input uint8 RGB NCHW; output the tissue probability averaged over 8x8 blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanbridge.domain.catalog import TISSUE_SPEC
from scanbridge.domain.models import ModelSpec

OPSET = 18


def _const(name: str, value: float | list[int] | np.ndarray, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def build_tissue_model(block: int = 8) -> bytes:
    """The tissue graph: p = sigmoid(a*(sum OD - t_od) + b*(saturation - t_sat)), pooled block x block."""
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, "H", "W"])
    out = helper.make_tensor_value_info("tissue_prob", TensorProto.FLOAT, ["N", 1, "h", "w"])
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
        helper.make_node("Sigmoid", ["score"], ["p"]),
        helper.make_node("AveragePool", ["p"], ["tissue_prob"], kernel_shape=[block, block], strides=[block, block]),
    ]
    graph = helper.make_graph(nodes, "scanbridge_tissue", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scanbridge")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


BUILTINS: dict[str, tuple[ModelSpec, Callable[[], bytes]]] = {
    "tissue": (TISSUE_SPEC, build_tissue_model),
}


def builtin_names() -> list[str]:
    """Names of the built-in models."""
    return sorted(BUILTINS)
