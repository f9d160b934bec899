"""Structured logs for every entry point: Powertools' JSON formatter on the root logger, tokens scrubbed.

Library code logs with the standard `logging` module and passes `extra={"task_id": ...}`; the
formatter turns each record into one JSON line with the task_id as a key (the correlation id).
"""

from __future__ import annotations

import logging
import re

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


def setup_logging(service: str, level: str = "INFO") -> None:
    """JSON logs on stderr for `service` (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_scanbridge", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(LambdaPowertoolsFormatter(service=service))
    handler.addFilter(ScrubSecrets())
    handler._scanbridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "urllib3", "werkzeug", "httpx", "httpcore", "highdicom", "pydicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
