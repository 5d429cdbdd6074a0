"""DeadLetterFunction: a message whose worker died on every attempt (out of memory, killed) ends as a
failed job the client can read, with a signed failure webhook, instead of a job stuck in "running"."""
import json
import socket
import time

import pytest

from diarizer_service.webhooks import DELIVERY_SLACK_SECONDS, verify_signature
from test_api_flow import ASYNC_V2, audio_body


def dead_letter_event(stack, body: str, receive_count: int = 3) -> dict:
    return {"Records": [{
        "messageId": "dead-1", "receiptHandle": "r", "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count)}, "messageAttributes": {},
        "md5OfBody": "", "eventSource": "aws:sqs", "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:diarizer-dlq",
    }]}


def test_a_job_whose_worker_died_every_time_is_failed_and_told(stack, api_handler, worker_handler, webhook_receiver,
                                                                wav_bytes):
    query = {"webhook": webhook_receiver.url, "request_id": "oom"}
    assert stack.call_api("POST", ASYNC_V2, query=query, body=audio_body(wav_bytes(1.0)), handler=api_handler)[0] == 200
    message = stack.receive_sqs_event()["Records"][0]
    job = stack.runtime.jobs.get(f"{stack.key.record.key_id}#oom")
    assert stack.runtime.jobs.start(job)  # the worker took it, then the process died

    answer = worker_handler.dead_letter_handler(dead_letter_event(stack, message["body"]), stack.context)

    assert answer == {"batchItemFailures": []}
    status, body = stack.call_api("GET", f"{ASYNC_V2}/oom", handler=api_handler)
    assert status == 200 and body["status"] == "failed"
    assert body["error"]["code"] == "processing_failed" and "3 attempts" in body["error"]["message"]
    [hit] = webhook_receiver.received
    assert verify_signature(stack.key.record.webhook_secret, hit.headers, hit.body)
    assert hit.json() == {"request_id": "oom", "error": body["error"]}

    # The same dead letter again (a redelivery) changes nothing and sends nothing.
    worker_handler.dead_letter_handler(dead_letter_event(stack, message["body"]), stack.context)
    assert len(webhook_receiver.received) == 1


def test_a_finished_job_is_left_alone(stack, api_handler, worker_handler, webhook_receiver, wav_bytes):
    query = {"webhook": webhook_receiver.url, "request_id": "fine"}
    stack.call_api("POST", ASYNC_V2, query=query, body=audio_body(wav_bytes(1.0)), handler=api_handler)
    message = stack.receive_sqs_event()["Records"][0]
    stack.run_worker(worker_handler, {"Records": [message]})
    worker_handler.dead_letter_handler(dead_letter_event(stack, message["body"]), stack.context)
    status, body = stack.call_api("GET", f"{ASYNC_V2}/fine", handler=api_handler)
    assert body["status"] == "done" and len(webhook_receiver.received) == 1


def test_a_dead_batch_object_gets_its_error_record(stack, worker_handler):
    s3_event = {"Records": [{"eventName": "ObjectCreated:Put",
                             "s3": {"bucket": {"name": "b"}, "object": {"key": "incoming/team/big+call.wav"}}}]}
    worker_handler.dead_letter_handler(dead_letter_event(stack, json.dumps(s3_event)), stack.context)
    record = json.loads(stack.runtime.backends.blobs.get("results/team/big call.wav.error.json"))
    assert record["source"] == "incoming/team/big call.wav"
    assert record["error"]["code"] == "processing_failed"


POISON = {
    "an empty job id (DynamoDB refuses the key)": '{"job_id": ""}',
    "a job id that is not a string": '{"job_id": 7}',
    "JSON nested past the parser's depth": '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",
    "Records that is not a list": '{"Records": "abc"}',
    "Records that is null": '{"Records": null}',
    "a record whose key is null": json.dumps({"Records": [{"eventName": "ObjectCreated:Put",
                                                          "s3": {"bucket": {"name": "b"}, "object": {"key": None}}}]}),
    "a batch object that is a string": '{"batch_object": "x"}',
}


