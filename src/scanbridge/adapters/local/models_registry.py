"""In-memory ModelRegistry: the same contract as DynamoModelRegistry, for local mode and tests."""

from __future__ import annotations

import threading
from typing import Any

from scanbridge.domain.models import ModelSpec
from scanbridge.domain.storage_keys import model_prefix, onnx_key


class MemoryModelRegistry:
    """Registered models in dicts (specs as JSON, so callers never share mutable objects)."""

    def __init__(self) -> None:
        self._specs: dict[str, tuple[str, dict[str, Any]]] = {}
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def list_specs(self) -> list[ModelSpec]:
        """Every registered spec, by name."""
        with self._lock:
            docs = [doc for doc, _ in self._specs.values()]
        return sorted((ModelSpec.model_validate_json(d) for d in docs), key=lambda s: s.name)

    def get_spec(self, name: str) -> ModelSpec | None:
        """The registered spec of `name`, or None."""
        with self._lock:
            entry = self._specs.get(name)
        return ModelSpec.model_validate_json(entry[0]) if entry else None

    def file_info(self, name: str) -> dict[str, Any] | None:
        """Facts recorded with the spec, or None."""
        with self._lock:
            entry = self._specs.get(name)
        return {"version": ModelSpec.model_validate_json(entry[0]).version, "kind":
                ModelSpec.model_validate_json(entry[0]).kind, **entry[1]} if entry else None

    def put_spec(self, spec: ModelSpec, info: dict[str, Any]) -> None:
        """Store `spec` (replacing any) with facts about its file."""
        with self._lock:
            self._specs[spec.name] = (spec.model_dump_json(), dict(info))

    def delete_spec(self, name: str) -> bool:
        """Remove the spec; False when there was none."""
        with self._lock:
            return self._specs.pop(name, None) is not None

    def put_onnx(self, name: str, version: str, data: bytes) -> str:
        """Store the ONNX file; returns its key."""
        key = onnx_key(name, version)
        with self._lock:
            self._files[key] = bytes(data)
        return key

    def get_onnx(self, name: str, version: str) -> bytes | None:
        """The ONNX file, or None."""
        with self._lock:
            return self._files.get(onnx_key(name, version))

    def delete_onnx(self, name: str) -> int:
        """Remove every version of the model's files; returns how many."""
        with self._lock:
            keys = [k for k in self._files if k.startswith(model_prefix(name))]
            for k in keys:
                del self._files[k]
        return len(keys)
