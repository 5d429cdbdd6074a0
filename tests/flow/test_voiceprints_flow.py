"""Known voices through the deployed shape: API handler -> DynamoDB voiceprints (moto) -> worker -> signed webhook.

The real engine enrols two demo voices from one recording; the async job on the other recording names them
in the webhook, and leaves the third, never-enrolled voice unnamed.
"""
import base64
import io

import numpy as np
import pytest

import audio_factory as af
from diarizer_service import keys as keys_cli
from diarizer_service.auth import create_key
from diarizer_service.webhooks import verify_signature
from flow.conftest import VOICEPRINTS_TABLE

ASYNC = "/audio/generic/api/v2/async/diarize"
SYNC = "/audio/generic/api/v2/sync/diarize"
VOICEPRINTS = "/audio/generic/api/v2/voiceprints"


def b64(samples) -> str:
    return base64.b64encode(af.encode(samples, format="FLAC")).decode()


@pytest.fixture
def engine_stack(stack, real_engine):
    stack.runtime.engine_factory = lambda: real_engine
    return stack


def enroll(stack, api_handler, name, label, api_key="default", recording="two-speakers"):
    status, answer = stack.call_api("POST", VOICEPRINTS, handler=api_handler, api_key=api_key,
                                    body={"name": name, "content": b64(af.demo_voice(label, recording))})
    assert status == 200, answer
    return status, answer


def stored_items(stack):
    return stack.dynamodb.Table(VOICEPRINTS_TABLE).scan()["Items"]


def test_enrol_then_async_identify_names_the_speakers_in_the_signed_webhook(engine_stack, api_handler, worker_handler,
                                                                          webhook_receiver, monkeypatch, capsys, caplog):
    from diarizer_service.observability import logger

    stack = engine_stack
    monkeypatch.setattr(logger.registered_handler, "stream", io.StringIO())
    previous_level = logger.log_level
    logger.setLevel("DEBUG")
    status, alice = enroll(stack, api_handler, "alice", "A")
    assert status == 200 and set(alice) == {"voiceprint_id", "name", "seconds"} and alice["name"] == "alice"
    assert alice["seconds"] >= 5
    status, bob = enroll(stack, api_handler, "bob", "B")
    assert status == 200
    status, listed = stack.call_api("GET", VOICEPRINTS, handler=api_handler)
    assert status == 200 and [v["name"] for v in listed["voiceprints"]] == ["alice", "bob"]
    assert all(set(v) == {"voiceprint_id", "name", "seconds", "created_at"} for v in listed["voiceprints"])

    three = (af.DEMO_DIR / "three-speakers.flac").read_bytes()
    status, _ = stack.call_api("POST", ASYNC, query={"webhook": webhook_receiver.url, "request_id": "standup"},
                               body={"content": base64.b64encode(three).decode(), "identify": True, "confidence": True},
                               handler=api_handler)
    assert status == 200
    assert stack.job_item("standup")["options"]["identify"] is True
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}

    [hit] = webhook_receiver.received
    assert verify_signature(stack.key.record.webhook_secret, hit.headers, hit.body)
    response = hit.json()["response"]
    _, turns = af.demo_recording("three-speakers")
    names = {m["speaker_id"]: m["name"] for m in response["speakers"]}
    said = {}
    for seg in response["segments"]:
        assert seg["speaker_name"] == names[seg["speaker_id"]] and 0 <= seg["confidence"] <= 1
        for start, end, label in turns:
            shared = max(0.0, min(end, seg["end"]) - max(start, seg["start"]))
            said.setdefault(label, {}).setdefault(seg["speaker_name"], 0.0)
            said[label][seg["speaker_name"]] += shared
    assert max(said["A"], key=said["A"].get) == "alice" and max(said["B"], key=said["B"].get) == "bob"
    assert max(said["C"], key=said["C"].get) is None  # never enrolled
    assert sorted(n for n in names.values() if n) == ["alice", "bob"]

    # Biometric data stays out of the logs: neither the names nor any stored print appear.
    logger.setLevel(previous_level)
    logged = logger.registered_handler.stream.getvalue() + caplog.text + "".join(capsys.readouterr())
    assert "voiceprint enrolled" in logged and "job done" in logged  # the handlers really logged
    assert "alice" not in logged and "bob" not in logged
    assert all(item["embedding"][:40] not in logged for item in stored_items(stack))


