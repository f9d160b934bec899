"""ModelSpec: everything the pipeline needs to know about a model besides its weights.

The spec is strict (unknown keys are refused, by name) because a silently dropped key gives silently
wrong results. It is a public contract: docs/bring-your-own-model.md documents every
key, and `GET /models/schema` serves this model's JSON Schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelKind = Literal["classification", "segmentation", "detection", "tile-classification",
                    "semantic-segmentation"]
REGION_KINDS = frozenset({"tile-classification", "semantic-segmentation"})  # class regions per label
OBJECT_KINDS = frozenset({"segmentation", "detection"})  # instances (nuclei, cells, boxes)

# Keys of `outputs`, each with what it means (docs/bring-your-own-model.md and the JSON Schema repeat these).
OUTPUT_KEYS: dict[str, str] = {
    # classification (heat map) and region kinds
    "contour_levels": "probability levels of the heat map's contours",
    "contour_colors": "one colour per contour level",
    "min_region_um2": "regions smaller than this (µm²) are dropped",
    "min_tissue": "share of a tile's core that must be tissue for the tile to run",
    "tile_overlap": "model pixels read past every side of a tile (objects on seams are kept once)",
    # instance decoders
    "decoder": "how instance outputs are decoded: threshold (probability map, split by watershed), "
               "hovernet (nuclear probability + horizontal/vertical maps [+ type map]), "
               "stardist (probability + radial distances), boxes (N, M, >=5 detections)",
    "hv_output": "HoVer-Net: the output holding the horizontal/vertical distance maps (N, 2, h, w)",
    "type_output": "HoVer-Net: the optional type map (N, K, h, w); channel i is labels[i]",
    "rays_output": "StarDist: the output holding the radial distances (N, R, h, w); ray k at angle 2 pi k / R "
                   "from +x towards +y",
    "rays_units": "StarDist: input (default: distances in model input pixels, as StarDist writes them) or "
                  "output (in output pixels)",
    "probability_channel": "channel of the primary output that holds the object probability",
    "output_crop": "output pixels missing on each side (a valid-convolution model: output side = "
                   "input_size / output_downsample - 2 * output_crop)",
    "nms_iou": "detections of the same class overlapping more than this are merged (non-maximum suppression)",
    "box_format": "boxes: xyxy (x1, y1, x2, y2; default) or cxcywh",
    "draw": "boxes: points, boxes or both",
    # the built-in nuclei pipeline
    "stain_output": "output with per-pixel stain optical densities",
    "stain_channels": "names of the stain output's channels",
    "intensity_channel": "stain channel whose mean is measured",
    "positive_channel": "channel of the primary output with the positive-class probability",
    "nucleus_radius_um": "typical nucleus radius (µm), for splitting touching nuclei",
    "min_area_um2": "objects smaller than this (µm²) are dropped",
    "max_area_um2": "objects larger than this (µm²) are dropped",
    "blob_contrast": "threshold decoder, H&E: keep only objects holding a compact blob of the haematoxylin (or DAB) "
                     "density, a point this much (OD) darker than the lowest value along every ray but one out "
                     "to nucleus_radius_um + 2 µm (a fibre or the flat inside of a dark region has none), and "
                     "not more than half ringed by glass; not applied when the scan's stain vectors show DAB",
    "polygons": "draw each object's outline (else points only)",
    "summary_label": "the report's name for the positivity figure",
    "hscore_thresholds": "three ascending values of the positive channel's nucleus mean for 1+ / 2+ / 3+: "
                         "each nucleus gets a DAB grade, the scan an H-score (0-300)",
    "cell_expansion_um": "cell compartment: the ring from each nucleus outline out to this distance (µm); "
                         "its mean of the intensity_channel stain is reported as 'Cell DAB OD mean' and "
                         "cell positivity (thresholds.cell_positive) apart from nuclear positivity",
}
DECODERS = ("threshold", "hovernet", "stardist", "boxes")


class Label(BaseModel):
    """One output class with the colour it is drawn in."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    color: str = Field("#00ff00", pattern=r"^#[0-9a-fA-F]{6}$")


class Normalisation(BaseModel):
    """The model's input is `(pixel * scale - mean) / std`, pixel in 0-255 in the model's channel order."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0)
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0], min_length=3, max_length=3)
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], min_length=3, max_length=3)

    @field_validator("std")
    @classmethod
    def _no_zero_std(cls, value: list[float]) -> list[float]:
        if any(s == 0 for s in value):
            raise ValueError("std must not contain 0")
        return value


class ModelSpec(BaseModel):
    """How to feed a model and how to turn its outputs into results."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field("1", min_length=1, max_length=64)
    kind: ModelKind = "classification"
    description: str = Field("", max_length=4000)
    labels: list[Label] = Field(default_factory=list)
    background_labels: list[str] = Field(default_factory=list)  # labels not drawn as regions
    input_name: str = "image"
    input_size: int = Field(512, ge=16, le=8192)
    input_layout: Literal["NCHW", "NHWC"] = "NCHW"
    input_dtype: Literal["uint8", "float32", "float16"] = "uint8"
    mpp: float | None = Field(None, gt=0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    normalisation: Normalisation | None = None
    output_name: str = "prob"
    output_downsample: int = Field(1, ge=1)
    output_activation: Literal["none", "softmax", "sigmoid"] = "none"
    thresholds: dict[str, float] = Field(default_factory=lambda: {"positive": 0.5})
    stains: list[str] = Field(default_factory=list)
    default_for: list[str] = Field(default_factory=list)  # stains this model runs on when none is named
    outputs: dict[str, Any] = Field(default_factory=dict)
    builtin: bool = False

    @field_validator("outputs")
    @classmethod
    def _known_outputs(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(OUTPUT_KEYS))
        if unknown:
            raise ValueError(f"unknown outputs keys: {unknown} (known: {sorted(OUTPUT_KEYS)})")
        if "decoder" in value and value["decoder"] not in DECODERS:
            raise ValueError(f"outputs.decoder must be one of {list(DECODERS)}")
        return value

    @model_validator(mode="after")
    def _labels_consistent(self) -> ModelSpec:
        names = [lb.name for lb in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique: {names}")
        missing = sorted(set(self.background_labels) - set(names))
        if missing:
            raise ValueError(f"background_labels {missing} are not among labels {names}")
        if self.kind in REGION_KINDS and not self.labels:
            raise ValueError(f"kind {self.kind!r} needs labels: labels[i] names output channel i")
        return self

    @property
    def decoder(self) -> str:
        """The instance decoder: `outputs.decoder`, else boxes for detection, threshold otherwise."""
        default = "boxes" if self.kind == "detection" else "threshold"
        return str(self.outputs.get("decoder", default))

    def accepts_stain(self, stain: str | None) -> bool:
        """Whether this model is meant for `stain` (an empty list accepts any)."""
        def norm(s: str | None) -> str:
            return "".join(c for c in (s or "").upper() if c.isalnum())

        return not self.stains or norm(stain) in {norm(s) for s in self.stains}
