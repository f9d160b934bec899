"""The platform's webhook body (PLATFORM.md section 1): liberal in what it accepts, bounded in size.

Ids end up in URL paths (`/tasks/{task_id}`, the platform's `/api/v3/external/results/{task_id}`) and
storage keys, so task and scan ids follow ID_PATTERN: RFC 3986 unreserved characters plus the base64
ones (`+`, `=`) and `:` / `@`, at least one of them not a dot (no `.`, `..`, `/`, `%`, `?`, `#`, spaces or
control characters). Base64 of ASCII text (the platform's Relay-style ids, "dGFzazoxODU4MzU=") never holds
a `/` unless the text holds `?` or DEL. Every string field has a length cap so that a task always fits
one DynamoDB item (400 KB) under the 1 MiB body cap.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

MAX_ID_LEN = 256
MAX_URL_LEN = 16 * 1024  # presigned S3 URLs with a session token are 1-3 kB
MAX_TOKEN_LEN = 16 * 1024
MAX_TEXT_LEN = 1024
MAX_URLS_PER_SCAN = 2000  # a DICOM series is one URL per file
_ID_CHAR = r"A-Za-z0-9_~=+:@\-"
#: task and scan ids: these characters, 1-256 of them, not only dots
ID_PATTERN = rf"^[{_ID_CHAR}.]*[{_ID_CHAR}][{_ID_CHAR}.]*$"
ID_RE = re.compile(ID_PATTERN)

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_LEN, pattern=r"\S")]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_LEN)]
# numbers are read as strings (coerce_numbers_to_str): the schema says so
_STR_OR_NUMBER: dict[str, Any] = {"type": ["string", "number"]}


def is_valid_id(value: str) -> bool:
    """Whether `value` may be a task or scan id (ID_PATTERN, at most MAX_ID_LEN characters)."""
    return len(value) <= MAX_ID_LEN and ID_RE.fullmatch(value) is not None


class StainInfo(BaseModel):
    """A scan's stain as the platform recorded it."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    value: Text = ""
    stain_code: Text | None = None
    label: Text | None = None


class WebhookPayload(BaseModel):
    """One platform task: scans to analyse, stains, the model choice and the task JWT."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, json_schema_extra={
        "anyOf": [{"required": ["scans"], "properties": {"scans": {"type": "object", "minProperties": 1}}},
                  {"required": ["scan_urls"], "properties": {"scan_urls": {"type": "object", "minProperties": 1}}}]})

    task_id: Id = Field(description="the platform's task; " + ID_PATTERN)
    company_id: str = Field("", max_length=MAX_ID_LEN)
    case_id: str | None = Field(None, max_length=MAX_ID_LEN)
    scans: dict[Id, Url] = Field(default_factory=dict)
    scan_urls: dict[Id, Annotated[list[Url], Field(min_length=1, max_length=MAX_URLS_PER_SCAN)]] = Field(
        default_factory=dict)
    stains: dict[Id, StainInfo] = Field(default_factory=dict)
    model_id: str | None = Field(None, max_length=MAX_ID_LEN)
    model_name: str | None = Field(None, max_length=MAX_ID_LEN)
    jwt_token: str | None = Field(None, repr=False, max_length=MAX_TOKEN_LEN)

    @field_validator("scans", "scan_urls", "stains", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _has_scans(self) -> WebhookPayload:
        if not self.scan_files():
            raise ValueError("the webhook names no scan: `scans` and `scan_urls` are both empty")
        for scan_id, urls in self.scan_files().items():
            if not urls or any(not u.strip() for u in urls):
                raise ValueError(f"scan {scan_id!r} has an empty URL list or an empty URL")
        return self

    def scan_files(self) -> dict[str, list[str]]:
        """Every scan's file URLs: `scan_urls` where present, else the single URL of `scans`."""
        files: dict[str, list[str]] = {}
        for scan_id in list(self.scan_urls) + [s for s in self.scans if s not in self.scan_urls]:
            urls = self.scan_urls.get(scan_id) or ([self.scans[scan_id]] if scan_id in self.scans else [])
            files[scan_id] = list(urls)
        return files

    def requested_model(self) -> str | None:
        """The model asked for: `model_id`, else `model_name`; empty means the default."""
        for name in (self.model_id, self.model_name):
            if name and name.strip():
                return name.strip()
        return None

    def extra_fields(self) -> dict[str, Any]:
        """Fields the contract does not name; kept with the task."""
        return dict(self.model_extra or {})