def test_voiceprints_enrolled_within_one_second_are_listed_in_enrolment_order(engine_stack, api_handler, monkeypatch):
    from diarizer_service import voiceprints

    clock = iter(range(1_700_000_000_000_000_000, 1_700_000_000_900_000_000, 100_000_000))  # all in one second
    monkeypatch.setattr(voiceprints.time, "time_ns", lambda: next(clock))
    ids = iter(["ff" * 8, "00" * 8])  # the second id sorts first: the order must not come from it
    monkeypatch.setattr(voiceprints.secrets, "token_hex", lambda n: next(ids))
    enroll(engine_stack, api_handler, "zoe", "A")
    enroll(engine_stack, api_handler, "adam", "B")
    status, listed = engine_stack.call_api("GET", VOICEPRINTS, handler=api_handler)
    assert status == 200 and [v["name"] for v in listed["voiceprints"]] == ["zoe", "adam"]
    assert {v["created_at"] for v in listed["voiceprints"]} == {1_700_000_000}


def test_sync_identify_with_chosen_voiceprints(engine_stack, api_handler):
    stack = engine_stack
    _, alice = enroll(stack, api_handler, "alice", "A")
    _, bob = enroll(stack, api_handler, "bob", "B")
    two = (af.DEMO_DIR / "two-speakers.flac").read_bytes()
    status, body = stack.call_api("POST", SYNC, body={"content": base64.b64encode(two).decode(),
                                                      "voiceprints": [bob["voiceprint_id"]]}, handler=api_handler)
    assert status == 200
    assert sorted(str(s["name"]) for s in body["speakers"]) == ["None", "bob"]  # alice was not asked for
    assert "confidence" not in body["segments"][0]


def test_a_silent_recording_with_identify_and_confidence_is_an_empty_answer(engine_stack, api_handler):
    stack = engine_stack
    enroll(stack, api_handler, "alice", "A")
    silence = np.zeros(6 * 16000, np.float32)
    status, body = stack.call_api("POST", SYNC, body={"content": b64(silence), "identify": True, "confidence": True},
                                  handler=api_handler)
    assert status == 200, body
    assert body["num_speakers"] == 0 and body["segments"] == [] and body["speakers"] == []


def test_enrolment_errors(engine_stack, api_handler, monkeypatch):
    stack = engine_stack
    status, error = stack.call_api("POST", VOICEPRINTS, body={"name": "alice", "content": b64(af.demo_voice("A", until=4))},
                                   handler=api_handler)
    assert status == 400 and error["error"]["code"] == "too_little_speech" and "5 s" in error["error"]["message"]
    silence = np.zeros(8 * 16000, np.float32)  # nobody talks at all: the same answer, never a 500
    status, error = stack.call_api("POST", VOICEPRINTS, body={"name": "alice", "content": b64(silence)}, handler=api_handler)
    assert status == 400 and error["error"]["code"] == "too_little_speech"
    samples, _ = af.demo_recording("two-speakers")
    status, error = stack.call_api("POST", VOICEPRINTS, body={"name": "alice", "content": b64(samples[: 16 * 16000])},
                                   handler=api_handler)
    assert status == 400 and error["error"]["code"] == "several_voices"
    status, error = stack.call_api("POST", VOICEPRINTS, body={"content": b64(af.demo_voice("A"))}, handler=api_handler)
    assert status == 400 and error["error"] == {"code": "missing_field", "field": "name",
                                                "message": "`name` (the enrolled person's name) is required."}
    status, error = stack.call_api("POST", VOICEPRINTS, body={"name": "x" * 65, "content": "AAAA"}, handler=api_handler)
    assert status == 400 and error["error"]["field"] == "name"
    status, error = stack.call_api("POST", VOICEPRINTS, body={"name": "alice", "content": b64(af.noise(61.0))},
                                   handler=api_handler)
    assert status == 413 and error["error"]["code"] == "audio_too_long_for_sync"
    assert stored_items(stack) == []
    monkeypatch.setattr("diarizer_service.voiceprints.MAX_VOICEPRINTS_PER_KEY", 0)
    status, error = stack.call_api("POST", VOICEPRINTS, body={"name": "alice", "content": b64(af.demo_voice("A"))},
                                   handler=api_handler)
    assert status == 409 and error["error"]["code"] == "too_many_voiceprints"


