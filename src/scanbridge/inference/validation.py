"""The upload check: an ONNX file against its ModelSpec, loaded with onnxruntime and run once as a scan runs it.

An accepted model must never fail every scan, so everything that would is refused here, all at once:
`ModelInvalidError` (MODEL_INVALID) with `details.problems` listing every problem found, plus the
file's facts (inputs, outputs, sha256). The dry run goes through the very `OnnxModel.run` the
pipeline uses (layout, dtype, normalisation, static-batch adaptation, output activation) on a batch of
2 tiles for a dynamic-batch model (the fixed batch otherwise), and its outputs go through the declared
kind's decoder checks.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from scanbridge.domain.errors import InferenceError, ModelInvalidError
from scanbridge.domain.models import OBJECT_KINDS, REGION_KINDS, ModelSpec
from scanbridge.inference.session import OnnxModel, class_axis

MAX_ONNX_BYTES = 2 * 1024**3 - 1  # protobuf's limit for one file
ONNX_DTYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)", "float16": "tensor(float16)"}
DRY_RUN_BATCH = 2  # a dynamic-batch model must take more than one tile at a time
_AXES = {"NCHW": (1, 2, 3), "NHWC": (3, 1, 2)}  # channel, height, width axis per input_layout


def _dims(shape: Any) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in shape]


def spec_problems(spec: ModelSpec) -> list[str]:
    """What is wrong with an uploaded model's spec alone (before its file is looked at)."""
    problems: list[str] = []
    if spec.mpp is None:
        problems.append("mpp is required for an uploaded model: the µm per pixel it was trained at")
    if spec.normalisation is not None and spec.input_dtype == "uint8":
        problems.append("normalisation needs input_dtype float32 or float16 (a uint8 input cannot carry it)")
    if spec.input_size % spec.output_downsample:
        problems.append(f"input_size {spec.input_size} is not a multiple of output_downsample "
                        f"{spec.output_downsample}")
    if spec.kind in REGION_KINDS:
        if {lb.name for lb in spec.labels} <= set(spec.background_labels):
            problems.append("every label is a background label: a region model must draw at least one class")
        overlap = int(spec.outputs.get("tile_overlap", 0))
        if spec.kind == "semantic-segmentation" and 2 * overlap >= spec.input_size:
            problems.append(f"outputs.tile_overlap {overlap} leaves no tile core in input_size {spec.input_size}")
    return problems


