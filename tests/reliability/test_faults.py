"""Faults on the deployed path (moto S3/SQS/DynamoDB + the real handlers, fake engine): a worker that dies,
a job that keeps failing, storage failing under the API, webhook receivers that are down, slow or flaky, and
duplicate submissions racing each other. No job may be lost, none may finish (or notify) twice.
"""
from __future__ import annotations

import json
import threading
import time

import pytest
from botocore.exceptions import ClientError

from diarizer_service.api import submit_async
from diarizer_service.auth import create_key
from diarizer_service.runtime import set_runtime
from diarizer_service.settings import get_settings
from diarizer_service.webhooks import verify_signature
from diarizer_service.worker import Worker
from reliability.helpers import ASYNC_V2, audio_body, closed_port_url, job_status, submit


class WorkerKilled(BaseException):
    """What the worker sees of a Lambda timeout or a killed process: nothing after this line runs (not an
    Exception, so no handler code can catch it and record anything)."""


def receive(stack, visibility: float) -> dict:
    """Receive like the Lambda poller, with a chosen visibility timeout (seconds)."""
    answer = stack.sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                       VisibilityTimeout=visibility, WaitTimeSeconds=0)
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:diarizer-jobs",
        "awsRegion": "us-east-1"} for m in answer.get("Messages", [])]}


