"""The model registry and ModelService: the same contract over memory and over DynamoDB + S3 (moto)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest

from scanbridge.adapters.aws.models_registry import DynamoModelRegistry
from scanbridge.adapters.aws.provision import provision
from scanbridge.adapters.local.models_registry import MemoryModelRegistry
from scanbridge.config import Settings
from scanbridge.domain.catalog import BUILTIN_SPECS
from scanbridge.domain.errors import (
    ModelInvalidError,
    ModelNotFoundError,
    ModelReadOnlyError,
    ValidationError,
)
from scanbridge.domain.models import ModelSpec
from scanbridge.inference.runner import ModelLoader
from scanbridge.inference.zoo import build_tissue_model
from scanbridge.services.models import ModelService

TISSUE_ONNX = build_tissue_model(block=8)  # matches the custom spec below (output_downsample 8)


def custom_spec(**changes: Any) -> dict[str, Any]:
    """A customer's spec for the tissue graph under another name, 64 px tiles."""
    spec: dict[str, Any] = {"name": "acme-tissue", "version": "1", "kind": "classification", "input_name": "image",
                            "input_size": 64, "input_dtype": "uint8", "output_name": "tissue_prob",
                            "output_downsample": 8, "mpp": 4.0, "labels": [{"name": "Tissue", "color": "#e377c2"}],
                            "stains": ["PD-L1"], "default_for": ["PD-L1"]}
    spec.update(changes)
    return spec