def test_a_message_of_no_shape_the_service_writes_is_consumed_by_every_function(
        stack, api_handler, worker_handler, transcode_handler, webhook_receiver, wav_bytes):
    """Such a message can never become valid. Raised, it went round the job queue into the dead-letter queue,
    and there (no redrive of its own) round again on every receive for 14 days (fourteenth session's fuzzing).
    A good job in the same batch still finishes."""
    query = {"webhook": webhook_receiver.url, "request_id": "good"}
    assert stack.call_api("POST", ASYNC_V2, query=query, body=audio_body(wav_bytes(1.0)), handler=api_handler)[0] == 200
    good = stack.receive_sqs_event()["Records"][0]
    for what, body in POISON.items():
        poison = dead_letter_event(stack, body, receive_count=1)["Records"][0]
        assert worker_handler.lambda_handler({"Records": [poison, good]}, stack.context) == {"batchItemFailures": []}, what
        assert worker_handler.dead_letter_handler({"Records": [poison]}, stack.context) == {"batchItemFailures": []}, what
        assert transcode_handler.lambda_handler({"Records": [poison]}, stack.context) == {"batchItemFailures": []}, what
    status, body = stack.call_api("GET", f"{ASYNC_V2}/good", handler=api_handler)
    assert status == 200 and body["status"] == "done"
    assert len(webhook_receiver.received) == 1


@pytest.fixture
def silent_webhook():
    """A webhook host that takes connections and never answers: every attempt runs out its timeout."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    server.close()


def test_a_dead_letter_batch_never_starts_a_record_it_cannot_finish_before_the_timeout(
        stack, api_handler, worker_handler, silent_webhook, wav_bytes, no_webhook_backoff, monkeypatch):
    """Each failed job's webhook may take a whole delivery (3 attempts x the webhook timeout). A batch that ran
    past the Lambda timeout returned no partial answer, so all its records (finished ones too) came back, and with
    ten slow receivers in a batch that could repeat for the dead-letter queue's 14 days (found by fuzzing)."""
    records = []
    for request_id in ("slow-1", "slow-2"):
        query = {"webhook": silent_webhook, "request_id": request_id}
        assert stack.call_api("POST", ASYNC_V2, query=query, body=audio_body(wav_bytes(1.0)),
                              handler=api_handler)[0] == 200
        [message] = stack.receive_sqs_event()["Records"]
        assert stack.runtime.jobs.start(stack.runtime.jobs.get(f"{stack.key.record.key_id}#{request_id}"))
        records.append({**dead_letter_event(stack, message["body"])["Records"][0], "messageId": request_id})
    margin = worker_handler.margin_now()  # 3 x 2 s (the tests' webhook timeout), no backoff, and the slack
    assert margin == 3 * 2 + DELIVERY_SLACK_SECONDS
    monkeypatch.setattr(stack.context, "get_remaining_time_in_millis", lambda: (margin + 3) * 1000, raising=False)

    began = time.monotonic()
    answer = worker_handler.dead_letter_handler({"Records": records}, stack.context)
    took = time.monotonic() - began

    # The first record's delivery ran out its three attempts (6 s); then 13 s were left, under the margin.
    assert answer == {"batchItemFailures": [{"itemIdentifier": "slow-2"}]}
    assert 6 <= took < margin + 3
    status = {rid: stack.call_api("GET", f"{ASYNC_V2}/{rid}", handler=api_handler)[1] for rid in ("slow-1", "slow-2")}
    assert status["slow-1"]["status"] == "failed" and status["slow-1"]["webhook"]["state"] == "pending"
    assert status["slow-2"]["status"] == "running"  # untouched: SQS shows it again

    monkeypatch.setattr(stack.context, "get_remaining_time_in_millis", lambda: 300_000, raising=False)
    assert worker_handler.dead_letter_handler({"Records": records[1:]}, stack.context) == {"batchItemFailures": []}
    assert stack.call_api("GET", f"{ASYNC_V2}/slow-2", handler=api_handler)[1]["status"] == "failed"
