"""DeadLetterQueue on SQS."""

from __future__ import annotations

import json
from typing import Any


class SqsDeadLetterQueue:
    """Sends JSON messages to one SQS queue."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self._sqs = client
        self._url = queue_url

    def send(self, message: dict[str, Any]) -> None:
        """Send one message."""
        self._sqs.send_message(QueueUrl=self._url, MessageBody=json.dumps(message, sort_keys=True))
