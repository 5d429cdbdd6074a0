"""Local mode (`diarize serve`) where it differed from the deployed stack: storage errors are 503 with the real
reason, files are written durably, a sync diarization does not hold up other requests, the worker's Lambda
context counts down, dead letters are handled once and removed, a server listening beyond loopback refuses
loopback webhooks, and the data dir is owner-only on every start."""
from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import threading
import time

import pytest

from diarizer_service import api
from diarizer_service.auth import create_key
from diarizer_service.backends import local as local_backend
from diarizer_service.errors import ApiError, BackendError
from diarizer_service.local_server.handlers import LocalLambdaContext
from reliability.helpers import ASYNC_V2, SYNC_V2, audio_body


def submit(runtime, key, audio: bytes, request_id: str = "r-1") -> dict:
    return api.submit_async(runtime, key, json.dumps(audio_body(audio)), False,
                            {"webhook": "http://127.0.0.1:9/hook", "request_id": request_id})


# ------------------------------------------------------------------------------------------ storage errors
class _LockedConnection:
    """A real connection whose BEGIN fails like a database another process keeps locked."""

    def __init__(self, real):
        self._real = real

    def execute(self, sql, *args):
        if sql.startswith("BEGIN"):
            raise sqlite3.OperationalError("database is locked")
        return self._real.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_locked_database_is_a_503_that_keeps_the_real_reason(local_runtime, monkeypatch, caplog):
    key = create_key(local_runtime.backends.keys, "k").record
    real_connect = sqlite3.connect
    monkeypatch.setattr(local_backend.sqlite3, "connect", lambda *a, **k: _LockedConnection(real_connect(*a, **k)))
    with pytest.raises(BackendError, match="database is locked"):  # not "cannot rollback - no transaction"
        local_runtime.jobs.get("x#y")
    with pytest.raises(ApiError) as caught:
        api.job_status(local_runtime, key, "r-1")
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (503, "service_unavailable", True)


def test_a_full_disk_is_a_503_on_submit_and_leaves_no_half_written_blob(local_runtime, wav_bytes, monkeypatch):
    key = create_key(local_runtime.backends.keys, "k").record
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ApiError) as caught:
        submit(local_runtime, key, wav_bytes(1.0))
    assert caught.value.status == 503
    monkeypatch.setattr(os, "fsync", real_fsync)
    blobs = local_runtime.backends.blobs.root
    assert [p for p in blobs.rglob("*") if p.is_file()] == []  # no temp file, no torn blob
    assert local_runtime.jobs.get(f"{key.key_id}#r-1") is None


def test_blob_and_metadata_writes_are_fsynced_and_renamed(local_runtime, monkeypatch):
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: replaced.append((str(a), str(b))) or real_replace(a, b))
    local_runtime.backends.blobs.put("jobs/k/r/audio", b"abc", metadata={"format": "WAV"})
    assert len(synced) >= 4  # each file and its directory
    targets = [os.path.basename(b) for _, b in replaced]
    assert targets == ["audio.__meta__.json", "audio"]  # both through temp-file-and-rename, metadata first
    assert all(a.endswith(".tmp") for a, _ in replaced)
    assert local_runtime.backends.blobs.head("jobs/k/r/audio").metadata == {"format": "WAV"}


# ------------------------------------------------------------------------------------------ the gateway
def test_a_sync_diarization_does_not_hold_up_submits_and_status_reads(local_runtime, wav_bytes, fake_engine,
                                                                      lambda_context):
    """The gateway runs one handler call at a time (powertools keeps the event on a class): before, a sync
    request held that lock for its whole diarization, so a status read waited seconds."""
    from diarizer_service.local_server.gateway import Gateway, RouteTable, build_api_event
    from diarizer_service.local_server.handlers import load_handler_module
    from diarizer_service.local_server.openapi import load_openapi
    from diarizer_service.runtime import set_runtime

    api_app = load_handler_module("api")
    set_runtime(local_runtime)
    in_engine, release = threading.Event(), threading.Event()
    real_diarize = fake_engine.diarize

    def slow_diarize(audio, options, *, max_seconds):
        in_engine.set()
        release.wait(10)
        return real_diarize(audio, options, max_seconds=max_seconds)
    fake_engine.diarize = slow_diarize
    gateway = Gateway(api_app.lambda_handler, load_openapi(), engine_gate=threading.Lock(), resolver=api_app.app)
    local_runtime.around_engine = gateway.engine_running
    key = create_key(local_runtime.backends.keys, "k")
    routes = RouteTable(load_openapi().get("paths", {}))

    def event(method, path, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        return build_api_event(method, f"{path}?apikey={key.api_key}&webhook=http://127.0.0.1:9/h&request_id=q",
                               [("Content-Type", "application/json")], data, source_ip="127.0.0.1", routes=routes)

    answers = {}
    try:
        sync = threading.Thread(target=lambda: answers.setdefault(
            "sync", gateway.invoke(event("POST", SYNC_V2, audio_body(wav_bytes(1.0))))))
        sync.start()
        assert in_engine.wait(10)
        started = time.monotonic()
        submitted = gateway.invoke(event("POST", ASYNC_V2, audio_body(wav_bytes(1.0))))
        status = gateway.invoke(event("GET", f"{ASYNC_V2}/q"))
        waited = time.monotonic() - started
        release.set()
        sync.join(10)
    finally:
        release.set()
        set_runtime(None)
    assert submitted["statusCode"] == 200 and status["statusCode"] == 200 and waited < 5
    assert json.loads(status["body"])["status"] == "queued"
    sync_answer = json.loads(answers["sync"]["body"])  # and the sync request still answers its own request
    assert answers["sync"]["statusCode"] == 200 and sync_answer == fake_engine.results[0]


def test_the_local_lambda_context_counts_down():
    context = LocalLambdaContext("diarizer-worker", timeout_seconds=2)
    first = context.get_remaining_time_in_millis()
    time.sleep(0.3)
    assert 1500 <= first and context.get_remaining_time_in_millis() <= first - 250


# ------------------------------------------------------------------------------------------ dead letters
def test_dead_letters_are_read_only_when_new_and_removed_once_handled(tmp_path):
    from diarizer_service.local_server.worker_loop import WorkerLoop
    from diarizer_service.settings import load_settings

    settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "d"),
                              "DIARIZER_MAX_RECEIVE_COUNT": "1"})
    queue = local_backend.create_local_backends(settings).queue
    reads, handled = [], []
    real_dead_letters = queue.dead_letters
    queue.dead_letters = lambda: reads.append(1) or real_dead_letters()
    loop = WorkerLoop(queue, lambda event, context: {"batchItemFailures": [
        {"itemIdentifier": r["messageId"]} for r in event["Records"]]}, on_dead_letter=handled.append,
        retry_delay=0, say=lambda _: None)
    for _ in range(20):
        loop.run_once()
    assert len(reads) == 1  # the start-up check only, not every poll
    queue.send({"job_id": "k#doomed"})
    loop.run_once()  # received once (the limit), reported failed
    loop.run_once()  # moved to the dead letters, handled
    for _ in range(20):
        loop.run_once()
    assert [json.loads(d["body"]) for d in handled] == [{"job_id": "k#doomed"}]
    assert real_dead_letters() == [] and len(reads) == 2