@pytest.fixture(params=["memory", "moto"])
def registry(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The same registry contract, in memory and on moto's DynamoDB + S3 (tables from template.yaml)."""
    if request.param == "memory":
        yield MemoryModelRegistry()
        return
    request.getfixturevalue("aws")
    settings = Settings()
    clients = {n: boto3.client(n, region_name="us-east-1") for n in ("dynamodb", "s3", "kms")}
    provision(settings, clients["dynamodb"], clients["s3"], clients["kms"])
    yield DynamoModelRegistry(clients["dynamodb"], settings.models_table_name, clients["s3"], settings.bucket_name)


@pytest.fixture
def models(registry: Any) -> ModelService:
    return ModelService(registry, clock=lambda: 1_700_000_000.0)


def test_put_registers_a_model_next_to_the_builtins(models: ModelService, registry: Any) -> None:
    # GIVEN a valid ONNX file and its spec
    # WHEN it is put
    stored = models.put(custom_spec(), TISSUE_ONNX)
    # THEN the catalog lists it with the built-ins and returns its spec and its exact bytes
    assert stored.builtin is False
    assert models.names() == sorted([*BUILTIN_SPECS, "acme-tissue"])
    assert models.spec("acme-tissue") == stored
    assert models.onnx_bytes("acme-tissue") == TISSUE_ONNX
    assert [s.name for s in models.list()][-1] == "acme-tissue"
    # AND describe says where the file is and what it is
    info = models.describe("acme-tissue")
    assert info["source"]["type"] == "registry" and info["source"]["onnx_key"] == "models/acme-tissue/1.onnx"
    assert len(info["source"]["sha256"]) == 64 and info["source"]["size_bytes"] == len(TISSUE_ONNX)
    assert models.describe("nuclei")["source"] == {"type": "builtin"}
    # AND the stain it claims makes it the default for that stain
    assert models.default_for("pd-l1") == "acme-tissue" and models.default_for("Ki67") == "ihc-positivity"


@pytest.mark.parametrize(("changes", "data", "problem"), [
    ({}, b"not an onnx file", "onnxruntime cannot load"),
    ({}, b"", "empty"),
    ({"input_name": "pixels"}, TISSUE_ONNX, "input 'pixels' not found"),
    ({"input_dtype": "float32"}, TISSUE_ONNX, "tensor(uint8)"),
    ({"output_name": "logits"}, TISSUE_ONNX, "output 'logits' not found"),
    ({"output_downsample": 4}, TISSUE_ONNX, "(N, [1,] 16, 16) expected"),
])
def test_an_onnx_file_that_does_not_match_its_spec_is_refused(models: ModelService, changes: dict[str, Any],
                                                              data: bytes, problem: str) -> None:
    # GIVEN a file and a spec that disagree / WHEN put / THEN MODEL_INVALID says why, and nothing is stored
    with pytest.raises(ModelInvalidError) as err:
        models.put(custom_spec(**changes), data)
    assert err.value.code == "MODEL_INVALID"
    assert problem in err.value.message + " ".join(err.value.details.get("problems", []))
    assert "acme-tissue" not in models.names()


def test_an_invalid_spec_is_refused_with_its_field_errors(models: ModelService) -> None:
    # GIVEN a spec with a bad name and kind / WHEN put / THEN MODEL_INVALID lists the fields
    with pytest.raises(ModelInvalidError) as err:
        models.put(custom_spec(name="Bad Name!", kind="regression"), TISSUE_ONNX)
    locs = {tuple(e["loc"]) for e in err.value.details["errors"]}
    assert ("name",) in locs and ("kind",) in locs


def test_builtins_are_read_only(models: ModelService) -> None:
    # GIVEN the built-in models / WHEN replaced, patched or deleted / THEN MODEL_READ_ONLY (409)
    with pytest.raises(ModelReadOnlyError):
        models.put(custom_spec(name="tissue", input_size=512), TISSUE_ONNX)
    with pytest.raises(ModelReadOnlyError):
        models.patch("nuclei", {"thresholds": {"nucleus": 0.9}})
    with pytest.raises(ModelReadOnlyError):
        models.delete("ihc-positivity")
    assert models.spec("nuclei") == BUILTIN_SPECS["nuclei"]


def test_patch_changes_fields_and_revalidates_io_changes(models: ModelService) -> None:
    # GIVEN a registered model
    models.put(custom_spec(), TISSUE_ONNX)
    # WHEN a threshold and the description are patched / THEN they change, the rest stays
    patched = models.patch("acme-tissue", {"thresholds": {"tissue": 0.7}, "description": "v1 tuned"})
    assert patched.thresholds == {"tissue": 0.7} and models.spec("acme-tissue").description == "v1 tuned"
    assert models.spec("acme-tissue").input_size == 64
    # AND an I/O change the stored file cannot honour is refused, leaving the spec as it was
    with pytest.raises(ModelInvalidError):
        models.patch("acme-tissue", {"input_name": "pixels"})
    assert models.spec("acme-tissue").input_name == "image"
    # AND an I/O change it can honour is accepted (the graph is fully convolutional)
    assert models.patch("acme-tissue", {"input_size": 128}).input_size == 128
    # AND name / version cannot be patched, unknown fields are refused
    with pytest.raises(ValidationError):
        models.patch("acme-tissue", {"version": "2"})
    with pytest.raises(ValidationError):
        models.patch("acme-tissue", {"colour": "red"})
    with pytest.raises(ModelNotFoundError):
        models.patch("nope", {"description": "x"})


def test_a_new_version_replaces_the_old_and_delete_removes_every_file(models: ModelService, registry: Any) -> None:
    # GIVEN versions 1 and 2 put one after the other
    models.put(custom_spec(), TISSUE_ONNX)
    models.put(custom_spec(version="2"), TISSUE_ONNX)
    # THEN the spec is version 2 and both files are kept (a worker on version 1 can finish)
    assert models.spec("acme-tissue").version == "2"
    assert models.onnx_bytes("acme-tissue", "1") == TISSUE_ONNX
    # WHEN deleted / THEN the model and all its files are gone, and a second delete is MODEL_NOT_FOUND
    models.delete("acme-tissue")
    assert "acme-tissue" not in models.names()
    assert registry.get_onnx("acme-tissue", "1") is None and registry.get_onnx("acme-tissue", "2") is None
    with pytest.raises(ModelNotFoundError):
        models.delete("acme-tissue")
    with pytest.raises(ModelNotFoundError):
        models.spec("acme-tissue")


def test_model_loader_runs_a_registered_model(models: ModelService) -> None:
    # GIVEN a registered model and a loader that reads the registry
    models.put(custom_spec(), TISSUE_ONNX)
    loader = ModelLoader(source=models, prefer_gpu=False)
    # WHEN loaded by name and run on a stroma-coloured batch
    model = loader.load("acme-tissue")
    out = model.run(np.full((2, 64, 64, 3), (230, 150, 190), np.uint8))
    # THEN it is the registered spec, its output is 8x8 tissue, and it is cached per version
    assert model.spec.name == "acme-tissue" and out["tissue_prob"].shape == (2, 1, 8, 8)
    assert float(out["tissue_prob"].min()) > 0.9
    assert loader.load("acme-tissue") is model
    models.put(custom_spec(version="2"), TISSUE_ONNX)
    assert loader.load("acme-tissue") is not model
    # AND unknown names are MODEL_NOT_FOUND at check time
    with pytest.raises(ModelNotFoundError):
        loader.check("nope")
    loader.check("nuclei")


def test_service_is_a_model_catalog_for_the_api(models: ModelService) -> None:
    # GIVEN the service / WHEN used where a ModelCatalog is expected / THEN it satisfies the protocol
    from scanbridge.ports import ModelCatalog

    catalog: ModelCatalog = models
    assert "tissue" in catalog.names() and catalog.spec("tissue").builtin
    with pytest.raises(ModelNotFoundError):
        catalog.spec("nope")
    described = models.describe("tissue")
    assert described.pop("source") == {"type": "builtin"}
    assert ModelSpec.model_validate(described) == catalog.spec("tissue")
