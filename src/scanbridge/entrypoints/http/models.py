"""Model registry routes: list and describe for tenants, PUT/PATCH/DELETE for the admin."""

from __future__ import annotations

import json
from typing import Annotated, Any, get_args

from fastapi import APIRouter, File, Form, Query, UploadFile

from scanbridge.domain.errors import ValidationError
from scanbridge.domain.models import ModelKind, ModelSpec
from scanbridge.entrypoints.http.deps import Admin, Models, Tenant

MAX_MODEL_BYTES = 512 * 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024  # a ModelSpec's JSON; far more than any real one

KIND_PATTERN = "^(" + "|".join(get_args(ModelKind)) + ")$"

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(models: Models, _caller: Tenant, label: str | None = None,
                kind: Annotated[str | None, Query(pattern=KIND_PATTERN)] = None
                ) -> dict[str, Any]:
    """Every model (built-in and registered), filtered by output label and kind."""
    specs = models.list()
    if kind:
        specs = [s for s in specs if s.kind == kind]
    if label:
        specs = [s for s in specs if any(lb.name.lower() == label.lower() for lb in s.labels)]
    return {"models": [s.model_dump(mode="json") for s in specs]}


@router.get("/models/schema", responses={200: {"description": "the JSON Schema of a ModelSpec (the config of "
                                                             "PUT /admin/models/{name}); the same as the "
                                                             "OpenAPI component ModelSpec"}})
def model_schema() -> dict[str, Any]:
    """The ModelSpec JSON Schema: every key a model's config may have (unknown keys are refused)."""
    return ModelSpec.model_json_schema()


@router.get("/models/{name}", responses={200: {"model": ModelSpec, "description": "the spec, plus `source`: "
                                                                                "builtin or registry file facts"}})
def describe_model(name: str, models: Models, _caller: Tenant) -> dict[str, Any]:
    """A model's spec and where its weights come from."""
    return models.describe(name)


@router.put("/admin/models/{name}", status_code=201)
async def put_model(name: str, models: Models, _admin: Admin, config: Annotated[str | UploadFile, Form()],
                    file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    """Register a model: multipart `config` (ModelSpec JSON, see GET /models/schema; a form field, `-F
    "config=<spec.json"`, or a file part, `-F config=@spec.json`) + `file` (ONNX), checked with onnxruntime
    first (422 MODEL_INVALID listing every problem, unknown keys by name)."""
    spec = _config_object(config if isinstance(config, str) else await _config_text(config))
    data = await file.read(MAX_MODEL_BYTES + 1)
    if len(data) > MAX_MODEL_BYTES:
        raise ValidationError(f"the ONNX file is larger than {MAX_MODEL_BYTES} bytes")
    from starlette.concurrency import run_in_threadpool

    stored = await run_in_threadpool(models.put, {**spec, "name": name}, data)
    return models.describe(stored.name)


async def _config_text(part: UploadFile) -> str:
    """The text of a `config` sent as a file part (UTF-8, at most MAX_CONFIG_BYTES)."""
    raw = await part.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValidationError(f"config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"config is not UTF-8 text: {exc}") from exc


def _config_object(text: str) -> dict[str, Any]:
    """The config's JSON object (ValidationError when it is not JSON or not an object)."""
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"config is not JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValidationError("config must be a JSON object")
    return spec


@router.patch("/admin/models/{name}")
def patch_model(name: str, changes: dict[str, Any], models: Models, _admin: Admin) -> dict[str, Any]:
    """Change a registered model's config (not its name, version or file)."""
    updated: dict[str, Any] = models.patch(name, changes).model_dump(mode="json")
    return updated


@router.delete("/admin/models/{name}", status_code=204)
def delete_model(name: str, models: Models, _admin: Admin) -> None:
    """Remove a registered model and its files."""
    models.delete(name)
