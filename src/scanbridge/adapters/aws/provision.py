"""Create the tables, bucket and key that template.yaml defines, from template.yaml itself.

Local mode (moto server) and the tests (moto's mock_aws) call this so that the local resources cannot
drift from what SAM deploys.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from scanbridge.config import Settings

TEMPLATE_PATH = Path(__file__).resolve().parents[4] / "template.yaml"


class _CfnLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A YAML loader that keeps CloudFormation's short-form tags as plain values. libyaml's (PyYAML's C
    loader) where PyYAML has it: template.yaml parses in ~8 ms instead of ~48 ms, once per `scanbridge serve`
    start and per provisioned test environment."""


def _tag(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path | None = None) -> dict[str, Any]:
    """template.yaml as a dict (intrinsic functions kept as plain values)."""
    path = path or find_template()
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.load(fh, Loader=_CfnLoader)
    return data


@lru_cache(maxsize=1)
def find_template() -> Path:
    """template.yaml of the checkout (or the packaged copy)."""
    for candidate in (TEMPLATE_PATH, Path.cwd() / "template.yaml",
                      Path(__file__).resolve().parents[2] / "template.yaml"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("template.yaml not found next to the package or in the working directory")


def _table_args(props: dict[str, Any], name: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        args["GlobalSecondaryIndexes"] = [
            {"IndexName": g["IndexName"], "KeySchema": g["KeySchema"], "Projection": g["Projection"]}
            for g in props["GlobalSecondaryIndexes"]
        ]
    return args


def add_missing_indexes(dynamodb: Any, args: dict[str, Any]) -> list[str]:
    """Create the GSIs template.yaml has and an existing table lacks (local state kept from an older version)."""
    table = dynamodb.describe_table(TableName=args["TableName"])["Table"]
    have = {g["IndexName"] for g in table.get("GlobalSecondaryIndexes", [])}
    added: list[str] = []
    for gsi in args.get("GlobalSecondaryIndexes", []):
        if gsi["IndexName"] not in have:
            dynamodb.update_table(TableName=args["TableName"], AttributeDefinitions=args["AttributeDefinitions"],
                                  GlobalSecondaryIndexUpdates=[{"Create": gsi}])
            added.append(gsi["IndexName"])
    return added


def provision(settings: Settings, dynamodb: Any, s3: Any, kms: Any) -> str:
    """Create (if missing) every table, the bucket and the key; returns the KMS key id to use."""
    resources = load_template()["Resources"]
    existing = set(dynamodb.list_tables().get("TableNames", []))
    for logical, name in (("TasksTable", settings.table_name), ("ModelsTable", settings.models_table_name)):
        if name not in existing:
            dynamodb.create_table(**_table_args(resources[logical]["Properties"], name))
        else:
            add_missing_indexes(dynamodb, _table_args(resources[logical]["Properties"], name))
    buckets = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if settings.bucket_name not in buckets:
        if settings.aws_region == "us-east-1":
            s3.create_bucket(Bucket=settings.bucket_name)
        else:
            s3.create_bucket(Bucket=settings.bucket_name,
                             CreateBucketConfiguration={"LocationConstraint": settings.aws_region})
    key_id = settings.kms_key_id
    if key_id.startswith("alias/"):
        aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases().get("Aliases", [])}
        if key_id not in aliases:
            key_props = resources["TaskKey"]["Properties"]
            created = kms.create_key(Description=str(key_props.get("Description", "scanbridge task key")))
            kms.create_alias(AliasName=key_id, TargetKeyId=created["KeyMetadata"]["KeyId"])
    return key_id
