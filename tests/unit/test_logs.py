"""Console logs: readable lines on a terminal, JSON elsewhere, secrets scrubbed in both."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from scanbridge.logs import LambdaPowertoolsFormatter, ReadableFormatter, ScrubSecrets, console_format

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _emit(formatter: logging.Formatter, message: str, **extra: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ScrubSecrets())
    log = logging.getLogger("scanbridge.worker.test-logs")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning(message, extra=extra)
    finally:
        log.removeHandler(handler)
    return stream.getvalue()


@pytest.mark.parametrize(("setting", "stream", "expected"), [
    ("auto", _Tty(), "text"), ("auto", io.StringIO(), "json"), ("json", _Tty(), "json"), ("text", io.StringIO(), "text"),
])
def test_console_format_follows_the_setting_and_the_terminal(setting: str, stream: io.StringIO, expected: str) -> None:
    # GIVEN a SCANBRIDGE_LOG_FORMAT value and a stream that is or is not a terminal
    # WHEN the console format is chosen  THEN auto means text on a terminal only; json/text always win
    assert console_format(setting, stream) == expected


def test_readable_line_says_what_happened_with_its_task_and_no_secret() -> None:
    # GIVEN a worker record with a task id that (by mistake) carries a JWT
    # WHEN it is written for a person at a terminal
    line = _emit(ReadableFormatter(), f"posting results with token {JWT}", task_id="task-42", status="COMPLETED")
    # THEN one readable line: level, short logger name, message, the correlation keys, the JWT masked
    assert line.count("\n") == 1 and " WARNING worker.test-logs: posting results" in line
    assert line.rstrip().endswith("task_id=task-42 status=COMPLETED")
    assert JWT not in line and "***JWT***" in line


def test_json_line_keeps_the_task_id_as_a_key() -> None:
    # GIVEN the same record for a log file / CloudWatch
    # WHEN written as JSON  THEN it parses, and the task id is a key (the correlation id)
    body = json.loads(_emit(LambdaPowertoolsFormatter(service="t"), "finished", task_id="task-42"))
    assert body["task_id"] == "task-42" and body["message"] == "finished" and body["level"] == "WARNING"


def test_loading_a_built_in_model_prints_nothing_raw_to_the_console() -> None:
    # GIVEN a fresh interpreter (onnxruntime's own logger writes straight to its stderr, not through ours)
    code = ("from scanbridge.inference.session import OnnxModel; from scanbridge.inference.zoo import BUILTINS; "
            "spec, build = BUILTINS['nuclei']; OnnxModel(spec, build(), prefer_gpu=False)")
    # WHEN it loads the nuclei model, whose stain matrix is an overridable initializer (onnxruntime warns on it)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    # THEN onnxruntime printed no warning of its own
    assert ":onnxruntime:" not in out.stderr + out.stdout, out.stderr[-2000:]