def _input_problems(spec: ModelSpec, inputs: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    inp = inputs.get(spec.input_name)
    if inp is None:
        return [f"input {spec.input_name!r} not found (inputs: {sorted(inputs)})"]
    shape = list(inp.shape)
    if len(shape) != 4:
        problems.append(f"input {spec.input_name!r} has rank {len(shape)}; {spec.input_layout} (rank 4) expected")
    else:
        c_axis, h_axis, w_axis = _AXES[spec.input_layout]
        channels = shape[c_axis]
        if isinstance(channels, int) and channels != 3:
            other = "NHWC" if spec.input_layout == "NCHW" else "NCHW"
            hint = f" (shape {_dims(shape)} looks {other}: set input_layout {other!r})" \
                if shape[_AXES[other][0]] == 3 else ""
            problems.append(f"input {spec.input_name!r} has {channels} channels on axis {c_axis}; 3 expected "
                            f"for input_layout {spec.input_layout}{hint}")
        for axis, dim in (("height", shape[h_axis]), ("width", shape[w_axis])):
            if isinstance(dim, int) and dim != spec.input_size and not (isinstance(channels, int) and channels != 3):
                problems.append(f"input {axis} is {dim}; the spec's input_size is {spec.input_size}")
    want = ONNX_DTYPES[spec.input_dtype]
    if inp.type != want:
        have = next((k for k, v in ONNX_DTYPES.items() if v == inp.type), None)
        hint = f" (set input_dtype {have!r})" if have else ""
        problems.append(f"input {spec.input_name!r} is {inp.type}; the spec's input_dtype "
                        f"{spec.input_dtype!r} means {want}{hint}")
    extra = sorted(n for n in inputs if n != spec.input_name)
    if extra:
        problems.append(f"inputs other than {spec.input_name!r} are not fed: {extra}")
    return problems


def _named_outputs(spec: ModelSpec) -> list[str]:
    """The output names the spec refers to: output_name and every `outputs.*_output`."""
    names = [spec.output_name]
    names += [str(v) for k, v in spec.outputs.items() if k.endswith("_output") and v]
    return list(dict.fromkeys(names))


def output_shape_problems(spec: ModelSpec, outputs: dict[str, np.ndarray], batch: int) -> list[str]:
    """What stops the declared kind from decoding these dry-run outputs (a batch of `batch` tiles)."""
    y = outputs.get(spec.output_name)
    if y is None:
        return [f"output {spec.output_name!r} not found (outputs: {sorted(outputs)})"]
    problems: list[str] = []
    shape = list(y.shape)
    if not shape or shape[0] != batch:
        problems.append(f"output {spec.output_name!r} has shape {shape} for a batch of {batch}: "
                        f"its first axis must be the batch")
    elif not np.isfinite(np.asarray(y, dtype=np.float32)).all():
        problems.append(f"output {spec.output_name!r} is not finite (NaN or inf) on the dry-run batch")
    side = spec.input_size // spec.output_downsample
    k = len(spec.labels)
    if spec.kind in REGION_KINDS and y.ndim == 4 and class_axis(spec, y.shape) == 3:
        shape = [shape[0], shape[3], shape[1], shape[2]]  # channels-last (N, h, w, K): read as (N, K, h, w)
    if spec.kind == "tile-classification":
        if not (y.ndim == 2 or (y.ndim == 4 and shape[2:] == [1, 1])):
            problems.append(f"output {spec.output_name!r} has shape {list(y.shape)}; tile-classification needs "
                            "(N, K) or (N, K, 1, 1): one class vector per tile")
        elif shape[1] != k:
            problems.append(f"output {spec.output_name!r} has {shape[1]} channels but {k} labels are declared "
                            f"(labels[i] names channel i)")
    elif spec.kind == "semantic-segmentation":
        if y.ndim != 4:
            problems.append(f"output {spec.output_name!r} has shape {list(y.shape)}; semantic-segmentation needs "
                            f"(N, K, {side}, {side}) from input_size {spec.input_size} / output_downsample "
                            f"{spec.output_downsample}")
        else:
            if shape[1] != k:
                problems.append(f"output {spec.output_name!r} has {shape[1]} channels but {k} labels are declared "
                                f"(labels[i] names channel i)")
            if shape[2:] != [side, side]:
                problems.append(f"output {spec.output_name!r} is {shape[2]}x{shape[3]}; (N, K, {side}, {side}) "
                                f"expected from input_size {spec.input_size} / output_downsample "
                                f"{spec.output_downsample} (set output_downsample to input_size / h)")
    elif spec.kind == "classification":
        if y.ndim not in (3, 4) or shape[-1] != side or shape[-2] != side:
            problems.append(f"output {spec.output_name!r} has shape {shape}; (N, [1,] {side}, {side}) expected "
                            f"from input_size {spec.input_size} / output_downsample {spec.output_downsample}")
        elif y.ndim == 4 and shape[1] != 1:
            problems.append(f"output {spec.output_name!r} has {shape[1]} channels; classification draws one "
                            "probability map (N, 1, h, w): use kind semantic-segmentation for one region set "
                            "per channel")
    elif spec.kind in OBJECT_KINDS:
        from scanbridge.inference.instances import output_problems

        problems += output_problems(spec, outputs)
    return problems


def validate_onnx(spec: ModelSpec, data: bytes, *, dry_run: bool = True) -> dict[str, Any]:
    """Load `data` with onnxruntime and check it matches `spec`; returns facts, raises ModelInvalidError.

    Checks the spec alone (mpp, normalisation vs dtype, downsample), the input (name, rank 4, 3 channels
    on the layout's channel axis, dtype, static size = input_size, no other input), the outputs the spec
    names, and with `dry_run` one batch through the pipeline's own runner with the kind's output shape
    rules (label count = channel count for region kinds). Every problem is in details.problems.
    """
    if not data:
        raise ModelInvalidError("the ONNX file is empty", details={"problems": ["empty file"]})
    if len(data) > MAX_ONNX_BYTES:
        raise ModelInvalidError(f"the ONNX file is {len(data)} bytes; the limit is {MAX_ONNX_BYTES}",
                                details={"problems": ["file too large"]})
    try:
        model = OnnxModel(spec, data, prefer_gpu=False, io_binding=False)
    except InferenceError as exc:
        raise ModelInvalidError(f"onnxruntime cannot load the file: {exc.message[:500]}",
                                details={"problems": ["not loadable by onnxruntime"]}) from exc
    session = model.session
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    facts: dict[str, Any] = {
        "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
        "inputs": {n: {"shape": _dims(i.shape), "type": i.type} for n, i in inputs.items()},
        "outputs": {n: {"shape": _dims(o.shape), "type": o.type} for n, o in outputs.items()},
        "static_batch": model.static_batch,
    }
    problems = spec_problems(spec)
    input_problems = _input_problems(spec, inputs)
    problems += input_problems
    problems += [f"output {name!r} not found (outputs: {sorted(outputs)})"
                 for name in _named_outputs(spec) if name not in outputs]
    if dry_run and not input_problems and spec.output_name in outputs:
        n = model.static_batch or DRY_RUN_BATCH
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, size=(n, spec.input_size, spec.input_size, 3), dtype=np.uint8)
        facts["dry_run_batch"] = n
        try:
            outs = model.run(batch)
        except InferenceError as exc:
            problems.append(f"the model fails on a batch of {n} {spec.input_size}x{spec.input_size} tiles: "
                            f"{exc.message[:500]}")
        else:
            facts["dry_run_output_shape"] = list(outs[spec.output_name].shape)
            problems += output_shape_problems(spec, outs, n)
    if problems:
        raise ModelInvalidError(f"the ONNX file does not match the spec of {spec.name!r}: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                                details={"problems": problems, **facts})
    return facts
