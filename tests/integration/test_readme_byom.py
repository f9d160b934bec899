"""The "Bring your own model" page (docs/bring-your-own-model.md) matches the code: every key documented, every JSON example a
valid ModelSpec, and the worked examples run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest
from shapely.geometry import shape
from shapely.ops import unary_union

from scanbridge.devtools.byom_models import PATTERNS, build_pattern, write_class_slide
from scanbridge.domain.models import OUTPUT_KEYS, ModelKind, ModelSpec, Normalisation
from scanbridge.entrypoints.cli import main
from scanbridge.inference.validation import validate_onnx
from scanbridge.inference.zoo import BUILTINS
from scanbridge.services.models import parse_spec

PAGE = Path(__file__).resolve().parents[2] / "docs" / "bring-your-own-model.md"


def _section() -> str:
    """The "Bring your own model" page (moved from the README to docs/), whole."""
    text = PAGE.read_text()
    assert text.startswith("# Bring your own model\n")
    return text


def _examples() -> list[dict[str, Any]]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", _section(), flags=re.DOTALL)]


def test_every_spec_key_is_documented() -> None:
    # GIVEN the page / THEN every ModelSpec key, normalisation key, outputs key and kind is named in it
    section = _section()
    for key in [*ModelSpec.model_fields, *Normalisation.model_fields, *OUTPUT_KEYS, *get_args(ModelKind)]:
        assert f"`{key}`" in section, key


def test_every_json_example_is_a_valid_spec_and_each_kind_has_one() -> None:
    # GIVEN the page's JSON examples / WHEN parsed as a registry parses a config / THEN all valid, one per kind
    specs = [parse_spec(example) for example in _examples()]
    assert {s.kind for s in specs} == set(get_args(ModelKind))
    # AND the region examples are exactly the specs the devtools script writes beside its models
    by_name = {s.name: example for s, example in zip(specs, _examples(), strict=True)}
    for pattern in ("tile-classifier", "segmenter"):
        written = json.loads(json.dumps(PATTERNS[pattern]["spec"]))
        assert by_name[written["name"]] == written, pattern


def test_the_classification_example_passes_the_upload_check_with_the_tissue_graph() -> None:
    # GIVEN the page's classification example and the file `scanbridge dev build-models` writes for tissue
    example = next(e for e in _examples() if e["kind"] == "classification")
    _, build = BUILTINS["tissue"]
    # WHEN checked as an upload is / THEN accepted, with a dry run on more than one tile
    facts = validate_onnx(parse_spec(example), build())
    assert facts["dry_run_batch"] == 2


def test_the_tile_classification_example_runs_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the page's tile-classification JSON saved as a file, the script's model and its class slide
    example = next(e for e in _examples() if e["kind"] == "tile-classification")
    (tmp_path / "tile-classifier.json").write_text(json.dumps(example))
    data, _ = build_pattern("tile-classifier")
    (tmp_path / "tile-classifier.onnx").write_bytes(data)
    truth = write_class_slide(tmp_path / "classes.svs")
    # WHEN the page's run-scan line runs
    code = main(["run-scan", str(tmp_path / "classes.svs"), "--onnx", str(tmp_path / "tile-classifier.onnx"),
                 "--spec", str(tmp_path / "tile-classifier.json"), "--out", str(tmp_path / "out"), "--no-artifacts"])
    # THEN it succeeds and each class's regions match the slide's
    assert code == 0, capsys.readouterr().err
    fc = json.loads((tmp_path / "out" / "classes.geojson").read_text())
    for name, region in truth.items():
        pred = unary_union([shape(f["geometry"]) for f in fc["features"]
                            if f["geometry"]["type"] == "Polygon" and f["properties"]["classification"]["name"] == name])
        assert pred.intersection(region).area / pred.union(region).area >= 0.85, name
