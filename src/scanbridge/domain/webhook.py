"""The platform's webhook body (PLATFORM.md section 1): liberal in what it accepts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_ID_LEN = 256


class StainInfo(BaseModel):
    """A scan's stain as the platform recorded it."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    value: str = ""
    stain_code: str | None = None
    label: str | None = None


class WebhookPayload(BaseModel):
    """One platform task: scans to analyse, stains, the model choice and the task JWT."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    task_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    company_id: str = Field("", max_length=MAX_ID_LEN)
    case_id: str | None = Field(None, max_length=MAX_ID_LEN)
    scans: dict[str, str] = Field(default_factory=dict)
    scan_urls: dict[str, list[str]] = Field(default_factory=dict)
    stains: dict[str, StainInfo] = Field(default_factory=dict)
    model_id: str | None = None
    model_name: str | None = None
    jwt_token: str | None = Field(None, repr=False)

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
