"""The SweeperFunction on moto (and `diarize serve`'s sweep on the local backends): a job left queued without a
message gets one, a pending webhook is re-driven with its one webhook-id until delivered, and a refused or
exhausted delivery ends `failed` instead of being retried forever. The crash-point harness
(tests/reliability/test_crash_points.py) drives the same code after every possible crash."""
from __future__ import annotations

import json
import time

import pytest

from diarizer_service.jobs import make_job_id
from diarizer_service.webhooks import verify_signature
from diarizer_service.worker import MAX_WEBHOOK_ROUNDS
from test_api_flow import ASYNC_V2, audio_body


class Killed(BaseException):
    """The API process dies (nothing after this line runs)."""


def submit(stack, api_handler, webhook: str, request_id: str, audio: bytes) -> int:
    return stack.call_api("POST", ASYNC_V2, query={"webhook": webhook, "request_id": request_id},
                          body=audio_body(audio), handler=api_handler)[0]


def status(stack, api_handler, request_id: str) -> dict:
    code, body = stack.call_api("GET", f"{ASYNC_V2}/{request_id}", handler=api_handler)
    assert code == 200, body
    return body


def test_a_job_whose_submit_died_before_its_message_is_sent_by_the_sweeper(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, monkeypatch, due_now):
    def die(**kwargs):
        raise Killed
    with monkeypatch.context() as patched:
        patched.setattr(stack.runtime.backends.queue._sqs, "send_message", die)
        with pytest.raises(Killed):
            submit(stack, api_handler, webhook_receiver.url, "orphan", wav_bytes(1.0))
    assert status(stack, api_handler, "orphan")["status"] == "queued"
    assert stack.receive_sqs_event()["Records"] == []  # no message: nothing would ever run it

    assert worker_handler.sweep_handler({}, stack.context) == {"resent": 1, "redelivered": 0, "errors": 0}
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    job = status(stack, api_handler, "orphan")
    assert job["status"] == "done" and job["webhook"]["state"] == "delivered"
    [hook] = webhook_receiver.received
    assert hook.json() == {"request_id": "orphan", "response": job["response"]}
    assert worker_handler.sweep_handler({}, stack.context) == {"resent": 0, "redelivered": 0, "errors": 0}


def test_a_sent_job_is_not_in_the_outbox(stack, api_handler, webhook_receiver, wav_bytes, worker_handler, due_now):
    assert submit(stack, api_handler, webhook_receiver.url, "normal", wav_bytes(1.0)) == 200
    assert stack.runtime.jobs.list_due(time.time() + 86400, 10) == []
    assert worker_handler.sweep_handler({}, stack.context)["resent"] == 0


def test_a_pending_webhook_is_redriven_with_the_same_id_until_delivered(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, no_webhook_backoff, due_now):
    webhook_receiver.statuses = [503] * 6  # down for the worker's round and the sweeper's first
    assert submit(stack, api_handler, webhook_receiver.url, "later", wav_bytes(1.0)) == 200
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    job = status(stack, api_handler, "later")
    assert job["status"] == "done" and job["webhook"]["state"] == "pending" and job["webhook"]["rounds"] == 1

    worker = worker_handler.get_worker()
    from diarizer_service.sweeper import sweep
    assert sweep(worker, now=time.time() + 10).redelivered == [make_job_id(stack.key.record.key_id, "later")]
    assert status(stack, api_handler, "later")["webhook"]["rounds"] == 2
    sweep(worker, now=time.time() + 3600)  # the backoff has passed: the receiver answers now
    job = status(stack, api_handler, "later")
    assert job["webhook"] == {"state": "delivered", "delivered": True, "attempts": 1, "status": 200, "rounds": 3}
    hooks = webhook_receiver.received
    assert len(hooks) == 7 and len({hook.headers["webhook-id"] for hook in hooks}) == 1
    assert len({hook.body for hook in hooks}) == 1
    assert all(verify_signature(stack.key.record.webhook_secret, hook.headers, hook.body) for hook in hooks)
    assert sweep(worker, now=time.time() + 86400 * 30).redelivered == []


def test_a_refused_webhook_fails_at_once_and_an_unreachable_one_after_the_last_round(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, no_webhook_backoff, due_now):
    from diarizer_service.sweeper import sweep
    webhook_receiver.statuses = [410]
    assert submit(stack, api_handler, webhook_receiver.url, "gone", wav_bytes(1.0)) == 200
    stack.run_worker(worker_handler)
    assert status(stack, api_handler, "gone")["webhook"]["state"] == "failed"  # a 4xx is an answer: no retries

    webhook_receiver.statuses = [500] * 100
    assert submit(stack, api_handler, webhook_receiver.url, "dead", wav_bytes(1.0)) == 200
    stack.run_worker(worker_handler)
    worker = worker_handler.get_worker()
    for day in range(1, MAX_WEBHOOK_ROUNDS + 3):
        sweep(worker, now=time.time() + day * 86400)
    job = status(stack, api_handler, "dead")
    assert job["status"] == "done" and "response" in job
    assert job["webhook"]["state"] == "failed" and job["webhook"]["rounds"] == MAX_WEBHOOK_ROUNDS
    assert stack.runtime.jobs.list_due(time.time() + 365 * 86400, 10) == []


def test_local_serve_sweeps_everything_due_at_start_up(tmp_path, local_runtime_factory, wav_bytes, webhook_receiver):
    """`diarize serve` runs the sweep when its worker starts: the record of a submit killed before its message
    (the last stop) runs without waiting DIARIZER_SWEEP_AFTER_SECONDS."""
    from diarizer_service.api import submit_async
    from diarizer_service.auth import create_key
    from diarizer_service.local_server.cli import _sweep
    from diarizer_service.worker import Worker

    runtime = local_runtime_factory()
    key = create_key(runtime.backends.keys, "serve").record
    queue = runtime.backends.queue
    real_send = queue.send
    queue.send = lambda body: (_ for _ in ()).throw(Killed())
    with pytest.raises(Killed):
        submit_async(runtime, key, json.dumps(audio_body(wav_bytes(1.0))), False,
                     {"webhook": webhook_receiver.url, "request_id": "killed"})
    queue.send = real_send
    worker = Worker(runtime)
    assert _sweep(worker, startup=False).resent == []  # not due yet (5 minutes)
    assert _sweep(worker, startup=True).resent == [make_job_id(key.key_id, "killed")]
    [message] = queue.receive()
    worker.handle_message(message.body, message.receive_count)
    assert runtime.jobs.get(make_job_id(key.key_id, "killed")).status == "done"
    assert len(webhook_receiver.received) == 1


@pytest.fixture
def local_runtime_factory(tmp_path, fake_engine):
    from diarizer_service.backends.local import create_local_backends
    from diarizer_service.runtime import Runtime, default_probe
    from diarizer_service.settings import load_settings

    def make():
        settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "data")})
        return Runtime(settings=settings, backends=create_local_backends(settings), probe=default_probe,
                       engine_factory=lambda: fake_engine)
    return make
