"""The built-in models' specs (pure data; the graphs are built in inference/zoo.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scanbridge.domain.errors import ModelNotFoundError
from scanbridge.domain.models import Label, ModelSpec

if TYPE_CHECKING:
    from scanbridge.ports import ModelCatalog

TISSUE_SPEC = ModelSpec(
    name="tissue",
    version="1",
    kind="classification",
    description="Tissue vs background from optical density and saturation (built-in ONNX graph)",
    labels=[Label(name="Tissue", color="#e377c2")],
    input_name="image",
    input_size=256,  # 0.5 mm at 2 µm/px: edge tiles read little glass
    input_dtype="uint8",
    mpp=2.0,
    output_name="tissue_prob",
    output_downsample=4,
    thresholds={"tissue": 0.5},
    stains=["HE", "H&E"],
    default_for=["HE", "H&E"],
    outputs={"contour_levels": [0.25, 0.5, 0.75], "contour_colors": ["#fde0ef", "#e9a3c9", "#c51b7d"],
             "min_region_um2": 2500.0, "min_tissue": 0.0},  # a tissue detector runs on every edge tile
    builtin=True,
)

NUCLEI_SPEC = ModelSpec(
    name="nuclei",
    version="2",  # 2: stain vectors per scan and the H&E blob test (2026-12-02); a v1 checkpoint is not resumed
    kind="segmentation",
    description="Nuclear segmentation as QuPath's cell detection: colour deconvolution with the scan's stain "
                "vectors (Macenko, once per scan; Ruifrok-Johnston when implausible), "
                "haematoxylin and DAB optical density above a local background (opening, 8 µm), smoothed and "
                "thresholded (built-in ONNX graph); touching nuclei split by distance-transform watershed; "
                "on H&E only objects holding a compact blob (darker than the tissue around it in every "
                "direction: not a collagen fibre) kept; 6-400 µm²",
    labels=[Label(name="Nucleus", color="#3f51b5")],
    input_name="image",
    input_size=512,
    input_dtype="uint8",
    mpp=0.5,
    output_name="nuclei_prob",
    output_downsample=1,
    thresholds={"nucleus": 0.5},
    stains=["HE", "H&E", "Hematoxylin", "H"],
    outputs={"stain_output": "stain_od", "stain_channels": ["Hematoxylin", "Eosin", "DAB"],
             "intensity_channel": 0, "tile_overlap": 64, "nucleus_radius_um": 3.0, "min_area_um2": 6.0,
             "max_area_um2": 400.0, "polygons": True, "min_tissue": 0.1, "blob_contrast": 0.05},
    builtin=True,
)

IHC_SPEC = ModelSpec(
    name="ihc-positivity",
    version="1",
    kind="detection",
    description="Ki67/DAB-style nuclear positivity: nuclei from haematoxylin or DAB (as the nuclei model), "
                "each positive when its mean DAB OD inside the outline, above the mean of its 3 µm "
                "neighbourhood, reaches thresholds.positive (built-in ONNX graph); DAB on membranes or in "
                "the cytoplasm around a nucleus does not make it positive",
    labels=[Label(name="Positive", color="#8b4513"), Label(name="Negative", color="#1e3a8a")],
    input_name="image",
    input_size=512,
    input_dtype="uint8",
    mpp=0.5,
    output_name="nuclei_prob",
    output_downsample=1,
    # positive: mean DAB OD above its neighbourhood mean; cell_positive: mean DAB OD of the cell ring
    thresholds={"nucleus": 0.5, "positive": 0.25, "cell_positive": 0.3},
    stains=["Ki67", "Ki-67", "MIB-1", "ER", "PR", "p53", "DAB", "IHC"],
    default_for=["Ki67", "Ki-67", "MIB-1", "MIB1", "ER", "PR", "p53", "DAB", "IHC"],
    outputs={"stain_output": "stain_od", "stain_channels": ["Hematoxylin", "Eosin", "DAB"],
             "intensity_channel": 2, "positive_channel": 1, "tile_overlap": 64, "nucleus_radius_um": 3.0,
             "min_area_um2": 6.0, "max_area_um2": 400.0, "polygons": False,
             "summary_label": "Nuclear positivity (DAB)", "min_tissue": 0.1, "decoder": "threshold",
             "hscore_thresholds": [0.25, 0.45, 0.65], "cell_expansion_um": 5.0},
    builtin=True,
)

BUILTIN_SPECS: dict[str, ModelSpec] = {s.name: s for s in (TISSUE_SPEC, NUCLEI_SPEC, IHC_SPEC)}


def normalise_stain(stain: str | None) -> str:
    """'H&E' -> 'HE', 'Ki-67' -> 'KI67': upper case, letters and digits only."""
    return "".join(c for c in (stain or "").upper() if c.isalnum())


def default_model_for(stain: str | None, catalog: ModelCatalog | None = None, *,
                      fallback: str = "tissue") -> str:
    """The model to run on a scan of `stain` when the webhook names none.

    A model whose spec lists the stain in `default_for` wins (registered models before built-ins, then
    by name); otherwise `fallback`. `catalog` defaults to the built-ins.
    """
    wanted = normalise_stain(stain)
    if not wanted:
        return fallback
    source = catalog or BuiltinCatalog()
    candidates: list[tuple[bool, str]] = []
    for name in source.names():
        try:
            spec = source.spec(name)
        except ModelNotFoundError:
            continue
        if wanted in {normalise_stain(s) for s in spec.default_for}:
            candidates.append((spec.builtin, name))
    return min(candidates)[1] if candidates else fallback


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
