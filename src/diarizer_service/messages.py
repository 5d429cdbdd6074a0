"""The queue messages the service's functions read, checked once for the shapes the service and S3 write.

Three shapes reach the worker, the transcoder and the dead-letter handler:

* ``{"job_id": "<key id>#<request id>"}``: an API job (written by the API, the sweeper, the transcoder);
* ``{"Records": [...]}``: S3's event notifications for the batch prefix (and ``{"Event": "s3:TestEvent"}``);
* ``{"batch_object": {"key", "etag", ...}}``: a batch object on its way through the transcoder.

Anything else cannot become valid by being read again. Raising on it would send it round the job queue to the
dead-letter queue, and there, since that queue has no redrive of its own, round again on every receive until
its 14-day retention. So `parse` says None and the caller logs and consumes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import unquote_plus

MAX_JOB_ID_CHARS = 1024  # DynamoDB refuses a key over 2,048 bytes; real ones are under 300 characters


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str  # decoded: S3 sends object keys URL-encoded, with spaces as '+'
    etag: str


def parse(body: str) -> dict | None:
    """The message, or None when it is not one of the shapes above (not JSON, nested past the parser's depth, a
    job id that is empty or not a string, `Records` that is not a list of objects, ...)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    if "job_id" in message:
        job_id = message["job_id"]
        if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_JOB_ID_CHARS:
            return None
    if "Records" in message:
        records = message["Records"]
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            return None
    if "batch_object" in message and not isinstance(message["batch_object"], dict):
        return None
    return message


def created_objects(message: dict) -> list[S3Object]:
    """The objects an S3 notification says were created; records of other events or of another shape are
    skipped (S3 sends every record with a bucket name, a key and an ETag)."""
    objects = []
    for record in message.get("Records", []):
        s3 = record.get("s3")
        if not str(record.get("eventName", "")).startswith("ObjectCreated") or not isinstance(s3, dict):
            continue
        bucket, item = s3.get("bucket"), s3.get("object")
        if not isinstance(bucket, dict) or not isinstance(item, dict):
            continue
        name, key = bucket.get("name"), item.get("key")
        if isinstance(name, str) and isinstance(key, str) and key:
            objects.append(S3Object(name, unquote_plus(key), str(item.get("eTag", "")).strip('"')))
    return objects
