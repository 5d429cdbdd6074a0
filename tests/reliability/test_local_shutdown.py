"""`diarize serve` stopping and starting: uploads in progress get the grace period, interrupted writes leave no
temp files behind, and the local worker has no Lambda deadline (nothing kills a local job at 900 s)."""
from __future__ import annotations

import base64
import inspect
import json
import re
import signal
import socket
import time
import urllib.parse
import uuid
from pathlib import Path

from acceptance.serve_helpers import wait_for

from diarizer_service import api
from diarizer_service import worker as worker_module
from diarizer_service.auth import create_key
from diarizer_service.backends.local import create_local_backends
from diarizer_service.local_server.handlers import load_handler_module
from diarizer_service.local_server.worker_loop import WorkerLoop
from diarizer_service.runtime import Runtime, default_probe, set_runtime
from diarizer_service.settings import load_settings
from diarizer_service.webhooks import DeliveryResult
from diarizer_service.worker import Worker

MB = 1024 * 1024


def temp_files(data_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(data_dir)) for path in data_dir.rglob("*.tmp"))


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer (head and Content-Length body) from a raw socket; what came before the end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def presigned_put(server) -> tuple[socket.socket, str, str]:
    """A raw connection with the headers of a presigned PUT sent (the body not yet); (socket, key, request)."""
    status, upload = server.request("POST", "/audio/generic/api/v2/uploads")
    assert status == 200, upload
    url = urllib.parse.urlsplit(upload["upload_url"])
    sock = socket.create_connection((url.hostname, url.port), timeout=20)
    return sock, urllib.parse.unquote(url.path.split("/local-blobs/", 1)[1]), f"{url.path}?{url.query}"


