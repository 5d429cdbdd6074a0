"""`diarize serve` killed (SIGKILL, twice) with jobs queued and running: after the restarts every job finishes
exactly once, with one signed webhook each."""
from __future__ import annotations

import base64
import signal

from acceptance.serve_helpers import wait_for
from acceptance.webhook_verify import verify_webhook
from reliability.helpers import demo_clip

JOBS = 6


def kill(server) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)


def wait_until_any_running(server, request_ids: list[str]) -> str:
    def running():
        return next((rid for rid in request_ids if server.job(rid)["status"] == "running"), None)
    return wait_for(running, 60, "a job to be running", interval=0.02)


def test_killed_twice_with_jobs_queued_and_running_every_job_finishes_once(start_server, webhook_receiver):
    clips = [base64.b64encode(demo_clip(start, 4.0)).decode() for start in (0, 4, 8, 12, 16, 20)]
    request_ids = [f"restart-{i}" for i in range(JOBS)]
    first = start_server()
    for rid, clip in zip(request_ids, clips):
        first.submit(clip, webhook_receiver.url, rid)
    wait_until_any_running(first, request_ids)
    kill(first)  # one job mid-run, the others queued
    delivered_before = {hook.json()["request_id"] for hook in webhook_receiver.received}
    assert len(delivered_before) < JOBS

    second = start_server()
    pending = [rid for rid in request_ids if second.job(rid)["status"] != "done"]
    wait_until_any_running(second, pending)
    kill(second)  # and again, mid-job, before the queue drained

    third = start_server()
    wait_for(lambda: len(webhook_receiver.received) >= JOBS, 120, "every webhook")
    by_request: dict[str, list] = {}
    for hook in webhook_receiver.received:
        by_request.setdefault(hook.json()["request_id"], []).append(hook)
        assert verify_webhook(third.webhook_secret, hook.headers, hook.body)
    assert sorted(by_request) == sorted(request_ids)
    assert all(len(hooks) == 1 for hooks in by_request.values()), {k: len(v) for k, v in by_request.items()}
    for rid in request_ids:
        job = third.job(rid)
        assert job["status"] == "done" and job["response"] == by_request[rid][0].json()["response"]
        assert job["webhook"]["delivered"] is True