def queued_messages(stack, url: str | None = None) -> int:
    attrs = stack.sqs.get_queue_attributes(QueueUrl=url or stack.queue_url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


# ------------------------------------------------------------------------------------------ worker dies
@pytest.mark.parametrize("death", ["exception", "killed"])
def test_a_job_whose_worker_dies_comes_back_after_the_visibility_timeout_and_finishes_once(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, fake_engine, death):
    """exception: the engine raises (the record is reported failed); killed: a Lambda timeout / killed process
    (nothing is reported, the message is simply not deleted). Either way SQS hands the message out again."""
    assert submit(stack, api_handler, webhook_receiver.url, "phoenix", wav_bytes(1.0))[0] == 200
    first = receive(stack, visibility=1)
    fake_engine.fail_with = RuntimeError("engine crashed") if death == "exception" else WorkerKilled()
    if death == "exception":
        answer = worker_handler.lambda_handler(first, stack.context)  # the poller deletes nothing it reports
        assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [first["Records"][0]["messageId"]]
    else:
        with pytest.raises(WorkerKilled):
            worker_handler.lambda_handler(first, stack.context)
    assert job_status(stack, api_handler, "phoenix")["status"] == "running"  # left mid-job
    assert receive(stack, visibility=1)["Records"] == []  # still invisible: nobody else takes it meanwhile

    fake_engine.fail_with = None
    deadline = time.monotonic() + 5
    second = {"Records": []}
    while not second["Records"] and time.monotonic() < deadline:
        time.sleep(0.2)
        second = receive(stack, visibility=30)
    [record] = second["Records"]
    assert record["attributes"]["ApproximateReceiveCount"] == "2"
    assert stack.run_worker(worker_handler, second) == {"batchItemFailures": []}
    assert stack.run_worker(worker_handler, second) == {"batchItemFailures": []}  # a late duplicate as well

    job = job_status(stack, api_handler, "phoenix")
    assert job["status"] == "done" and job["response"] == fake_engine.results[-1]
    assert stack.job_item("phoenix")["attempts"] == 2
    [hook] = webhook_receiver.received  # one webhook for one finished job
    assert hook.json() == {"request_id": "phoenix", "response": job["response"]}
    assert queued_messages(stack) == 0


def test_a_job_that_fails_on_every_receive_ends_in_the_dlq_and_failed_with_a_readable_reason(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, fake_engine):
    """Real SQS redrive (maxReceiveCount 3 on the moto queue), not a faked receive count."""
    assert submit(stack, api_handler, webhook_receiver.url, "doomed", wav_bytes(1.0))[0] == 200
    fake_engine.fail_with = RuntimeError("segfault-ish")
    attempts = 0
    for _ in range(6):  # bounded: 3 receives, then SQS moves it to the DLQ
        event = receive(stack, visibility=0)
        if not event["Records"]:
            break
        attempts += 1
        answer = worker_handler.lambda_handler(event, stack.context)
        assert len(answer["batchItemFailures"]) == 1
    assert attempts == 3 and fake_engine.calls == 3
    dead = stack.sqs.receive_message(QueueUrl=stack.dlq_url, MaxNumberOfMessages=10).get("Messages", [])
    assert [json.loads(m["Body"]) for m in dead] == [{"job_id": f"{stack.key.record.key_id}#doomed"}]

    job = job_status(stack, api_handler, "doomed")
    assert job["status"] == "failed" and "response" not in job
    assert job["error"]["code"] == "processing_failed"
    assert "3 attempts" in job["error"]["message"] and "RuntimeError" in job["error"]["message"]
    [hook] = webhook_receiver.received
    assert hook.json() == {"request_id": "doomed", "error": job["error"]}
    assert verify_signature(stack.key.record.webhook_secret, hook.headers, hook.body)


def test_a_job_killed_on_its_last_attempt_is_still_failed_before_the_lambda_dies(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, fake_engine, monkeypatch):
    """A job longer than the worker's timeout dies on every attempt; nothing after the kill runs, and the next
    receive moves the message to the DLQ without any worker seeing it. The last attempt must fail the job
    before the Lambda timeout, or the client sees `running` forever."""
    assert submit(stack, api_handler, webhook_receiver.url, "too-slow", wav_bytes(1.0))[0] == 200
    event = receive(stack, visibility=30)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "3"  # the last allowed attempt
    remaining = {"ms": 1500}  # the Lambda has 1.5 s left
    monkeypatch.setattr(stack.context, "get_remaining_time_in_millis", lambda: remaining["ms"], raising=False)
    monkeypatch.setattr("diarizer_service.worker.delivery_margin", lambda webhook_timeout: 1.0)

    def engine_that_outlives_the_lambda(audio, options, *, max_seconds):
        time.sleep(1.5)  # the watchdog fires after 0.5 s: 1 s before the end
        raise WorkerKilled()  # then Lambda kills the runtime

    fake_engine.diarize = engine_that_outlives_the_lambda
    with pytest.raises(WorkerKilled):
        worker_handler.lambda_handler(event, stack.context)
    job = job_status(stack, api_handler, "too-slow")
    assert job["status"] == "failed" and job["error"]["code"] == "processing_failed"
    assert "time" in job["error"]["message"]
    [hook] = webhook_receiver.received
    assert hook.json() == {"request_id": "too-slow", "error": job["error"]}


def test_at_a_longer_webhook_timeout_the_watchdog_leaves_the_failure_webhook_its_whole_delivery(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, fake_engine, monkeypatch):
    """One delivery may take 3 x the webhook timeout + 3 s, so the watchdog's margin is asked for the configured
    timeout (11 s here), and the failure webhook goes out within it: a receiver that takes 2.5 s to answer still
    gets it before the Lambda's deadline. With a margin fixed for the default timeout, the Lambda died in the
    middle of the delivery (the job was `failed`, its webhook left to the sweeper)."""
    monkeypatch.setenv("DIARIZER_WEBHOOK_TIMEOUT_SECONDS", "11")
    get_settings.cache_clear()
    set_runtime(None)
    stack.runtime.engine_factory = lambda: fake_engine
    assert submit(stack, api_handler, webhook_receiver.url, "slow-hook", wav_bytes(1.0))[0] == 200
    event = receive(stack, visibility=30)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "3"  # the last allowed attempt
    monkeypatch.setattr(stack.context, "get_remaining_time_in_millis", lambda: 5000, raising=False)
    asked = []

    def margin(webhook_timeout: float) -> float:  # a whole delivery at 11 s (36 s) would not fit a test
        asked.append(webhook_timeout)
        return 4.0

    monkeypatch.setattr("diarizer_service.worker.delivery_margin", margin)
    webhook_receiver.delay = 2.5
    began = time.monotonic()

    def engine_that_outlives_the_lambda(audio, options, *, max_seconds):
        time.sleep(max(0.0, 5.0 - (time.monotonic() - began)))
        raise WorkerKilled()  # the deadline: Lambda kills the runtime

    fake_engine.diarize = engine_that_outlives_the_lambda
    with pytest.raises(WorkerKilled):
        worker_handler.lambda_handler(event, stack.context)
    assert job_status(stack, api_handler, "slow-hook")["status"] == "failed"
    [answered] = webhook_receiver.answered_at
    assert answered - began < 5.0  # delivered before the deadline
    assert asked == [11.0]  # the margin for the configured webhook timeout, not the default's


def test_a_last_attempt_that_finishes_in_time_is_done_and_the_watchdog_stays_quiet(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, monkeypatch):
    assert submit(stack, api_handler, webhook_receiver.url, "just-in-time", wav_bytes(1.0))[0] == 200
    event = receive(stack, visibility=30)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "3"
    # The watchdog would fire 2 s in: room for a loaded CI machine to finish the (fake) job first; 0.3 s was not.
    monkeypatch.setattr(stack.context, "get_remaining_time_in_millis", lambda: 3000, raising=False)
    monkeypatch.setattr("diarizer_service.worker.delivery_margin", lambda webhook_timeout: 1.0)
    began = time.monotonic()
    assert stack.run_worker(worker_handler, event) == {"batchItemFailures": []}
    assert time.monotonic() - began < 2.0  # finished before the watchdog's time: the case this test is about
    time.sleep(2.2 - (time.monotonic() - began))  # past that time: it must have been stopped, not just late
    assert job_status(stack, api_handler, "just-in-time")["status"] == "done"
    [hook] = webhook_receiver.received
    assert "response" in hook.json()


# ------------------------------------------------------------------------------- storage fails under the API
def _break(stack, what: str, monkeypatch):
    runtime = stack.runtime
    if what == "s3 put":
        stack.s3.delete_bucket(Bucket=runtime.settings.bucket)  # NoSuchBucket from now on
    elif what == "dynamodb put":
        def refuse(**kwargs):
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                              "PutItem")
        monkeypatch.setattr(runtime.backends.jobs._table, "put_item", refuse)
    elif what == "dynamodb put lost reply":  # the write happened, its answer did not arrive
        table = runtime.backends.jobs._table
        real_put = table.put_item

        def put_then_time_out(**kwargs):
            real_put(**kwargs)
            raise ClientError({"Error": {"Code": "RequestTimeout", "Message": "reply lost"}}, "PutItem")
        monkeypatch.setattr(table, "put_item", put_then_time_out)
    elif what == "sqs send":
        def refuse_send(**kwargs):
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "try later"}}, "SendMessage")
        monkeypatch.setattr(runtime.backends.queue._sqs, "send_message", refuse_send)


