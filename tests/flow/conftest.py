"""Whole-flow fixtures: moto S3/SQS/DynamoDB, the real Lambda handlers, a seeded API key."""
from __future__ import annotations

import importlib.util
import json
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import boto3
import pytest
from moto import mock_aws

from diarizer_service.auth import NewKey, create_key
from diarizer_service.runtime import Runtime, get_runtime, set_runtime
from diarizer_service.settings import get_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET, JOBS_TABLE, KEYS_TABLE = "diarizer-audio-example", "diarizer-test-jobs", "diarizer-test-keys"
VOICEPRINTS_TABLE = "diarizer-test-voiceprints"


def load_handler(module_name: str, relative_path: str):
    """functions/*/app.py are not packages (SAM CodeUri folders): load them by path, once."""
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / relative_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="session")
def api_handler():
    return load_handler("diarizer_api_app", "functions/api/app.py")


@pytest.fixture(scope="session")
def worker_handler():
    return load_handler("diarizer_worker_app", "functions/worker/app.py")


@pytest.fixture(scope="session")
def transcode_handler():
    return load_handler("diarizer_transcoder_app", "functions/transcoder/app.py")


@pytest.fixture(scope="session")
def real_engine():
    """The real engine, loaded once for the whole session (skips only while diarizer.pipeline is missing)."""
    try:
        from diarizer.pipeline import Diarizer
    except ModuleNotFoundError as exc:
        if exc.name == "diarizer.pipeline":
            pytest.skip("the engine (diarizer.pipeline) has not landed yet")
        raise
    return Diarizer()


def create_tables(dynamodb) -> None:
    """The jobs, keys and voiceprints tables as template.yaml declares them (jobs with its sparse outbox index)."""
    dynamodb.create_table(
        TableName=JOBS_TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"},
                              {"AttributeName": "outbox", "AttributeType": "S"},
                              {"AttributeName": "outbox_at", "AttributeType": "N"}],
        GlobalSecondaryIndexes=[{"IndexName": "outbox", "Projection": {"ProjectionType": "ALL"},
                                 "KeySchema": [{"AttributeName": "outbox", "KeyType": "HASH"},
                                               {"AttributeName": "outbox_at", "KeyType": "RANGE"}]}])
    dynamodb.create_table(TableName=KEYS_TABLE, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "key_hash", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "key_hash", "AttributeType": "S"}])
    dynamodb.create_table(TableName=VOICEPRINTS_TABLE, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "key_id", "KeyType": "HASH"},
                                     {"AttributeName": "voiceprint_id", "KeyType": "RANGE"}],
                          AttributeDefinitions=[{"AttributeName": "key_id", "AttributeType": "S"},
                                                {"AttributeName": "voiceprint_id", "AttributeType": "S"}])


@dataclass
class Stack:
    s3: object
    sqs: object
    dynamodb: object
    queue_url: str
    dlq_url: str
    key: NewKey
    make_event: Callable[..., dict]
    context: object

    @property
    def runtime(self) -> Runtime:
        return get_runtime()

    def call_api(self, method: str, path: str, *, query: dict | None = None, body=None, headers: dict | None = None,
                 api_key: str | None = "default", handler=None) -> tuple[int, object]:
        query = dict(query or {})
        if api_key == "default":
            api_key = self.key.api_key
        if api_key is not None:
            query.setdefault("apikey", api_key)
        path_parameters = None
        prefix = "/audio/generic/api/v2/async/diarize/"
        if method == "GET" and path.startswith(prefix):
            path_parameters = {"request_id": path[len(prefix):]}
        event = self.make_event(method, path, query=query, body=body, headers=headers, path_parameters=path_parameters)
        answer = handler.lambda_handler(event, self.context)
        return answer["statusCode"], json.loads(answer["body"]) if answer.get("body") else None

    def receive_sqs_event(self, max_messages: int = 10) -> dict:
        """What Lambda's SQS poller would hand the worker: received (now invisible) messages as an event."""
        answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=max_messages,
                                          AttributeNames=["All"], VisibilityTimeout=30, WaitTimeSeconds=0)
        return {"Records": [{
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:diarizer-jobs",
            "awsRegion": "us-east-1",
        } for m in answer.get("Messages", [])]}

    def run_worker(self, worker_handler, event: dict | None = None) -> dict:
        """Invoke the worker like Lambda does, then delete the messages it did not report as failed."""
        event = self.receive_sqs_event() if event is None else event
        answer = worker_handler.lambda_handler(event, self.context)
        failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
        for record in event["Records"]:
            if record["messageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=record["receiptHandle"])
        return answer

    def job_item(self, request_id: str, key: NewKey | None = None) -> dict | None:
        key = key or self.key
        table = self.dynamodb.Table(JOBS_TABLE)
        return table.get_item(Key={"job_id": f"{key.record.key_id}#{request_id}"}).get("Item")


@pytest.fixture
def stack(monkeypatch, fake_engine, api_event, lambda_context):
    """moto AWS with the resources the template makes, the environment it sets, one API key, a fake engine."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        sqs = boto3.client("sqs", region_name="us-east-1")
        dlq_url = sqs.create_queue(QueueName="diarizer-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_url = sqs.create_queue(QueueName="diarizer-jobs", Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})})["QueueUrl"]
        dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
        create_tables(dynamodb)
        env = {"DIARIZER_BACKEND": "aws", "DIARIZER_BUCKET": BUCKET, "DIARIZER_QUEUE_URL": queue_url,
               "DIARIZER_JOBS_TABLE": JOBS_TABLE, "DIARIZER_KEYS_TABLE": KEYS_TABLE,
               "DIARIZER_VOICEPRINTS_TABLE": VOICEPRINTS_TABLE,
               "DIARIZER_ALLOW_LOCAL_WEBHOOKS": "true", "DIARIZER_WEBHOOK_TIMEOUT_SECONDS": "2"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        set_runtime(None)
        runtime = get_runtime()
        runtime.engine_factory = lambda: fake_engine
        key = create_key(runtime.backends.keys, "flow test")
        yield Stack(s3, sqs, dynamodb, queue_url, dlq_url, key, api_event, lambda_context)
        set_runtime(None)
        get_settings.cache_clear()


@pytest.fixture
def due_now(stack):
    """The sweeper looks at records at once (DIARIZER_SWEEP_AFTER_SECONDS=0) instead of 5 minutes later."""
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, sweep_after_seconds=0)


@pytest.fixture
def no_webhook_backoff(monkeypatch):
    """Webhook retries without waiting between attempts (delivery still really retries)."""
    monkeypatch.setattr("diarizer_service.webhooks.BACKOFF_SECONDS", 0.0)
