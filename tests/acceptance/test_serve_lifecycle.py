"""`diarize serve` across stops and restarts: no accepted job is lost, a running job is finished or retried."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

from serve_helpers import REPO_ROOT, wait_for
from webhook_verify import verify_webhook

JOB_TIMEOUT = 60.0


def wait_until_running(server, request_id: str) -> None:
    # `running` is set when the worker takes the message; the engine then needs a second or more for 29 s.
    wait_for(lambda: server.job(request_id)["status"] == "running", JOB_TIMEOUT, f"{request_id} to start",
             interval=0.02)


def assert_done_once(server, receiver, request_id: str) -> None:
    [hook] = wait_for(lambda: receiver.received, JOB_TIMEOUT, f"the webhook of {request_id}")
    assert hook.json()["request_id"] == request_id and hook.json()["response"]["num_speakers"] == 2
    assert verify_webhook(server.webhook_secret, hook.headers, hook.body)
    job = server.job(request_id)
    assert job["status"] == "done" and job["response"]["num_speakers"] == 2


def test_jobs_accepted_without_a_worker_run_after_a_restart(start_server, webhook_receiver, demo_audio_b64):
    api_only = start_server(None, "--no-worker")
    api_only.submit(demo_audio_b64, webhook_receiver.url, "queued-1")
    assert api_only.job("queued-1")["status"] == "queued"
    assert api_only.terminate() == 0

    server = start_server()  # same data dir, same key
    assert_done_once(server, webhook_receiver, "queued-1")


def test_a_job_running_when_the_server_is_killed_runs_again_after_a_restart(start_server, webhook_receiver,
                                                                             demo_audio_b64):
    first = start_server()
    first.submit(demo_audio_b64, webhook_receiver.url, "killed-1")
    wait_until_running(first, "killed-1")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert webhook_receiver.received == []  # it really died mid-job

    second = start_server()
    assert "1 job(s) interrupted by the last stop will run again" in second.log()
    assert_done_once(second, webhook_receiver, "killed-1")


def test_sigterm_lets_the_running_job_finish_first(start_server, webhook_receiver, demo_audio_b64):
    server = start_server()
    server.submit(demo_audio_b64, webhook_receiver.url, "graceful-1")
    wait_until_running(server, "graceful-1")
    assert server.terminate() == 0
    assert len(webhook_receiver.received) == 1  # delivered before the process exited
    log = server.log()
    assert "interrupted" not in log and log.rstrip().endswith("diarize serve: stopped")


def test_sigterm_after_the_grace_period_leaves_the_job_for_the_next_start(start_server, webhook_receiver,
                                                                          long_audio_b64):
    impatient = start_server(None, "--grace", "0")
    impatient.submit(long_audio_b64, webhook_receiver.url, "interrupted-1")
    wait_until_running(impatient, "interrupted-1")
    assert impatient.terminate(timeout=20) == 0
    assert "a job was interrupted; it runs again at the next start" in impatient.log()
    assert webhook_receiver.received == []

    server = start_server()
    assert_done_once(server, webhook_receiver, "interrupted-1")


def test_a_key_is_created_on_first_start_and_kept(start_server, tmp_path):
    first = start_server(tmp_path / "fresh", api_key=None)
    assert re.fullmatch(r"dk_[0-9a-f]{16}_\S{43}", first.api_key) and first.webhook_secret.startswith("whsec_")
    assert first.request("GET", "/audio/generic/api/v2/async/diarize/none")[0] == 404  # the key works
    assert first.terminate() == 0

    again = start_server(tmp_path / "fresh", api_key=None)
    assert again.api_key is None and "api keys: 1 active" in again.log()  # shown once, never again
    again.api_key = first.api_key
    assert again.request("GET", "/audio/generic/api/v2/async/diarize/none")[0] == 404


def test_one_server_per_data_dir(start_server):
    server = start_server(None, "--no-worker")
    second = subprocess.run([sys.executable, "-m", "diarizer.cli", "serve", "--port", "0", "--data-dir",
                             str(server.data_dir)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "another `diarize serve` is using" in second.stderr


def test_a_job_past_its_attempts_is_failed_and_its_webhook_told(start_server, webhook_receiver, demo_audio_b64):
    one_attempt = {"DIARIZER_MAX_RECEIVE_COUNT": "1"}
    first = start_server(env=one_attempt)
    first.submit(demo_audio_b64, webhook_receiver.url, "doomed-1")
    wait_until_running(first, "doomed-1")
    first.process.send_signal(signal.SIGKILL)  # its only attempt dies with the server
    first.process.wait(10)

    second = start_server(env=one_attempt)  # the message is dead-lettered on the next receive
    [hook] = wait_for(lambda: webhook_receiver.received, JOB_TIMEOUT, "the failure webhook")
    payload = hook.json()
    assert set(payload) == {"request_id", "error"} and payload["request_id"] == "doomed-1"
    assert payload["error"]["code"] == "processing_failed" and "Gave up after 1 attempts" in payload["error"]["message"]
    assert verify_webhook(second.webhook_secret, hook.headers, hook.body)
    job = second.job("doomed-1")
    assert job["status"] == "failed" and job["error"]["code"] == "processing_failed" and "response" not in job

