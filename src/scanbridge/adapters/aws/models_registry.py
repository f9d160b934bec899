"""ModelRegistry on AWS: specs in DynamoDB (ModelsTable, key `name`), ONNX files in S3 (models/{name}/{version}.onnx)."""

from __future__ import annotations

from typing import Any

from scanbridge.adapters.aws.s3 import S3ArtifactStore
from scanbridge.domain.models import ModelSpec
from scanbridge.domain.storage_keys import model_prefix, onnx_key


class DynamoModelRegistry:
    """Registered models: one DynamoDB item per model (the spec as JSON plus file facts), files in S3."""

    def __init__(self, dynamodb: Any, table_name: str, s3: Any, bucket: str) -> None:
        self._db = dynamodb
        self._table = table_name
        self._s3 = s3
        self._bucket = bucket
        self._files = S3ArtifactStore(s3, bucket)

    def list_specs(self) -> list[ModelSpec]:
        """Every registered spec, by name."""
        specs: list[ModelSpec] = []
        for page in self._db.get_paginator("scan").paginate(TableName=self._table):
            specs.extend(ModelSpec.model_validate_json(item["doc"]["S"]) for item in page.get("Items", []))
        return sorted(specs, key=lambda s: s.name)

    def get_spec(self, name: str) -> ModelSpec | None:
        """The registered spec of `name`, or None."""
        out = self._db.get_item(TableName=self._table, Key={"name": {"S": name}}, ConsistentRead=True)
        item = out.get("Item")
        return ModelSpec.model_validate_json(item["doc"]["S"]) if item else None

    def file_info(self, name: str) -> dict[str, Any] | None:
        """Facts recorded with the spec (sha256, size, key, updated_at), or None."""
        out = self._db.get_item(TableName=self._table, Key={"name": {"S": name}}, ConsistentRead=True)
        item = out.get("Item")
        if not item:
            return None
        return {k: (v["S"] if "S" in v else int(v["N"])) for k, v in item.items() if k not in ("doc", "name")}

    def put_spec(self, spec: ModelSpec, info: dict[str, Any]) -> None:
        """Store `spec` (replacing any) with facts about its file."""
        item: dict[str, Any] = {"name": {"S": spec.name}, "version": {"S": spec.version},
                                "kind": {"S": spec.kind}, "doc": {"S": spec.model_dump_json()}}
        for key, value in info.items():
            item[key] = {"N": str(value)} if isinstance(value, int) else {"S": str(value)}
        self._db.put_item(TableName=self._table, Item=item)

    def delete_spec(self, name: str) -> bool:
        """Remove the spec; False when there was none."""
        out = self._db.delete_item(TableName=self._table, Key={"name": {"S": name}}, ReturnValues="ALL_OLD")
        return bool(out.get("Attributes"))

    def put_onnx(self, name: str, version: str, data: bytes) -> str:
        """Store the ONNX file; returns its key."""
        key = onnx_key(name, version)
        self._files.put(key, data)
        return key

    def get_onnx(self, name: str, version: str) -> bytes | None:
        """The ONNX file, or None."""
        return self._files.get(onnx_key(name, version))

    def delete_onnx(self, name: str) -> int:
        """Remove every version of the model's files; returns how many."""
        keys = self._files.list(model_prefix(name))
        for i in range(0, len(keys), 1000):
            self._s3.delete_objects(Bucket=self._bucket,
                                    Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        return len(keys)
