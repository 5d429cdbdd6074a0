"""S3, SQS and DynamoDB implementations (boto3). Clients are created once per container."""
from __future__ import annotations

import json
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Callable, Collection, Iterator, Mapping

import boto3
from boto3.dynamodb.conditions import Key
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from diarizer_service.backends.base import BackendError, Backends, BlobInfo, BlobNotFound, BlobTooLarge
from diarizer_service.settings import Settings

# Short timeouts and few retries: the API must answer 503 quickly instead of hitting API Gateway's 29 s.
_BOTO_CONFIG = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})


@contextmanager
def _failures_as(operation: str) -> Iterator[None]:
    """boto3/botocore errors become BackendError naming the operation (the API answers 503 on it)."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise BackendError(f"{operation} failed: {exc}") from exc


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _conditional(operation: str, write: Callable[[], Any]) -> bool:
    """Run a conditional DynamoDB write: True when it was made, False when its condition did not hold; other
    failures become BackendError naming the operation."""
    try:
        write()
        return True
    except ClientError as exc:
        if _error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise BackendError(f"{operation} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise BackendError(f"{operation} failed: {exc}") from exc


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(float(value)))  # float() also normalises numpy floats
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


def _all_pages(call, **kwargs) -> list[dict]:
    """Every item of a paginated DynamoDB scan or query."""
    items = []
    while True:
        page = call(**kwargs)
        items.extend(_from_dynamo(item) for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class S3BlobStore:
    def __init__(self, bucket: str, client=None):
        self.bucket = bucket
        self._s3 = client or boto3.client("s3", config=_BOTO_CONFIG)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        with _failures_as("S3 put"):
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                Metadata=dict(metadata or {}),
                                # The bucket's own default (template.yaml): the AWS-managed KMS key, with a
                                # bucket key so that every put is not a KMS call. "AES256" here overrode it.
                                ServerSideEncryption="aws:kms", BucketKeyEnabled=True)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=key)
            body = answer["Body"]
            if max_bytes is None:
                return body.read()
            if answer.get("ContentLength", 0) > max_bytes:
                body.close()
                raise BlobTooLarge(f"{key}: {answer['ContentLength']} bytes, over {max_bytes}")
            data = body.read(max_bytes + 1)  # the stream, not the header, has the last word
            body.close()
            if len(data) > max_bytes:
                raise BlobTooLarge(f"{key}: over {max_bytes} bytes")
            return data
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise BlobNotFound(key) from exc
            raise BackendError(f"S3 get failed: {exc}") from exc
        except BotoCoreError as exc:
            raise BackendError(f"S3 get failed: {exc}") from exc

    def head(self, key: str) -> BlobInfo | None:
        try:
            answer = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise BackendError(f"S3 head failed: {exc}") from exc
        except BotoCoreError as exc:
            raise BackendError(f"S3 head failed: {exc}") from exc
        metadata = {k.lower(): v for k, v in answer.get("Metadata", {}).items()}
        return BlobInfo(size=answer["ContentLength"], etag=answer.get("ETag", "").strip('"'), metadata=metadata)

    def current_etag(self, key: str) -> str | None:
        with _failures_as("S3 list"):
            # The key itself sorts first among the keys it prefixes.
            found = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1).get("Contents", [])
        return found[0]["ETag"].strip('"') if found and found[0]["Key"] == key else None

    def delete(self, key: str) -> None:
        with _failures_as("S3 delete"):
            self._s3.delete_object(Bucket=self.bucket, Key=key)

    def presign_put(self, key: str, expires_seconds: int) -> str:
        # The bucket's default encryption (SSE-S3 at least) applies to presigned uploads.
        return self._s3.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_seconds
        )


class SqsJobQueue:
    def __init__(self, queue_url: str, client=None):
        self.queue_url = queue_url
        self._sqs = client or boto3.client("sqs", config=_BOTO_CONFIG)

    def send(self, body: dict) -> str:
        with _failures_as("SQS send"):
            return self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body))["MessageId"]


OUTBOX_INDEX = "outbox"  # the sparse GSI of template.yaml's JobsTable: partition `outbox`, sort `outbox_at`


class DynamoJobTable:
    def __init__(self, table_name: str, resource=None):
        self._table = (resource or boto3.resource("dynamodb", config=_BOTO_CONFIG)).Table(table_name)

    def list_due(self, now: float, limit: int) -> list[dict]:
        from boto3.dynamodb.conditions import Key

        with _failures_as("DynamoDB query"):
            page = self._table.query(IndexName=OUTBOX_INDEX, Limit=limit,
                                     KeyConditionExpression=Key("outbox").eq("due") & Key("outbox_at").lte(int(now)))
        return [_from_dynamo(item) for item in page.get("Items", [])]

    def create(self, item: dict) -> bool:
        return _conditional("DynamoDB put", lambda: self._table.put_item(
            Item=_to_dynamo(item), ConditionExpression="attribute_not_exists(job_id)"))

    def get(self, job_id: str) -> dict | None:
        with _failures_as("DynamoDB get"):
            item = self._table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return _from_dynamo(item) if item else None

    def update(self, job_id: str, changes: dict, *, expected_status: Collection[str] | None = None) -> bool:
        names, values, sets, removes = {}, {}, [], []
        for i, (name, value) in enumerate(changes.items()):
            names[f"#a{i}"] = name
            if value is None:
                removes.append(f"#a{i}")
            else:
                values[f":v{i}"] = _to_dynamo(value)
                sets.append(f"#a{i} = :v{i}")
        expression = " ".join(part for part in (
            "SET " + ", ".join(sets) if sets else "", "REMOVE " + ", ".join(removes) if removes else "") if part)
        condition = "attribute_exists(job_id)"
        if expected_status:
            names["#status"] = "status"
            options = []
            for j, status in enumerate(expected_status):
                values[f":s{j}"] = status
                options.append(f":s{j}")
            condition += f" AND #status IN ({', '.join(options)})"
        kwargs = {"Key": {"job_id": job_id}, "UpdateExpression": expression, "ConditionExpression": condition,
                  "ExpressionAttributeNames": names}
        if values:
            kwargs["ExpressionAttributeValues"] = values
        return _conditional("DynamoDB update", lambda: self._table.update_item(**kwargs))

    def delete(self, job_id: str, *, expected: Mapping[str, str] | None = None) -> bool:
        kwargs: dict = {"Key": {"job_id": job_id}}
        if expected:
            kwargs["ConditionExpression"] = " AND ".join(f"#e{i} = :e{i}" for i in range(len(expected)))
            kwargs["ExpressionAttributeNames"] = {f"#e{i}": name for i, name in enumerate(expected)}
            kwargs["ExpressionAttributeValues"] = {f":e{i}": _to_dynamo(value)
                                                   for i, value in enumerate(expected.values())}
        return _conditional("DynamoDB delete", lambda: self._table.delete_item(**kwargs))


class _PlainItems:
    """A table whose writes are unconditional puts (keys, voiceprints)."""

    def __init__(self, table_name: str, resource=None):
        self._table = (resource or boto3.resource("dynamodb", config=_BOTO_CONFIG)).Table(table_name)

    def put(self, item: dict) -> None:
        with _failures_as("DynamoDB put"):
            self._table.put_item(Item=_to_dynamo(item))


class DynamoKeyStore(_PlainItems):

    def get(self, key_hash: str) -> dict | None:
        # Strongly consistent: a revocation holds from the moment it is written (voiceprints.enroll relies on it).
        with _failures_as("DynamoDB get"):
            item = self._table.get_item(Key={"key_hash": key_hash}, ConsistentRead=True).get("Item")
        return _from_dynamo(item) if item else None

    def list(self) -> list[dict]:
        with _failures_as("DynamoDB scan"):
            return _all_pages(self._table.scan)

    def update(self, key_hash: str, changes: dict) -> None:
        names = {f"#a{i}": name for i, name in enumerate(changes)}
        values = {f":v{i}": _to_dynamo(value) for i, value in enumerate(changes.values())}
        with _failures_as("DynamoDB update"):
            self._table.update_item(
                Key={"key_hash": key_hash},
                UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(changes))),
                ConditionExpression="attribute_exists(key_hash)",
                ExpressionAttributeNames=names, ExpressionAttributeValues=values,
            )


class DynamoVoiceprintStore(_PlainItems):
    """Partition key `key_id`, sort key `voiceprint_id`: a key's voiceprints are one Query, never a Scan."""

    def get(self, key_id: str, voiceprint_id: str) -> dict | None:
        with _failures_as("DynamoDB get"):
            item = self._table.get_item(Key={"key_id": key_id, "voiceprint_id": voiceprint_id},
                                        ConsistentRead=True).get("Item")
        return _from_dynamo(item) if item else None

    def list(self, key_id: str) -> list[dict]:
        with _failures_as("DynamoDB query"):
            return _all_pages(self._table.query, KeyConditionExpression=Key("key_id").eq(key_id), ConsistentRead=True)

    def delete(self, key_id: str, voiceprint_id: str) -> bool:
        with _failures_as("DynamoDB delete"):
            answer = self._table.delete_item(Key={"key_id": key_id, "voiceprint_id": voiceprint_id},
                                             ReturnValues="ALL_OLD")
        return "Attributes" in answer


def create_aws_backends(settings: Settings) -> Backends:
    missing = [name for name, value in (("DIARIZER_BUCKET", settings.bucket), ("DIARIZER_QUEUE_URL", settings.queue_url),
               ("DIARIZER_JOBS_TABLE", settings.jobs_table), ("DIARIZER_KEYS_TABLE", settings.keys_table)) if not value]
    if missing:
        raise ValueError("the aws backend needs " + ", ".join(missing))
    dynamodb = boto3.resource("dynamodb", config=_BOTO_CONFIG)
    return Backends(
        blobs=S3BlobStore(settings.bucket),
        queue=SqsJobQueue(settings.queue_url),
        jobs=DynamoJobTable(settings.jobs_table, dynamodb),
        keys=DynamoKeyStore(settings.keys_table, dynamodb),
        transcode_queue=SqsJobQueue(settings.transcode_queue_url) if settings.transcode_queue_url else None,
        voiceprints=DynamoVoiceprintStore(settings.voiceprints_table, dynamodb) if settings.voiceprints_table else None,
    )
