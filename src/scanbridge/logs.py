"""Logs for every entry point: Powertools' JSON formatter on the root logger, tokens scrubbed.

Library code logs with the standard `logging` module and passes `extra={"task_id": ...}`; the
formatter turns each record into one JSON line with the task_id as a key (the correlation id).
On a terminal (SCANBRIDGE_LOG_FORMAT=auto, the default) the console gets one readable line per record
instead; a worker's log file, CloudWatch and pipes always get JSON (GET /tasks/{id}/logs reads it).
"""

from __future__ import annotations

import logging
import re
import sys
import time

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
BEARER_RE = re.compile(r"(?i)(bearer\s+)[^\s\"']+")


class ScrubSecrets(logging.Filter):
    """Defence in depth: replace anything shaped like a JWT or a Bearer credential in a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message (args included) with secrets masked."""
        message = record.getMessage()
        cleaned = BEARER_RE.sub(r"\1***", JWT_RE.sub("***JWT***", message))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class ReadableFormatter(logging.Formatter):
    """`12:03:04 INFO    worker: finished task abc: COMPLETED  task_id=abc` for a person at a terminal."""

    KEYS = ("task_id", "scan_id", "job_id", "status", "code")

    def format(self, record: logging.LogRecord) -> str:
        """One line: time, level, short logger name, message, then the correlation keys it carries."""
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix("scanbridge.")
        line = f"{stamp} {record.levelname:<7} {name}: {record.getMessage()}"
        keys = [f"{k}={getattr(record, k)}" for k in self.KEYS if getattr(record, k, None) not in (None, "")]
        if keys:
            line += "  " + " ".join(keys)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def console_format(log_format: str = "auto", stream: object = None) -> str:
    """'text' or 'json': `log_format` unless auto, then text only when the stream is a terminal."""
    if log_format in ("json", "text"):
        return log_format
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return "text" if callable(isatty) and isatty() else "json"


def setup_logging(service: str, level: str = "INFO", log_format: str = "auto") -> None:
    """Logs on stderr for `service`: JSON, or readable lines on a terminal (see console_format; idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_scanbridge", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    if console_format(log_format, handler.stream) == "text":
        handler.setFormatter(ReadableFormatter())
    else:
        handler.setFormatter(LambdaPowertoolsFormatter(service=service))
    handler.addFilter(ScrubSecrets())
    handler._scanbridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "urllib3", "werkzeug", "httpx", "httpcore", "highdicom", "pydicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