# ------------------------------------------------------------------------------------------ the server
def test_a_server_beyond_loopback_refuses_loopback_webhooks_and_its_data_dir_is_owner_only(
        tmp_path, start_server, wav_bytes):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # made by someone else, world-readable
    database = data / "diarizer.sqlite3"
    sqlite3.connect(database).close()
    database.chmod(0o644)
    server = start_server("--host", "0.0.0.0")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    body = {"content": base64.b64encode(wav_bytes(0.5)).decode()}
    for hook in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/hook"):
        status, answer = server.request("POST", ASYNC_V2, body=body, query={"webhook": hook})
        assert status == 400 and answer["error"]["field"] == "webhook", (hook, answer)
    assert "refused" in server.log()


@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_a_shared_data_dir_is_refused_not_made_private(tmp_path, mode):
    """`--data-dir /tmp` must not turn /tmp into 0700 (every other program on the machine needs it)."""
    import subprocess
    import sys

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    done = subprocess.run([sys.executable, "-m", "diarizer.cli", "serve", "--data-dir", str(shared), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "shared folder" in done.stderr and "Traceback" not in done.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == mode
    assert list(shared.iterdir()) == []  # nothing written there either


def test_the_worker_loop_sweeps_at_start_up_and_then_periodically(tmp_path):
    """`diarize serve`'s stand-in for the SweeperFunction's schedule: sweep(startup=True) once, then
    sweep(startup=False) every `sweep_interval`; a failing sweep does not stop the loop."""
    from diarizer_service.local_server.worker_loop import WorkerLoop
    from diarizer_service.settings import load_settings

    settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "d")})
    queue = local_backend.create_local_backends(settings).queue
    calls = []

    def sweep(startup):
        calls.append(startup)
        if len(calls) == 2:
            raise RuntimeError("storage blip")
    loop = WorkerLoop(queue, lambda event, context: {"batchItemFailures": []}, poll_interval=0.02,
                      sweep=sweep, sweep_interval=0.1, say=lambda _: None)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert loop.stop(5)
    assert calls[:4] == [True, False, False, False]


def test_local_retention_removes_what_aws_would_expire_and_keeps_the_rest(local_runtime, wav_bytes, webhook_receiver):
    """DynamoDB's TTL and the bucket's lifecycle rules have no local counterpart of their own: without this
    sweep step a long-running `diarize serve` kept every job, audio file and upload forever."""
    from diarizer_service.jobs import make_job_id
    from diarizer_service.local_server.cli import expire

    key = create_key(local_runtime.backends.keys, "k").record
    for request_id in ("old", "new"):
        api.submit_async(local_runtime, key, json.dumps(audio_body(wav_bytes(0.5))), False,
                         {"request_id": request_id, "webhook": webhook_receiver.url})
    blobs, jobs = local_runtime.backends.blobs, local_runtime.jobs
    old, new = jobs.get(make_job_id(key.key_id, "old")), jobs.get(make_job_id(key.key_id, "new"))
    blobs.put(f"uploads/{key.key_id}/never-submitted", b"x" * 100)
    days = local_runtime.settings.retention_days
    now = time.time() + days * 86400 + 60  # a week and a minute on
    fresh = time.time() + days * 86400  # written "just now" at that time
    os.utime(blobs._path(new.audio_key), (fresh, fresh))
    os.utime(blobs._path(new.audio_key).with_name(blobs._path(new.audio_key).name + ".__meta__.json"), (fresh, fresh))
    local_runtime.backends.jobs.update(new.job_id, {"expires_at": int(now) + 3600})

    expire(local_runtime, now)

    assert jobs.get(old.job_id) is None and jobs.get(new.job_id) is not None
    assert blobs.head(old.audio_key) is None and blobs.head(f"uploads/{key.key_id}/never-submitted") is None
    assert blobs.head(new.audio_key) is not None
    assert not (blobs.root / "uploads" / key.key_id).exists()  # emptied folders go too
    assert not blobs._path(old.audio_key).parent.exists()
