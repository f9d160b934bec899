"""Models: the built-ins plus a registry of uploaded ONNX models, behind one ModelCatalog.

The API side lists, shows, uploads, patches and deletes models; the worker's ModelLoader reads specs and
ONNX bytes through the same service (`spec`, `onnx_bytes`). Built-ins are code: they cannot be
replaced, patched or deleted, and their names are reserved. An upload is validated before anything is
stored (onnxruntime loads it and one dry batch runs); the file is written before the spec, so a spec
never points at a missing file.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from typing import Any

import pydantic

from scanbridge.domain.catalog import BUILTIN_SPECS, default_model_for
from scanbridge.domain.errors import (
    ModelInvalidError,
    ModelNotFoundError,
    ModelReadOnlyError,
    ValidationError,
)
from scanbridge.domain.models import OUTPUT_KEYS, Label, ModelSpec, Normalisation
from scanbridge.ports import ModelRegistry

Validator = Callable[[ModelSpec, bytes], dict[str, Any]]

# Changing these needs the file checked again (PATCH re-validates the stored file against the new spec).
IO_FIELDS = frozenset({"input_name", "input_size", "input_dtype", "input_layout", "channel_order", "normalisation",
                       "output_name", "output_downsample", "output_activation", "outputs", "kind", "labels",
                       "background_labels", "mpp"})
FROZEN_FIELDS = frozenset({"name", "version", "builtin"})



def default_validator() -> Validator:
    """onnxruntime validation (inference.validation); a clear error where onnxruntime is not installed."""
    try:
        from scanbridge.inference.validation import validate_onnx
    except ImportError:  # the API Lambda layer has no onnxruntime

        def unavailable(spec: ModelSpec, data: bytes) -> dict[str, Any]:
            raise ModelInvalidError("models cannot be validated here (onnxruntime is not installed); "
                                    "upload through a process that has it", details={"problems": ["no validator"]})

        return unavailable
    return validate_onnx


class ModelService:
    """A ModelCatalog of built-ins + registered models, with admin operations.

    >>> models.names()                        # ['ihc-positivity', 'my-model', 'nuclei', 'tissue']
    >>> models.put(ModelSpec(name="my-model", ...), onnx_bytes)   # validated, stored, returned
    >>> models.patch("my-model", {"thresholds": {"positive": 0.6}})
    >>> models.delete("my-model")
    """

    def __init__(self, registry: ModelRegistry, *, validator: Validator | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._validator = validator
        self._clock = clock

    def _validate(self, spec: ModelSpec, data: bytes) -> dict[str, Any]:
        validator = self._validator or default_validator()
        return validator(spec, data)

    # --- ModelCatalog -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every model name (built-in and registered)."""
        return sorted(set(BUILTIN_SPECS) | {s.name for s in self._registry.list_specs()})

    def spec(self, name: str) -> ModelSpec:
        """The spec of `name`; ModelNotFoundError otherwise."""
        if name in BUILTIN_SPECS:
            return BUILTIN_SPECS[name]
        spec = self._registry.get_spec(name)
        if spec is None:
            raise ModelNotFoundError(f"model {name!r} not found", details={"available": self.names()})
        return spec

    # --- queries ----------------------------------------------------------------------------------

    def list(self) -> list[ModelSpec]:
        """Every spec, built-ins first, then registered ones, each by name."""
        return [BUILTIN_SPECS[n] for n in sorted(BUILTIN_SPECS)] + \
            [s for s in self._registry.list_specs() if s.name not in BUILTIN_SPECS]

    def describe(self, name: str) -> dict[str, Any]:
        """The spec as JSON plus where its weights come from (`source`: builtin or registry, file facts)."""
        spec = self.spec(name)
        body = spec.model_dump(mode="json")
        if spec.builtin:
            body["source"] = {"type": "builtin"}
        else:
            body["source"] = {"type": "registry", **(self._registry.file_info(name) or {})}
        return body

    def onnx_bytes(self, name: str, version: str | None = None) -> bytes:
        """The ONNX file of a registered model (current version unless given); ModelNotFoundError otherwise."""
        spec = self.spec(name)
        if spec.builtin:
            raise ModelNotFoundError(f"model {name!r} is built in; its graph is built in code, not stored")
        data = self._registry.get_onnx(name, version or spec.version)
        if data is None:
            raise ModelNotFoundError(f"the ONNX file of model {name!r} version {version or spec.version} is missing")
        return data

    def default_for(self, stain: str | None, fallback: str = "tissue") -> str:
        """The model for a scan of `stain` when the webhook names none (see catalog.default_model_for)."""
        return default_model_for(stain, self, fallback=fallback)

    # --- admin ------------------------------------------------------------------------------------

    def put(self, spec: ModelSpec | dict[str, Any], onnx_bytes: bytes) -> ModelSpec:
        """Register (or replace) a model: validate the file against the spec, store file, then spec."""
        spec = _as_spec(spec)
        if spec.name in BUILTIN_SPECS:
            raise ModelReadOnlyError(f"{spec.name!r} is a built-in model; choose another name")
        spec = spec.model_copy(update={"builtin": False})
        facts = self._validate(spec, onnx_bytes)
        key = self._registry.put_onnx(spec.name, spec.version, onnx_bytes)
        self._registry.put_spec(spec, {"onnx_key": key, "sha256": str(facts.get("sha256", "")),
                                       "size_bytes": len(onnx_bytes), "updated_at": _iso(self._clock())})
        return spec

    def patch(self, name: str, changes: dict[str, Any]) -> ModelSpec:
        """Change a registered spec's fields (not name/version: a new version is a PUT with its file)."""
        if name in BUILTIN_SPECS:
            raise ModelReadOnlyError(f"{name!r} is a built-in model and cannot be changed")
        current = self.spec(name)
        frozen = sorted(k for k, v in changes.items()
                        if k in FROZEN_FIELDS and v != getattr(current, k))
        if frozen:
            raise ValidationError(f"{frozen} cannot be patched; PUT the model with its ONNX file instead",
                                  details={"fields": frozen})
        updated = parse_spec({**current.model_dump(), **changes})
        info = self._registry.file_info(name) or {}
        if IO_FIELDS & set(changes):
            data = self._registry.get_onnx(name, current.version)
            if data is None:
                raise ModelNotFoundError(f"the ONNX file of model {name!r} is missing")
            self._validate(updated, data)
        info = {k: v for k, v in info.items() if k not in ("version", "kind")}
        info["updated_at"] = _iso(self._clock())
        self._registry.put_spec(updated, info)
        return updated

    def delete(self, name: str) -> None:
        """Remove a registered model and every stored version of its file."""
        if name in BUILTIN_SPECS:
            raise ModelReadOnlyError(f"{name!r} is a built-in model and cannot be deleted")
        if not self._registry.delete_spec(name):
            raise ModelNotFoundError(f"model {name!r} not found", details={"available": self.names()})
        self._registry.delete_onnx(name)


