"""GET /tasks is newest first across pages: the same contract on the in-memory store and on DynamoDB (moto)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from scanbridge.adapters.aws.dynamodb import DynamoTaskStore
from scanbridge.adapters.aws.provision import _table_args, add_missing_indexes, load_template
from scanbridge.config import Settings
from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task
from tests.integration.test_aws_adapters import moto_clients, task_store  # noqa: F401 - fixtures

START = datetime(2026, 3, 1, tzinfo=UTC)


def _created(i: int) -> str:
    return (START + timedelta(seconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fill(store: Any, n: int) -> list[str]:
    """n tasks created one second apart, written in a shuffled order; returns their ids newest first."""
    order = list(range(n))
    random.Random(7).shuffle(order)
    for i in order:
        status = TaskStatus.COMPLETED if i % 3 else TaskStatus.QUEUED
        assert store.create(Task(task_id=f"task-{i:04d}", company_id="c1" if i % 2 else "c2", status=status,
                                 created_at=_created(i)))
    return [f"task-{i:04d}" for i in reversed(range(n))]


def _all_pages(store: Any, limit: int, **filters: Any) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(limit=limit, cursor=cursor, **filters)
        seen.extend(t.task_id for t in page.tasks)
        cursor = page.next_cursor
        if cursor is None:
            return seen


def test_listing_is_newest_first_across_pages(task_store: Any) -> None:  # noqa: F811
    # GIVEN 212 tasks stored out of order
    newest_first = _fill(task_store, 212)
    # WHEN listed with limit=1 / THEN the newest comes back
    assert [t.task_id for t in task_store.list(limit=1).tasks] == newest_first[:1]
    # AND the first page of 50 is the 50 newest, in order
    assert [t.task_id for t in task_store.list(limit=50).tasks] == newest_first[:50]
    # AND paging through every page gives every task once, newest first
    assert _all_pages(task_store, 50) == newest_first
    # AND filtered listings are newest first too
    queued = [t for t in newest_first if int(t[-4:]) % 3 == 0]
    assert _all_pages(task_store, 20, status=TaskStatus.QUEUED) == queued
    assert [t.task_id for t in task_store.list(limit=5, company_id="c1").tasks] == \
        [t for t in newest_first if int(t[-4:]) % 2][:5]


def test_provision_adds_the_listing_index_to_a_table_made_without_it(aws: None) -> None:
    # GIVEN a tasks table created from an older template (no by_created index)
    settings = Settings()
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    args = _table_args(load_template()["Resources"]["TasksTable"]["Properties"], settings.table_name)
    old = {**args, "GlobalSecondaryIndexes": [g for g in args["GlobalSecondaryIndexes"]
                                              if g["IndexName"] != "by_created"],
           "AttributeDefinitions": [a for a in args["AttributeDefinitions"]
                                    if a["AttributeName"] not in ("list_bucket", "created_key")]}
    ddb.create_table(**old)
    # WHEN provisioning meets it / THEN the index is added and listing works
    assert add_missing_indexes(ddb, args) == ["by_created"]
    store = DynamoTaskStore(ddb, settings.table_name)
    newest_first = _fill(store, 12)
    assert _all_pages(store, 5) == newest_first
