"""TaskStore on DynamoDB: the task document as JSON plus indexed attributes, versioned writes."""

from __future__ import annotations

import base64
import json
from typing import Any

from botocore.exceptions import ClientError

from scanbridge.domain.status import TaskStatus
from scanbridge.domain.task import Task
from scanbridge.ports import TaskPage


def _encode_cursor(key: dict[str, Any] | None) -> str | None:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode() if key else None


def _decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    if not cursor:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError) as exc:
        from scanbridge.domain.errors import ValidationError

        raise ValidationError("invalid cursor") from exc
    return value if isinstance(value, dict) else None


#: the one partition of the by_created index (every task), so that a Query can sort them all
LIST_BUCKET = "task"


def created_key(task: Task) -> str:
    """The by_created index's sort key: newest first, ties broken by task id."""
    return f"{task.created_at}#{task.task_id}"


class DynamoTaskStore:
    """Tasks in one DynamoDB table keyed by task_id (GSIs by_created, by_status and by_company).

    Every listing is a Query on an index sorted by creation time, read backwards, so pages are
    newest first across pages: by_created (a constant partition, sort key created_at#task_id) without
    filters, by_status / by_company with them.
    """

    def __init__(self, client: Any, table_name: str) -> None:
        self._db = client
        self._table = table_name

    def _item(self, task: Task) -> dict[str, Any]:
        return {
            "task_id": {"S": task.task_id},
            "company_id": {"S": task.company_id or "-"},
            "status": {"S": str(task.status)},
            "created_at": {"S": task.created_at},
            "list_bucket": {"S": LIST_BUCKET},
            "created_key": {"S": created_key(task)},
            "updated_at": {"S": task.updated_at},
            "version": {"N": str(task.version)},
            "doc": {"S": task.model_dump_json()},
        }

    @staticmethod
    def _task(item: dict[str, Any]) -> Task:
        return Task.model_validate_json(item["doc"]["S"])

    def create(self, task: Task) -> bool:
        """Store a new task; False when its task_id exists."""
        try:
            self._db.put_item(TableName=self._table, Item=self._item(task),
                              ConditionExpression="attribute_not_exists(task_id)")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get(self, task_id: str) -> Task | None:
        """The task, or None."""
        out = self._db.get_item(TableName=self._table, Key={"task_id": {"S": task_id}}, ConsistentRead=True)
        item = out.get("Item")
        return self._task(item) if item else None

    def replace(self, task: Task, expected_version: int) -> bool:
        """Write `task` if the stored version is `expected_version`."""
        stored = task.model_copy(update={"version": expected_version + 1})
        try:
            self._db.put_item(TableName=self._table, Item=self._item(stored),
                              ConditionExpression="version = :v",
                              ExpressionAttributeValues={":v": {"N": str(expected_version)}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def list(self, *, status: TaskStatus | None = None, company_id: str | None = None,
             limit: int = 50, cursor: str | None = None) -> TaskPage:
        """Tasks newest first (by index) filtered by status and/or company."""
        args: dict[str, Any] = {"TableName": self._table, "Limit": limit}
        start = _decode_cursor(cursor)
        if start:
            args["ExclusiveStartKey"] = start
        if company_id:
            args.update(IndexName="by_company", ScanIndexForward=False,
                        KeyConditionExpression="company_id = :c",
                        ExpressionAttributeValues={":c": {"S": company_id}})
            if status:
                args["FilterExpression"] = "#s = :s"
                args["ExpressionAttributeNames"] = {"#s": "status"}
                args["ExpressionAttributeValues"][":s"] = {"S": str(status)}
            out = self._db.query(**args)
        elif status:
            args.update(IndexName="by_status", ScanIndexForward=False,
                        KeyConditionExpression="#s = :s", ExpressionAttributeNames={"#s": "status"},
                        ExpressionAttributeValues={":s": {"S": str(status)}})
            out = self._db.query(**args)
        else:
            args.update(IndexName="by_created", ScanIndexForward=False, KeyConditionExpression="list_bucket = :b",
                        ExpressionAttributeValues={":b": {"S": LIST_BUCKET}})
            out = self._db.query(**args)
        tasks = [self._task(i) for i in out.get("Items", [])]
        return TaskPage(tasks=tasks, next_cursor=_encode_cursor(out.get("LastEvaluatedKey")))