def _as_spec(value: ModelSpec | dict[str, Any]) -> ModelSpec:
    if isinstance(value, ModelSpec):
        return ModelSpec.model_validate(value.model_dump())
    return parse_spec(value)


def unknown_keys(value: dict[str, Any]) -> list[str]:
    """The keys of a spec (dotted for nested ones: `normalisation.meen`, `labels.0.colour`, `outputs.x`)
    that ModelSpec does not have."""
    found = [k for k in value if k not in ModelSpec.model_fields]
    norm = value.get("normalisation")
    if isinstance(norm, dict):
        found += [f"normalisation.{k}" for k in norm if k not in Normalisation.model_fields]
    labels = value.get("labels")
    if isinstance(labels, list):
        found += [f"labels.{i}.{k}" for i, lb in enumerate(labels) if isinstance(lb, dict)
                  for k in lb if k not in Label.model_fields]
    outputs = value.get("outputs")
    if isinstance(outputs, dict):
        found += [f"outputs.{k}" for k in outputs if k not in OUTPUT_KEYS]
    return found


def _suggestion(key: str) -> str:
    """' (did you mean X?)' for a misspelt key, else ''."""
    head, _, leaf = key.rpartition(".")
    if head.startswith("normalisation"):
        known: list[str] = list(Normalisation.model_fields)
    elif head.startswith("labels"):
        known = list(Label.model_fields)
    elif head.startswith("outputs"):
        known = list(OUTPUT_KEYS)
    else:
        known = [f for f in ModelSpec.model_fields if f != "builtin"]
    close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    if not close:  # "layout" -> "input_layout": compare with each word of the known keys too
        close = [k for k in known if difflib.get_close_matches(leaf, k.split("_"), n=1, cutoff=0.75)][:1]
    return f" (did you mean {'.'.join([head, close[0]]) if head else close[0]!r}?)" if close else ""


def parse_spec(value: dict[str, Any]) -> ModelSpec:
    """A ModelSpec from JSON; MODEL_INVALID naming every unknown key (`details.unknown_keys`) and listing every
    problem (`details.problems`, `details.errors` with pydantic's loc/msg) otherwise."""
    try:
        return ModelSpec.model_validate(value)
    except pydantic.ValidationError as exc:
        unknown = unknown_keys(value) if isinstance(value, dict) else []
        problems = [f"unknown key {k!r}{_suggestion(k)}" for k in unknown]
        errors = []
        for err in exc.errors():
            loc = [str(p) if isinstance(p, int) else p for p in err["loc"]]
            errors.append({"loc": list(err["loc"]), "msg": err["msg"]})
            if err["type"] == "extra_forbidden" or (loc == ["outputs"] and any(u.startswith("outputs.") for u in unknown)):
                continue  # named above
            problems.append(f"{'.'.join(map(str, loc)) or 'spec'}: {err['msg']}")
        message = "the model spec is not valid: " + "; ".join(problems[:3]) + \
            (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise ModelInvalidError(message, details={"problems": problems, "unknown_keys": unknown,
                                                  "errors": errors}) from exc


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


__all__ = ["ModelRegistry", "ModelService", "Validator", "default_validator", "parse_spec", "unknown_keys"]