@pytest.mark.parametrize("what", ["s3 put", "dynamodb put", "dynamodb put lost reply", "sqs send"])
def test_a_storage_failure_is_a_retryable_503_and_the_retry_runs_the_job(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, monkeypatch, what):
    with monkeypatch.context() as broken:
        _break(stack, what, broken)
        status, answer = submit(stack, api_handler, webhook_receiver.url, "retry-me", wav_bytes(1.0))
        assert status == 503
        assert answer["error"]["code"] == "service_unavailable" and answer["error"]["retryable"] is True
        assert queued_messages(stack) == 0
        item = stack.job_item("retry-me")
        assert item is None or item["status"] == "failed", f"a half-made job was left: {item}"
    if what == "s3 put":
        stack.s3.create_bucket(Bucket=stack.runtime.settings.bucket)

    # The client retries the same request (same request_id) once storage is back: the job must really run.
    status, answer = submit(stack, api_handler, webhook_receiver.url, "retry-me", wav_bytes(1.0))
    assert (status, answer) == (200, {"request_id": "retry-me", "api": "diarize"})
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    assert job_status(stack, api_handler, "retry-me")["status"] == "done"
    assert len(webhook_receiver.received) == 1


@pytest.mark.parametrize("route", ["submit", "status"])
def test_the_key_or_job_table_down_is_503_not_403_or_500(stack, api_handler, webhook_receiver, wav_bytes,
                                                        monkeypatch, route):
    def refuse(**kwargs):
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "down"}}, "GetItem")
    if route == "submit":  # the key lookup fails: not "invalid key"
        monkeypatch.setattr(stack.runtime.backends.keys._table, "get_item", refuse)
        status, answer = submit(stack, api_handler, webhook_receiver.url, "x", wav_bytes(0.5))
    else:
        monkeypatch.setattr(stack.runtime.backends.jobs._table, "get_item", refuse)
        status, answer = stack.call_api("GET", f"{ASYNC_V2}/x", handler=api_handler)
    assert status == 503 and answer["error"]["retryable"] is True
    assert queued_messages(stack) == 0


