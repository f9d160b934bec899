"""ArtifactStore on S3."""

from __future__ import annotations

from typing import IO, Any

from botocore.exceptions import ClientError


class S3ArtifactStore:
    """Artifacts as S3 objects under one bucket."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self._bucket = bucket

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key`."""
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=data, ContentType=content_type)

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str = "application/octet-stream") -> None:
        """Store the rest of `fileobj` under `key`: boto3's managed upload (a multipart upload past 8 MiB,
        parts read from the file as they are sent)."""
        self._s3.upload_fileobj(fileobj, self._bucket, key, ExtraArgs={"ContentType": content_type})

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when absent."""
        try:
            out = self._s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        body: bytes = out["Body"].read()
        return body

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix`."""
        keys: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A presigned GET URL."""
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_s)
        return url