def test_unknown_and_foreign_voiceprints_are_not_found_and_deletion_removes_every_copy(engine_stack, api_handler,
                                                                                        webhook_receiver):
    stack = engine_stack
    _, alice = enroll(stack, api_handler, "alice", "A")
    other = create_key(stack.runtime.backends.keys, "other customer")
    audio = base64.b64encode((af.DEMO_DIR / "two-speakers.flac").read_bytes()).decode()

    # Another key sees nothing of alice: not in its list, not usable, not deletable.
    status, listed = stack.call_api("GET", VOICEPRINTS, handler=api_handler, api_key=other.api_key)
    assert (status, listed) == (200, {"voiceprints": []})
    for method, path, body, query in (
        ("POST", ASYNC, {"content": audio, "voiceprints": [alice["voiceprint_id"]]}, {"webhook": webhook_receiver.url}),
        ("POST", SYNC, {"content": audio, "voiceprints": [alice["voiceprint_id"]]}, None),
        ("DELETE", f"{VOICEPRINTS}/{alice['voiceprint_id']}", None, None),
    ):
        status, error = stack.call_api(method, path, body=body, query=query, handler=api_handler, api_key=other.api_key)
        assert status == 404 and error["error"]["code"] == "voiceprint_not_found", (method, path)
        # the field names what the request sent: the body's list, or nothing for the id in a DELETE's path
        assert error["error"].get("field") == (None if method == "DELETE" else "voiceprints"), (method, error)
    status, error = stack.call_api("POST", ASYNC, body={"content": audio, "voiceprints": ["vp_0000000000000000"]},
                                   query={"webhook": webhook_receiver.url}, handler=api_handler)
    assert status == 404 and error["error"]["code"] == "voiceprint_not_found"
    status, error = stack.call_api("POST", SYNC, body={"content": audio, "voiceprints": "alice"}, handler=api_handler)
    assert status == 400 and error["error"]["field"] == "voiceprints"
    status, error = stack.call_api("POST", SYNC, body={"content": audio, "identify": "yes"}, handler=api_handler)
    assert status == 400 and error["error"]["field"] == "identify"
    assert len(stored_items(stack)) == 1

    # Deleting removes the one stored copy; a second delete is "not found".
    status, answer = stack.call_api("DELETE", f"{VOICEPRINTS}/{alice['voiceprint_id']}", handler=api_handler)
    assert (status, answer) == (200, {"voiceprint_id": alice["voiceprint_id"], "deleted": True})
    assert stored_items(stack) == []
    status, _ = stack.call_api("DELETE", f"{VOICEPRINTS}/{alice['voiceprint_id']}", handler=api_handler)
    assert status == 404

    # Revoking a key deletes all of its voiceprints, and only its own.
    enroll(stack, api_handler, "bob", "B")
    enroll(stack, api_handler, "carol", "C", api_key=other.api_key, recording="three-speakers")
    assert keys_cli.main(["revoke", stack.key.record.key_id]) == 0
    assert [item["name"] for item in stored_items(stack)] == ["carol"]


