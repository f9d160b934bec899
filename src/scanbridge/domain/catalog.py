"""The built-in models' specs (pure data; the graphs are built in inference/zoo.py)."""

from __future__ import annotations

from scanbridge.domain.errors import ModelNotFoundError
from scanbridge.domain.models import Label, ModelSpec

TISSUE_SPEC = ModelSpec(
    name="tissue",
    version="1",
    kind="classification",
    description="Tissue vs background from optical density and saturation (built-in ONNX graph)",
    labels=[Label(name="Tissue", color="#e377c2")],
    input_name="image",
    input_size=512,
    input_dtype="uint8",
    mpp=4.0,
    output_name="tissue_prob",
    output_downsample=8,
    thresholds={"tissue": 0.5},
    outputs={"contour_levels": [0.25, 0.5, 0.75], "contour_colors": ["#fde0ef", "#e9a3c9", "#c51b7d"],
             "min_region_um2": 2500.0},
    builtin=True,
)

BUILTIN_SPECS: dict[str, ModelSpec] = {TISSUE_SPEC.name: TISSUE_SPEC}


class BuiltinCatalog:
    """A ModelCatalog of the built-in models."""

    def names(self) -> list[str]:
        """Every built-in model name."""
        return sorted(BUILTIN_SPECS)

    def spec(self, name: str) -> ModelSpec:
        """The spec of a built-in model; ModelNotFoundError otherwise."""
        try:
            return BUILTIN_SPECS[name]
        except KeyError:
            raise ModelNotFoundError(f"model {name!r} not found", details={"available": self.names()}) from None