def test_sigterm_lets_an_upload_in_progress_finish_and_refuses_new_requests(start_server):
    server = start_server("--no-worker", "--grace", "20")
    size = 20 * MB
    upload, key, target = presigned_put(server)
    keep_alive = socket.create_connection(("127.0.0.1", urllib.parse.urlsplit(server.url).port), timeout=20)
    try:
        keep_alive.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(keep_alive).startswith(b"HTTP/1.1 200")
        upload.sendall(f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                       "Content-Type: audio/flac\r\n\r\n".encode())
        upload.sendall(b"\0" * MB)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM: stopping" in server.log(), 10, "the server to start stopping")
        time.sleep(1.5)  # the main loop notices within 0.5 s, server.shutdown() takes up to 0.2 s more
        # A request that begins now, on a connection opened before the stop, is refused rather than cut off.
        keep_alive.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        try:  # the upload in progress goes on within the grace period and gets its answer
            for _ in range(size // MB - 1):
                upload.sendall(b"\0" * MB)
                time.sleep(0.05)
            answer = read_answer(upload)
        except OSError as exc:
            answer = f"cut off: {exc!r}".encode()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        refused = read_answer(keep_alive)
        assert refused.startswith(b"HTTP/1.1 503") and b"Connection: close" in refused, refused
    finally:
        upload.close()
        keep_alive.close()
    assert server.process.wait(30) == 0
    assert "still being handled" not in server.log()
    blob = server.data_dir / "blobs" / key
    assert blob.stat().st_size == size
    assert temp_files(server.data_dir) == []


def test_sigterm_during_an_upload_that_outlasts_the_grace_leaves_no_temp_file_after_a_restart(start_server):
    server = start_server("--no-worker", "--grace", "1")
    upload, key, target = presigned_put(server)
    try:
        upload.sendall(f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {20 * MB}\r\n\r\n".encode())
        upload.sendall(b"\0" * MB)
        wait_for(lambda: temp_files(server.data_dir), 10, "the upload's temp file")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0  # the client stalls: the grace runs out, the upload is cut off
    finally:
        upload.close()
    again = start_server("--no-worker")
    assert temp_files(server.data_dir) == [] and not (server.data_dir / "blobs" / key).exists()
    assert "temp file(s) left by writes the last stop interrupted" in again.log()
    assert "still being handled" in server.log()  # the grace did wait for it
    assert again.terminate() == 0


def test_stale_temp_files_are_removed_at_start_and_blobs_are_kept(start_server):
    first = start_server("--no-worker")
    upload, key, target = presigned_put(first)
    try:
        upload.sendall(f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".encode())
        assert read_answer(upload).startswith(b"HTTP/1.1 200")
    finally:
        upload.close()
    assert first.terminate() == 0
    blob = first.data_dir / "blobs" / key
    stale = [blob.with_name(f"{blob.name}.{uuid.uuid4().hex}.tmp"),  # an upload cut off by the last stop
             blob.with_name(f"{blob.name}.__meta__.json.{uuid.uuid4().hex}.tmp"),
             first.data_dir / "blobs" / "u" / "k" / f"result.json.{uuid.uuid4().hex}.tmp"]
    kept = [first.data_dir / "blobs" / "u" / "notes.tmp",  # not the store's temp naming: left alone
            first.data_dir / "blobs" / "u" / f"a.{uuid.uuid4().hex[:31]}.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")

    second = start_server("--no-worker")
    assert [path for path in stale if path.exists()] == []
    assert all(path.read_bytes() == b"partial" for path in kept)
    assert blob.read_bytes() == b"hello" and blob.with_name(blob.name + ".__meta__.json").is_file()
    assert "removed 3 temp file(s)" in second.log()
    assert second.terminate() == 0


def test_the_local_worker_has_no_lambda_deadline_on_the_last_attempt(tmp_path, fake_engine, wav_bytes, monkeypatch):
    """A last attempt longer than the Lambda timeout minus the watchdog's margin is not failed while it runs.
    The 900 s are emulated by widening the margin to leave the job 1 s of a 900 s deadline, with an engine
    that takes 2 s; the deadline the worker is given must be none at all."""
    settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path / "data"),
                              "DIARIZER_MAX_RECEIVE_COUNT": "1", "DIARIZER_ALLOW_LOCAL_WEBHOOKS": "true"})
    runtime = Runtime(settings=settings, backends=create_local_backends(settings), probe=default_probe,
                      engine_factory=lambda: fake_engine)
    key = create_key(runtime.backends.keys, "k").record
    body = json.dumps({"content": base64.b64encode(wav_bytes(2.0)).decode()})
    api.submit_async(runtime, key, body, False, {"webhook": "http://127.0.0.1:9/h", "request_id": "long-1"})
    real_diarize = fake_engine.diarize

    def slow_diarize(audio, options, *, max_seconds):
        time.sleep(2.0)
        return real_diarize(audio, options, max_seconds=max_seconds)

    monkeypatch.setattr(fake_engine, "diarize", slow_diarize)
    monkeypatch.setattr(worker_module, "delivery_margin", lambda webhook_timeout: 899.0)
    deadlines = []
    real_process_job = Worker.process_job

    def process_job(*args, **kwargs):
        called = inspect.signature(real_process_job).bind(*args, **kwargs)
        called.apply_defaults()
        deadlines.append((called.arguments["receive_count"], called.arguments["deadline"]))
        return real_process_job(*args, **kwargs)

    monkeypatch.setattr(Worker, "process_job", process_job)
    worker_app = load_handler_module("worker")
    delivered = DeliveryResult(True, 1, 200, None)
    monkeypatch.setattr(worker_app, "_worker", Worker(runtime, deliver=lambda *args, **kwargs: delivered))
    set_runtime(runtime)
    try:
        loop = WorkerLoop(runtime.backends.queue, worker_app.lambda_handler, say=lambda _: None, poll_interval=0.02)
        assert loop.run_once() is True
    finally:
        set_runtime(None)
    job = runtime.jobs.get(f"{key.key_id}#long-1")
    assert job.status == "done", job.error
    assert deadlines == [(1, None)]  # the last attempt, and no deadline at all (no watchdog thread)
