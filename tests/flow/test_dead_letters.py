"""DeadLetterFunction: a message whose worker died on every attempt (out of memory, killed) ends as a
failed job the client can read, with a signed failure webhook, instead of a job stuck in "running"."""
import json

from diarizer_service.webhooks import verify_signature
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
