"""ModelSpec: everything the pipeline needs to know about a model besides its weights."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Label(BaseModel):
    """One output class with the colour it is drawn in."""

    name: str
    color: str = "#00ff00"


class ModelSpec(BaseModel):
    """How to feed a model and how to turn its outputs into results."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = "1"
    kind: Literal["classification", "segmentation", "detection"] = "classification"
    description: str = ""
    labels: list[Label] = Field(default_factory=list)
    input_name: str = "image"
    input_size: int = 512
    input_dtype: Literal["uint8", "float32"] = "uint8"
    mpp: float | None = None
    channel_order: Literal["RGB", "BGR"] = "RGB"
    normalisation: dict[str, list[float]] | None = None
    output_name: str = "prob"
    output_downsample: int = 1
    thresholds: dict[str, float] = Field(default_factory=lambda: {"positive": 0.5})
    stains: list[str] = Field(default_factory=list)
    default_for: list[str] = Field(default_factory=list)  # stains this model runs on when none is named
    outputs: dict[str, Any] = Field(default_factory=dict)
    builtin: bool = False

    def accepts_stain(self, stain: str | None) -> bool:
        """Whether this model is meant for `stain` (an empty list accepts any)."""
        def norm(s: str | None) -> str:
            return "".join(c for c in (s or "").upper() if c.isalnum())

        return not self.stains or norm(stain) in {norm(s) for s in self.stains}
