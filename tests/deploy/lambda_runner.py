"""A Lambda container in a fresh interpreter: imports functions/<name>/app.py's handler, answers events.

Run as `python3.12 -S -I lambda_runner.py FUNCTION_DIR PATH...`: `-S -I` give no site-packages, no
PYTHONPATH and no script folder, and `sys.path` becomes the function's folder, then PATH... (the built
layer, then the runtime's boto3), then the standard library, as AWS Lambda orders them. Standard library only.

Protocol: one JSON line per event on stdin; one JSON line per answer on the original stdout
(`{"ok": true, "response": ...}` or `{"ok": false, "error": ..., "traceback": ...}`); the first line
answers the import of the handler (with the top-level modules it loaded and the files it had to compile from
source: Lambda's /opt is read-only, so there that is paid on every cold start). Everything the handler prints
goes to stderr.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import traceback
import uuid
from typing import Any


class Context:
    """The fields of the Lambda context object that handlers and Powertools read."""

    def __init__(self, name: str) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 1024
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "replay"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def _record_compiles() -> list[str]:
    """The source files this process compiles from now on (the import system's one compile hook)."""
    from importlib import _bootstrap_external

    compiled: list[str] = []
    original = _bootstrap_external.SourceLoader.source_to_code

    def source_to_code(self: Any, data: Any, path: str, *, _optimize: int = -1) -> Any:
        compiled.append(path)
        return original(self, data, path, _optimize=_optimize)

    _bootstrap_external.SourceLoader.source_to_code = source_to_code  # type: ignore[method-assign,assignment]
    return compiled


def main() -> None:
    function_dir, paths = sys.argv[1], sys.argv[2:]
    compiled = _record_compiles()
    stdlib = [p for p in sys.path if "site-packages" not in p]
    sys.path[:] = [function_dir, *paths, *stdlib]
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # EMF metrics and prints of the handler go to stderr, the protocol keeps stdout
    sys.stdout = sys.stderr

    def answer(payload: dict[str, Any]) -> None:
        proto.write(json.dumps(payload, default=str) + "\n")

    try:
        spec = importlib.util.spec_from_file_location("app", os.path.join(function_dir, "app.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handler = module.handler
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        answer({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return
    answer({"ok": True, "response": "imported", "compiled": compiled, "modules": sorted(
        {m.split(".")[0] for m, mod in sys.modules.items() if getattr(mod, "__file__", None)})})
    name = os.path.basename(os.path.normpath(function_dir))
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer({"ok": True, "response": handler(json.loads(line), Context(name))})
        except BaseException as exc:  # noqa: BLE001 - an invocation error, as Lambda reports it
            answer({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    main()
