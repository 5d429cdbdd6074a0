"""Local mode takes files of any size through the uploads route (PUT to the server itself, streamed to disk, the
same limits as S3's URL) and M4A/MP4/WebM/Ogg-Opus files give the same speakers as their FLAC source, over HTTP
and from the CLI."""
from __future__ import annotations

import base64
import http.client
import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from media_factory import KINDS, SPEECH_KINDS, frame_agreement, make_media
from serve_helpers import REPO_ROOT, wait_for

THREE_SPEAKERS = REPO_ROOT / "demo" / "three-speakers.flac"
ASYNC = "/audio/generic/api/v2/async/diarize"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("media")
    return {kind: make_media(THREE_SPEAKERS, kind, out) for kind in (*KINDS, *SPEECH_KINDS)}


def put(url: str, data: bytes, headers: dict | None = None, method: str = "PUT") -> tuple[int, bytes]:
    """A plain HTTP PUT, as curl -T or a browser sends it."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, parts.path + "?" + parts.query, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def refused(url: str, length: int, method: str = "PUT") -> int:
    """Status of an upload that is refused from its headers alone: only the headers are sent (a body the
    server never reads would make its closing socket reset the connection before the answer is read)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest(method, parts.path + "?" + parts.query)
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def upload(server, data: bytes) -> str:
    status, answer = server.request("POST", "/audio/generic/api/v2/uploads")
    assert status == 200 and answer["method"] == "PUT" and answer["max_bytes"] > 0, answer
    assert answer["upload_url"].startswith(server.url + "/local-blobs/uploads/")
    status, body = put(answer["upload_url"], data)
    assert status == 200, body
    return answer["upload_id"]


def speakers(result: dict) -> dict:
    return {sid: round(sum(s["end"] - s["start"] for s in result["segments"] if s["speaker_id"] == sid), 1)
            for sid in sorted({s["speaker_id"] for s in result["segments"]})}


def test_uploads_in_local_mode_with_the_limits_and_formats(start_server, media):
    server = start_server(env={"DIARIZER_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024)})
    reference = None
    # The FLAC source, then each container, uploaded and polled (no webhook: poll=true).
    for kind in ("flac", *KINDS):  # (the phone and dictaphone formats: the CLI test below)
        data = THREE_SPEAKERS.read_bytes() if kind == "flac" else media[kind].read_bytes()
        upload_id = upload(server, data)
        status, answer = server.request("POST", ASYNC, body={"upload_id": upload_id},
                                        query={"request_id": f"up-{kind}", "poll": "true"})
        assert status == 200, answer
        job = wait_for(lambda k=kind: (lambda j: j if j["status"] in ("done", "failed") else None)(
            server.job(f"up-{k}")), 300, f"the {kind} job")
        assert job["status"] == "done", job
        found = speakers(job["response"])
        if reference is None:
            reference = found
            assert len(reference) == 3
        else:
            assert found.keys() == reference.keys(), kind
            assert all(abs(found[s] - reference[s]) <= 1.0 for s in found), (kind, found, reference)

    status, answer = server.request("POST", "/audio/generic/api/v2/uploads")
    url = answer["upload_url"]
    assert refused(url, 2 * 1024 * 1024 + 1) == 413  # over max_bytes: refused before reading
    assert refused(url.replace("signature=", "signature=0"), 4) == 403  # tampered
    assert refused(url.replace("/uploads/", "/uploads/x"), 4) == 403  # another key's folder
    assert refused(url, 4, method="POST") == 405
    assert refused(re.sub(r"expires=\d+", "expires=" + "9" * 4301, url), 4) == 403  # int() would raise on it
    assert put(url, b"RIFF")[0] == 200  # the URL itself was good
    # An upload that is not audio: a clear failure naming the formats, never a crash.
    status, answer = server.request("POST", ASYNC, body={"upload_id": upload(server, b"MThd" + bytes(5000))},
                                    query={"request_id": "midi", "poll": "true"})
    assert status == 200
    job = wait_for(lambda: (lambda j: j if j["status"] == "failed" else None)(server.job("midi")), 60, "the failure")
    assert job["error"]["code"] == "unsupported_audio" and "M4A/AAC" in job["error"]["message"]
    # A phone's recording stopped at once (the AMR magic line, no frames): empty, not corrupt.
    status, answer = server.request("POST", ASYNC, body={"upload_id": upload(server, b"#!AMR\n")},
                                    query={"request_id": "empty-amr", "poll": "true"})
    assert status == 200
    job = wait_for(lambda: (lambda j: j if j["status"] == "failed" else None)(server.job("empty-amr")), 60, "failure")
    assert job["error"]["code"] == "empty_audio"


def test_inline_m4a_sync_and_missing_webhook(start_server, media):
    server = start_server()
    content = base64.b64encode(media["m4a"].read_bytes()).decode()
    status, diarized = server.request("POST", "/audio/generic/api/v2/sync/diarize", body={"content": content})
    assert status == 200 and diarized["num_speakers"] == 3
    status, answer = server.request("POST", ASYNC, body={"content": content}, query={"request_id": "no-hook"})
    assert status == 400 and answer["error"]["field"] == "webhook" and "poll=true" in answer["error"]["message"]
    for audio, code in ((b"#!AMR-WB\n", "empty_audio"), (b"caffeine, not a CAF file", "unsupported_audio")):
        status, answer = server.request("POST", "/audio/generic/api/v2/sync/diarize",
                                        body={"content": base64.b64encode(audio).decode()})
        assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, code, "content")


def test_cli_reads_every_container_like_the_flac(media, tmp_path):
    paths = [THREE_SPEAKERS, *media.values()]
    out = tmp_path / "all.json"
    done = subprocess.run([sys.executable, "-m", "diarizer.cli", *map(str, paths), "--json", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    reference = speakers(results[THREE_SPEAKERS.stem])
    assert len(reference) == 3
    for kind, path in media.items():
        if kind in SPEECH_KINDS:  # AMR is 8 kHz: the same voices and turns, not every edge
            assert results[path.stem]["num_speakers"] == 3, path
            assert frame_agreement(results[path.stem], results[THREE_SPEAKERS.stem]) > 0.85, path
            continue
        found = speakers(results[path.stem])
        assert found.keys() == reference.keys() and all(abs(found[s] - reference[s]) <= 1.0 for s in found), path
