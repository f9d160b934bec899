"""Checks an uploaded ONNX file against its ModelSpec by loading it with onnxruntime (and one dry run)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from scanbridge.domain.errors import ModelInvalidError
from scanbridge.domain.models import ModelSpec

MAX_ONNX_BYTES = 2 * 1024**3 - 1  # protobuf's limit for one file
ONNX_DTYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}


def validate_onnx(spec: ModelSpec, data: bytes, *, dry_run: bool = True) -> dict[str, Any]:
    """Load `data` with onnxruntime and check it matches `spec`; returns facts, raises ModelInvalidError.

    Checks: it loads; `spec.input_name` is an input of rank 4 with 3 channels (NCHW), the spec's dtype
    and, where static, the spec's input size; no other input is required; `spec.output_name` (and the
    stain output named in `spec.outputs`) exist. With `dry_run`, one zero batch must run and give an
    output of side input_size / output_downsample. Every problem found is listed in details.problems.
    """
    import onnxruntime as ort

    if not data:
        raise ModelInvalidError("the ONNX file is empty", details={"problems": ["empty file"]})
    if len(data) > MAX_ONNX_BYTES:
        raise ModelInvalidError(f"the ONNX file is {len(data)} bytes; the limit is {MAX_ONNX_BYTES}")
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelInvalidError(f"onnxruntime cannot load the file: {str(exc)[:500]}",
                                details={"problems": ["not loadable by onnxruntime"]}) from exc
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems: list[str] = []
    inp = inputs.get(spec.input_name)
    if inp is None:
        problems.append(f"input {spec.input_name!r} not found (inputs: {sorted(inputs)})")
    else:
        shape = list(inp.shape)
        if len(shape) != 4:
            problems.append(f"input {spec.input_name!r} has rank {len(shape)}; NCHW (rank 4) expected")
        else:
            if isinstance(shape[1], int) and shape[1] != 3:
                problems.append(f"input {spec.input_name!r} has {shape[1]} channels; 3 (RGB, NCHW) expected")
            for axis, dim in (("height", shape[2]), ("width", shape[3])):
                if isinstance(dim, int) and dim != spec.input_size:
                    problems.append(f"input {axis} is {dim}; the spec's input_size is {spec.input_size}")
        want = ONNX_DTYPES[spec.input_dtype]
        if inp.type != want:
            problems.append(f"input {spec.input_name!r} is {inp.type}; the spec's input_dtype means {want}")
    extra = sorted(n for n in inputs if n != spec.input_name)
    if extra:
        problems.append(f"inputs other than {spec.input_name!r} are not fed: {extra}")
    wanted_outputs = [spec.output_name] + ([str(spec.outputs["stain_output"])]
                                           if spec.outputs.get("stain_output") else [])
    for name in wanted_outputs:
        if name not in outputs:
            problems.append(f"output {name!r} not found (outputs: {sorted(outputs)})")
    if spec.input_size % spec.output_downsample:
        problems.append(f"input_size {spec.input_size} is not a multiple of output_downsample "
                        f"{spec.output_downsample}")
    facts: dict[str, Any] = {
        "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
        "inputs": {n: {"shape": [d if isinstance(d, int) else str(d) for d in i.shape], "type": i.type}
                   for n, i in inputs.items()},
        "outputs": {n: {"shape": [d if isinstance(d, int) else str(d) for d in o.shape], "type": o.type}
                    for n, o in outputs.items()},
    }
    if problems:
        raise ModelInvalidError(f"the ONNX file does not match the spec of {spec.name!r}: {problems[0]}",
                                details={"problems": problems, **facts})
    if dry_run:
        dtype = np.uint8 if spec.input_dtype == "uint8" else np.float32
        x = np.zeros((1, 3, spec.input_size, spec.input_size), dtype=dtype)
        try:
            out = session.run([spec.output_name], {spec.input_name: x})[0]
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelInvalidError(f"the model fails on a {spec.input_size}x{spec.input_size} batch: "
                                    f"{str(exc)[:500]}", details={"problems": ["dry run failed"], **facts}) from exc
        side = spec.input_size // spec.output_downsample
        if out.ndim not in (3, 4) or out.shape[-1] != side or out.shape[-2] != side:
            raise ModelInvalidError(
                f"output {spec.output_name!r} has shape {list(out.shape)}; (N, [C,] {side}, {side}) expected "
                f"from input_size {spec.input_size} / output_downsample {spec.output_downsample}",
                details={"problems": ["output shape"], **facts})
        facts["dry_run_output_shape"] = list(out.shape)
    return facts