def test_two_keys_sharing_an_old_key_id_never_see_use_or_delete_each_others_voiceprints(engine_stack, api_handler,
                                                                                         monkeypatch):
    """Voiceprints are stored under key_id, which two keys made before ids were 64-bit may share: the key's hash is
    stored with each voiceprint and compared, as the status route does for jobs."""
    import dataclasses

    stack = engine_stack
    _, alice = enroll(stack, api_handler, "alice", "A")
    twin = create_key(stack.runtime.backends.keys, "another customer")
    stack.runtime.backends.keys.put(dataclasses.replace(twin.record, key_id=stack.key.record.key_id).to_item())

    status, listed = stack.call_api("GET", VOICEPRINTS, handler=api_handler, api_key=twin.api_key)
    assert (status, listed) == (200, {"voiceprints": []})
    status, error = stack.call_api("DELETE", f"{VOICEPRINTS}/{alice['voiceprint_id']}", handler=api_handler,
                                   api_key=twin.api_key)
    assert status == 404 and len(stored_items(stack)) == 1
    audio = base64.b64encode((af.DEMO_DIR / "two-speakers.flac").read_bytes()).decode()
    status, error = stack.call_api("POST", SYNC, body={"content": audio, "voiceprints": [alice["voiceprint_id"]]},
                                   handler=api_handler, api_key=twin.api_key)
    assert status == 404 and error["error"]["code"] == "voiceprint_not_found"
    status, answer = stack.call_api("POST", SYNC, body={"content": audio, "identify": True}, handler=api_handler,
                                    api_key=twin.api_key)
    assert status == 200 and answer["speakers"] and all(s["name"] is None for s in answer["speakers"])
    status, answer = stack.call_api("POST", SYNC, body={"content": audio, "identify": True}, handler=api_handler)
    assert status == 200 and "alice" in [s["name"] for s in answer["speakers"]]  # the owner still is named

    # Revoking by the shared id would be a guess between two customers: refused. By the key itself: only its own.
    enroll(stack, api_handler, "carol", "C", api_key=twin.api_key, recording="three-speakers")
    assert keys_cli.main(["revoke", stack.key.record.key_id]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO(twin.api_key + "\n"))
    assert keys_cli.main(["revoke", "--api-key-stdin"]) == 0
    assert [item["name"] for item in stored_items(stack)] == ["alice"]
    status, _ = stack.call_api("GET", VOICEPRINTS, handler=api_handler, api_key=twin.api_key)
    assert status == 403
    status, listed = stack.call_api("GET", VOICEPRINTS, handler=api_handler)
    assert status == 200 and [v["name"] for v in listed["voiceprints"]] == ["alice"]


def test_plain_requests_store_and_answer_exactly_as_before(engine_stack, api_handler):
    stack = engine_stack
    two = base64.b64encode((af.DEMO_DIR / "two-speakers.flac").read_bytes()).decode()
    status, body = stack.call_api("POST", SYNC, body={"content": two, "identify": False, "confidence": False},
                                  handler=api_handler)
    assert status == 200 and set(body) == {"num_speakers", "segments"}
    assert all(set(s) == {"speaker_id", "start", "end"} for s in body["segments"])


def test_plain_requests_never_touch_voiceprints(stack, api_handler, worker_handler, webhook_receiver):
    """Nothing new runs unless asked: with no voiceprint store at all, plain requests work as before."""
    stack.runtime.backends.voiceprints = None
    audio = base64.b64encode((af.DEMO_DIR / "two-speakers.flac").read_bytes()).decode()
    status, _ = stack.call_api("POST", SYNC, body={"content": audio}, handler=api_handler)
    assert status == 200
    status, _ = stack.call_api("POST", ASYNC, query={"webhook": webhook_receiver.url, "request_id": "plain"},
                               body={"content": audio}, handler=api_handler)
    assert status == 200 and "identify" not in stack.job_item("plain")["options"]
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    assert stack.job_item("plain")["status"] == "done"
    status, error = stack.call_api("POST", SYNC, body={"content": audio, "identify": True}, handler=api_handler)
    assert status == 501 and error["error"]["code"] == "voiceprints_not_configured"