@pytest.mark.parametrize("what", ["s3 result put", "dynamodb finish", "dynamodb start"])
def test_a_storage_failure_in_the_worker_retries_the_job_and_it_finishes_once(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, fake_engine, monkeypatch, what):
    assert submit(stack, api_handler, webhook_receiver.url, "w-fail", wav_bytes(1.0))[0] == 200
    runtime = stack.runtime
    failures = {"left": 1}

    def once(real, operation):
        def wrapper(**kwargs):
            if failures["left"]:
                failures["left"] -= 1
                raise ClientError({"Error": {"Code": "InternalError", "Message": "blip"}}, operation)
            return real(**kwargs)
        return wrapper

    if what == "s3 result put":
        monkeypatch.setattr(runtime.backends.blobs._s3, "put_object",
                            once(runtime.backends.blobs._s3.put_object, "PutObject"))
    else:
        table = runtime.backends.jobs._table
        real_update = table.update_item

        def update(**kwargs):  # fail only the transition under test: queued -> running, or running -> done
            values = kwargs.get("ExpressionAttributeValues", {})
            new_values = [value for name, value in values.items() if name.startswith(":v")]
            hit = "running" in new_values if what == "dynamodb start" else "done" in new_values
            if hit and failures["left"]:
                failures["left"] -= 1
                raise ClientError({"Error": {"Code": "InternalServerError", "Message": "blip"}}, "UpdateItem")
            return real_update(**kwargs)
        monkeypatch.setattr(table, "update_item", update)

    first = receive(stack, visibility=0)
    answer = worker_handler.lambda_handler(first, stack.context)
    assert len(answer["batchItemFailures"]) == 1 and failures["left"] == 0  # reported: SQS will redeliver
    assert webhook_receiver.received == []
    assert stack.run_worker(worker_handler, receive(stack, visibility=30)) == {"batchItemFailures": []}
    job = job_status(stack, api_handler, "w-fail")
    assert job["status"] == "done" and job["response"] == fake_engine.results[-1]
    assert len(webhook_receiver.received) == 1 and queued_messages(stack) == 0


