"""Known voices in local mode: `diarize serve` enrols, identifies in async jobs (signed webhook), lists and deletes,
and a deleted voiceprint leaves no trace in the data dir."""
import base64
import json
import sqlite3

import audio_factory as af
from serve_helpers import wait_for

from diarizer_service.webhooks import verify_signature

VOICEPRINTS = "/audio/generic/api/v2/voiceprints"


def voice_b64(label: str, recording: str = "two-speakers") -> str:
    return base64.b64encode(af.encode(af.demo_voice(label, recording), format="FLAC")).decode()


def stored_prints(data_dir) -> list[str]:
    db = sqlite3.connect(data_dir / "diarizer.sqlite3")
    try:
        return [json.loads(row[0])["embedding"] for row in db.execute("SELECT item FROM voiceprints")]
    finally:
        db.close()


def test_enrol_identify_and_delete_in_local_mode(start_server, webhook_receiver, tmp_path):
    server = start_server()
    status, alice = server.request("POST", VOICEPRINTS, body={"name": "alice", "content": voice_b64("A")})
    assert status == 200 and alice["name"] == "alice", alice
    status, bob = server.request("POST", VOICEPRINTS, body={"name": "bob", "content": voice_b64("B")})
    assert status == 200, bob
    status, error = server.request("POST", VOICEPRINTS, body={"name": "x", "content": base64.b64encode(
        af.encode(af.demo_voice("A", until=4.0), format="FLAC")).decode()})
    assert status == 400 and error["error"]["code"] == "too_little_speech"

    three = base64.b64encode((af.DEMO_DIR / "three-speakers.flac").read_bytes()).decode()
    status, _ = server.request("POST", "/audio/generic/api/v2/async/diarize",
                               query={"webhook": webhook_receiver.url, "request_id": "standup"},
                               body={"content": three, "voiceprints": [alice["voiceprint_id"], bob["voiceprint_id"]]})
    assert status == 200
    wait_for(lambda: webhook_receiver.received, 120, "the webhook")
    [hit] = webhook_receiver.received
    assert verify_signature(server.webhook_secret, hit.headers, hit.body)
    response = hit.json()["response"]
    assert sorted(str(s["name"]) for s in response["speakers"]) == ["None", "alice", "bob"]
    assert all("speaker_name" in s for s in response["segments"])

    # Deleting alice removes her everywhere: the list, later jobs, and the bytes of the data dir.
    prints = stored_prints(server.data_dir)
    assert len(prints) == 2
    status, answer = server.request("DELETE", f"{VOICEPRINTS}/{alice['voiceprint_id']}")
    assert (status, answer) == (200, {"voiceprint_id": alice["voiceprint_id"], "deleted": True})
    status, listed = server.request("GET", VOICEPRINTS)
    assert [v["name"] for v in listed["voiceprints"]] == ["bob"]
    remaining = set(stored_prints(server.data_dir))
    [gone] = [p for p in prints if p not in remaining]
    raw = b"".join(path.read_bytes() for path in server.data_dir.rglob("*") if path.is_file())
    assert gone[:64].encode() not in raw  # secure_delete + WAL checkpoint: not even in free pages
    assert server.terminate() == 0
    assert "alice" not in server.log() and gone[:32] not in server.log()  # never logged
