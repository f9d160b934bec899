"""A ResNet-50-class benchmark model built here with the onnx helper API (no torch, nothing downloaded).

The real ResNet-50 trunk (7x7 stem, bottleneck stages of 3/4/6/3 blocks, 64..2048 channels, ~4.1 GFLOP per
224 px tile at full width) with fixed random weights (He init; each block's last convolution scaled down,
as zero-init residuals do, so the random net stays finite), batch-norm folded into the convolution biases
as inference exports have it. The output is still a tissue probability the pipeline can post-process:
sigmoid(tissue score pooled to /32 + 1e-3 * tanh(1x1 head on the /32 features)), one value per 32 px.
`width` scales every channel count (64: ResNet-50; 16: a slim net of the same shape for CPU checks).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scanbridge.domain.models import Label, ModelSpec
from scanbridge.inference.zoo import OPSET, tissue_score_graph

STAGES = ((3, 1), (4, 2), (6, 2), (3, 2))  # (blocks, stride of the first block) per stage
RESIDUAL_SCALE = 0.2


def resnet_spec(name: str, width: int) -> ModelSpec:
    """The spec of the benchmark ResNet (224 px tiles at 0.5 um/px, one output per 32 px)."""
    return ModelSpec(
        name=name, version="1", kind="classification",
        description=f"Benchmark ResNet-50 trunk (width {width}) with fixed random weights on top of the tissue test",
        labels=[Label(name="Tissue", color="#e377c2")], input_name="image", input_size=224, input_dtype="uint8",
        mpp=0.5, output_name="prob", output_downsample=32, thresholds={"tissue": 0.5},
        outputs={"min_region_um2": 2500.0, "tile_overlap": 0},
    )


def build_resnet(width: int = 64, seed: int = 0) -> bytes:
    """The ResNet-50-class graph as ONNX bytes (uint8 NCHW `image` -> float `prob` [N, 1, H/32, W/32])."""
    rng = np.random.default_rng(seed)
    inits, nodes = tissue_score_graph()
    inits = list(inits)
    nodes = list(nodes)
    counter = [0]

    def conv(x: str, c_in: int, c_out: int, k: int, stride: int = 1, gain: float = 1.0) -> str:
        counter[0] += 1
        i = counter[0]
        w = rng.standard_normal((c_out, c_in, k, k), dtype=np.float32) * np.float32(gain * math.sqrt(2.0 / (c_in * k * k)))
        inits.extend([numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")])
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[pad, pad, pad, pad]))
        return f"c{i}"

    def relu(x: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{x}r"]))
        return f"{x}r"

    inits.append(numpy_helper.from_array(np.asarray(1e-3, np.float32), "eps"))
    nodes.append(helper.make_node("Mul", ["x", "inv255"], ["xs"]))
    h = relu(conv("xs", 3, width, 7, 2))
    nodes.append(helper.make_node("MaxPool", [h], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    h, c_in = "pool", width
    for stage, (blocks, first_stride) in enumerate(STAGES):
        mid = width * 2**stage
        out = mid * 4
        for block in range(blocks):
            stride = first_stride if block == 0 else 1
            y = relu(conv(h, c_in, mid, 1))
            y = relu(conv(y, mid, mid, 3, stride))
            y = conv(y, mid, out, 1, gain=RESIDUAL_SCALE)
            short = conv(h, c_in, out, 1, stride) if block == 0 else h
            nodes.append(helper.make_node("Add", [y, short], [f"{y}s"]))
            h, c_in = relu(f"{y}s"), out
    head = conv(h, c_in, 1, 1)
    nodes += [
        helper.make_node("AveragePool", ["score"], ["score32"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Tanh", [head], ["t"]),
        helper.make_node("Mul", ["t", "eps"], ["ts"]),
        helper.make_node("Add", ["score32", "ts"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 3, "H", "W"])
    outp = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, "h", "w"])
    graph = helper.make_graph(nodes, f"scanbridge_bench_resnet50_w{width}", [inp], [outp], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="scanbridge")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