# ------------------------------------------------------------------------------------------- webhooks
@pytest.mark.parametrize("receiver_kind", ["down", "slow then ok", "500 then 200"])
def test_webhook_receiver_faults_retry_with_backoff_and_the_result_stays_retrievable(
        stack, api_handler, worker_handler, scripted_receiver, wav_bytes, monkeypatch, receiver_kind, fake_engine):
    import dataclasses
    monkeypatch.setattr("diarizer_service.webhooks.BACKOFF_SECONDS", 0.1)
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, webhook_timeout_seconds=0.5)
    receiver = None
    if receiver_kind == "down":
        url = closed_port_url()
    else:
        receiver = scripted_receiver(["slow:1.5"] if receiver_kind == "slow then ok" else ["500"])
        url = receiver.url
    assert submit(stack, api_handler, url, "hooked", wav_bytes(1.0))[0] == 200
    event = stack.receive_sqs_event()
    assert stack.run_worker(worker_handler, event) == {"batchItemFailures": []}  # never retried through SQS

    job = job_status(stack, api_handler, "hooked")
    assert job["status"] == "done" and job["response"] == fake_engine.results[-1]  # always readable here
    if receiver is None:
        assert job["webhook"]["delivered"] is False and job["webhook"]["attempts"] == 3
        assert "ConnectionRefused" in job["webhook"]["error"]
        return
    assert job["webhook"] == {"state": "delivered", "delivered": True, "attempts": 2, "status": 200, "rounds": 1}
    times = [t for t, _, _ in receiver.hits]
    assert len(times) == 2 and times[1] - times[0] >= 0.1  # waited (backoff) before the retry
    ids = {headers["webhook-id"] for _, headers, _ in receiver.hits}
    assert len(ids) == 1  # the same message id on every attempt: receivers can de-duplicate
    assert all(verify_signature(stack.key.record.webhook_secret, h, b) for _, h, b in receiver.hits)
    assert json.loads(receiver.hits[-1][2]) == {"request_id": "hooked", "response": job["response"]}

    stack.run_worker(worker_handler, event)  # a duplicate SQS delivery after success: no new POST
    time.sleep(1.6 if receiver_kind == "slow then ok" else 0)  # let the slow first answer finish
    assert len(receiver.hits) == 2
    assert receiver.ok_answers == (2 if receiver_kind == "slow then ok" else 1)


# -------------------------------------------------------------------------------- duplicate submissions
def test_the_same_request_id_submitted_concurrently_is_one_job_and_one_webhook(local_runtime, wav_bytes,
                                                                               webhook_receiver, fake_engine):
    """Eight clients race with one request_id (local sqlite backend: real concurrent transactions)."""
    key = create_key(local_runtime.backends.keys, "racer").record
    body = json.dumps(audio_body(wav_bytes(1.0)))
    query = {"webhook": webhook_receiver.url, "request_id": "race-1"}
    replies, errors = [], []
    barrier = threading.Barrier(8)

    def client():
        try:
            barrier.wait(5)
            replies.append(submit_async(local_runtime, key, body, False, query))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and replies == [{"request_id": "race-1", "api": "diarize"}] * 8
    queue = local_runtime.backends.queue
    # A racer that finds the job before the winner confirmed its message sends one too (it cannot tell a
    # winner in progress from one that died): duplicates, all for the one job.
    messages = queue.receive(max_messages=10, visibility_timeout=30)
    assert 1 <= len(messages) <= 8 and {m.body for m in messages} == {json.dumps({"job_id": f"{key.key_id}#race-1"})}
    worker = Worker(local_runtime)
    for message in messages + messages[:1]:  # and a late duplicate delivery
        worker.handle_message(message.body, 1)
    assert fake_engine.calls == 1 and len(webhook_receiver.received) == 1


def test_a_receiver_that_trickles_its_answer_cannot_hold_the_worker(stack, api_handler, worker_handler, wav_bytes,
                                                                    monkeypatch, fake_engine):
    """A hostile (or broken) receiver sends a header line every 0.2 s: each read succeeds, so a per-read timeout
    never fires. The webhook timeout must bound the whole attempt."""
    import dataclasses
    import socket as socket_module

    monkeypatch.setattr("diarizer_service.webhooks.BACKOFF_SECONDS", 0.0)
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, webhook_timeout_seconds=0.5)
    listener = socket_module.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def drip(conn):
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(50):  # 10 s of headers if nobody hangs up
                if stop.is_set():
                    return
                conn.sendall(b"X-Slow: a\r\n")
                time.sleep(0.2)
        except OSError:
            pass
        finally:
            conn.close()

    def accept_loop():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        assert submit(stack, api_handler, url, "trickled", wav_bytes(1.0))[0] == 200
        started = time.monotonic()
        assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
        assert time.monotonic() - started < 4  # 3 attempts x 0.5 s, not 3 x 10 s of trickle
    finally:
        stop.set()
        acceptor.join(2)
        listener.close()
    job = job_status(stack, api_handler, "trickled")
    assert job["status"] == "done" and job["response"] == fake_engine.results[-1]
    assert job["webhook"]["delivered"] is False and "TimeoutError" in job["webhook"]["error"]
