"""The local SQS -> worker Lambda stand-in, in-process on a real local (sqlite) queue with a fake handler."""
from __future__ import annotations

import json
import threading
import time

import pytest
from serve_helpers import wait_for

from diarizer_service.auth import create_key
from diarizer_service.backends.local import create_local_backends
from diarizer_service.jobs import Job
from diarizer_service.local_server.worker_loop import WorkerLoop, fail_dead_letter_job
from diarizer_service.runtime import Runtime
from diarizer_service.settings import load_settings
from diarizer_service.webhooks import DeliveryResult
from diarizer_service.worker import Worker


@pytest.fixture
def settings(tmp_path):
    return load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "data"),
                          "DIARIZER_MAX_RECEIVE_COUNT": "2"})


@pytest.fixture
def backends(settings):
    return create_local_backends(settings)


class FakeWorkerHandler:
    """Answers like the worker Lambda: failures listed in batchItemFailures, or raises."""

    def __init__(self):
        self.events: list[dict] = []
        self.outcome = "ok"  # "ok" | "fail" | "raise"
        self.release = threading.Event()
        self.release.set()

    def __call__(self, event: dict, context) -> dict:
        self.events.append(event)
        self.release.wait(10)
        if self.outcome == "raise":
            raise RuntimeError("worker crashed")
        if self.outcome == "fail":
            return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
        return {"batchItemFailures": []}


def make_loop(backends, handler, messages: list[str], **options) -> WorkerLoop:
    return WorkerLoop(backends.queue, handler, retry_delay=0.1, poll_interval=0.02, say=messages.append, **options)


def test_a_handled_message_is_passed_as_an_sqs_event_and_deleted(backends):
    handler, said = FakeWorkerHandler(), []
    message_id = backends.queue.send({"job_id": "k#r"})
    assert make_loop(backends, handler, said).run_once() is True
    [record] = handler.events[0]["Records"]
    assert record["messageId"] == message_id and json.loads(record["body"]) == {"job_id": "k#r"}
    assert record["eventSource"] == "aws:sqs" and record["attributes"]["ApproximateReceiveCount"] == "1"
    assert backends.queue.release_in_flight() == 0 and backends.queue.receive() == []  # gone for good
    assert any("handled" in line for line in said)


@pytest.mark.parametrize("outcome", ["fail", "raise"])
def test_a_failed_message_comes_back_after_the_retry_delay(backends, outcome):
    handler = FakeWorkerHandler()
    handler.outcome = outcome
    loop = make_loop(backends, handler, [])
    backends.queue.send({"job_id": "k#r"})
    assert loop.run_once() is True
    assert backends.queue.receive() == []  # not yet: the retry delay
    time.sleep(0.15)
    [again] = backends.queue.receive()
    assert again.receive_count == 2


def test_a_message_past_the_receive_limit_is_reported_once_as_dead(backends):
    handler, dead = FakeWorkerHandler(), []
    handler.outcome = "fail"
    loop = make_loop(backends, handler, [], on_dead_letter=dead.append)
    message_id = backends.queue.send({"job_id": "k#r"})
    for _ in range(2):  # max_receive_count = 2
        assert loop.run_once() is True
        time.sleep(0.15)
    assert loop.run_once() is False  # the third receive moves it to the dead letters
    assert loop.run_once() is False
    assert [d["message_id"] for d in dead] == [message_id] and len(handler.events) == 2


def test_the_thread_processes_messages_and_stops_cleanly(backends):
    handler = FakeWorkerHandler()
    warmed = threading.Event()
    loop = make_loop(backends, handler, [], warm_up=warmed.set)
    loop.start()
    backends.queue.send({"job_id": "k#1"})
    wait_for(lambda: handler.events, 5, "the message")
    assert warmed.is_set()
    assert loop.stop(grace_seconds=5) is True


def test_stop_releases_a_message_still_running_after_the_grace_period(backends):
    handler, said = FakeWorkerHandler(), []
    handler.release.clear()  # the handler blocks: a long job
    loop = make_loop(backends, handler, said)
    loop.start()
    backends.queue.send({"job_id": "k#slow"})
    wait_for(lambda: loop.busy, 5, "the worker to take the message")
    assert loop.stop(grace_seconds=0.2) is False
    [again] = backends.queue.receive()  # visible again at once: the next start runs it
    assert json.loads(again.body) == {"job_id": "k#slow"}
    assert any("runs again after the next start" in line for line in said)
    handler.release.set()


def test_stops_past_the_grace_period_do_not_use_up_the_jobs_attempts(backends):
    """Stopping the server is not the job failing: after more interrupted runs than the receive limit (2 here)
    the job still runs, instead of being dead-lettered as a worker that kept crashing."""
    backends.queue.send({"job_id": "k#long"})
    handlers = []
    for _ in range(3):
        handler, said = FakeWorkerHandler(), []
        handler.release.clear()  # a long job, interrupted by a stop (its thread dies with the process)
        handlers.append(handler)
        loop = make_loop(backends, handler, said)
        loop.start()
        wait_for(lambda: loop.busy, 5, "the worker to take the message")
        assert loop.stop(grace_seconds=0.1) is False
    [again] = backends.queue.receive()
    assert again.receive_count == 1 and backends.queue.dead_letters() == []
    for handler in handlers:
        handler.release.set()


def test_the_job_of_a_dead_letter_is_failed_and_its_webhook_told(settings, backends):
    deliveries = []

    def deliver(url, payload, **kwargs):
        deliveries.append((url, payload))
        return DeliveryResult(True, 1, 200)

    worker = Worker(Runtime(settings=settings, backends=backends), deliver=deliver)
    key = create_key(backends.keys, "t").record
    job = Job.new(key_id=key.key_id, key_hash=key.key_hash, request_id="r-dead", api="diarize", audio_key="a",
                  options={}, webhook="http://127.0.0.1:9/hook", retention_days=1)
    worker.runtime.jobs.create(job)
    worker.runtime.jobs.start(job)  # the server was killed while it ran, three times
    dead = {"message_id": "m", "body": json.dumps({"job_id": job.job_id}), "receive_count": 3}

    assert fail_dead_letter_job(worker, dead) is True
    failed = worker.runtime.jobs.get(job.job_id)
    assert failed.status == "failed" and failed.error["code"] == "processing_failed"
    assert deliveries == [("http://127.0.0.1:9/hook", {"request_id": "r-dead", "error": failed.error})]
    assert fail_dead_letter_job(worker, dead) is False  # already failed: nothing twice
    assert fail_dead_letter_job(worker, {"message_id": "x", "body": "{}", "receive_count": 3}) is False
    assert len(deliveries) == 1


def test_a_job_waits_while_a_sync_request_holds_the_engine(backends):
    handler, gate = FakeWorkerHandler(), threading.Lock()
    loop = make_loop(backends, handler, [], engine_gate=gate)
    backends.queue.send({"job_id": "k#r"})
    with gate:
        worker = threading.Thread(target=loop.run_once)
        worker.start()
        time.sleep(0.2)
        assert handler.events == []  # taken from the queue, waiting for the engine
    worker.join(5)
    assert len(handler.events) == 1 and not gate.locked()
