"""A key revoked while one of its enrolments is in flight keeps no voiceprint (biometric data).

Revocation is what the admin runs, `python -m diarizer_service.keys revoke <key_id>` (revoke, then delete
every voiceprint of the key); the enrolment authenticated before it and runs the engine for seconds. The
revocation is forced at a chosen point of the enrolment by wrapping the engine or the store. On moto
(DynamoDB) and on the local backends (sqlite), with the real key store and voiceprint store.
"""
from __future__ import annotations

import base64
import json

import boto3
import pytest
from moto import mock_aws

from diarizer.types import Voiceprint
from diarizer_service import keys as keys_cli
from diarizer_service import voiceprints
from diarizer_service.auth import authenticate, create_key
from diarizer_service.backends import create_backends
from diarizer_service.errors import ApiError, BackendError
from diarizer_service.runtime import Runtime, default_probe
from diarizer_service.settings import load_settings
from flow.conftest import BUCKET, JOBS_TABLE, KEYS_TABLE, VOICEPRINTS_TABLE, create_tables


@pytest.fixture(params=["local", "moto"])
def runtime(request, tmp_path, monkeypatch):
    """A runtime and, in the environment, the same deployment for the `keys` command."""
    if request.param == "local":
        monkeypatch.setenv("DIARIZER_BACKEND", "local")
        monkeypatch.setenv("DIARIZER_DATA_DIR", str(tmp_path / "data"))
        settings = load_settings()
        yield Runtime(settings, create_backends(settings), probe=default_probe)
        return
    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
        create_tables(dynamodb)
        for name, value in {"DIARIZER_BACKEND": "aws", "DIARIZER_BUCKET": BUCKET,
                            "DIARIZER_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/unused",
                            "DIARIZER_JOBS_TABLE": JOBS_TABLE, "DIARIZER_KEYS_TABLE": KEYS_TABLE,
                            "DIARIZER_VOICEPRINTS_TABLE": VOICEPRINTS_TABLE}.items():
            monkeypatch.setenv(name, value)
        settings = load_settings()
        yield Runtime(settings, create_backends(settings), probe=default_probe)


def every_stored_voiceprint(runtime: Runtime) -> list[dict]:
    """The whole store, not just one key's partition: nothing of the revoked key may hide anywhere."""
    if runtime.settings.backend == "local":
        with runtime.backends.voiceprints._db.transaction() as db:
            return [json.loads(row[0]) for row in db.execute("SELECT item FROM voiceprints").fetchall()]
    return boto3.resource("dynamodb", region_name="us-east-1").Table(VOICEPRINTS_TABLE).scan()["Items"]


def enrol(runtime: Runtime, key, audio: bytes):
    body = json.dumps({"name": "Alice", "content": base64.b64encode(audio).decode()})
    try:
        return 200, voiceprints.enroll(runtime, key, body, False)
    except ApiError as exc:
        return exc.status, exc.code


def revoke(key) -> None:
    assert keys_cli.main(["revoke", key.record.key_id]) == 0


def fake_enrolment(name: str) -> Voiceprint:
    return Voiceprint(name, tuple([0.1] * 192), 5.0)


def test_a_key_revoked_while_the_engine_runs_keeps_no_voiceprint(runtime, wav_bytes, monkeypatch):
    key = create_key(runtime.backends.keys, "customer")
    bystander = create_key(runtime.backends.keys, "another customer")
    monkeypatch.setattr(runtime, "enroll", lambda audio, name: fake_enrolment(name))
    assert enrol(runtime, bystander.record, wav_bytes(1.0))[0] == 200

    def engine(audio, name):  # the admin revokes the key while its enrolment is in the engine
        revoke(key)
        return fake_enrolment(name)

    monkeypatch.setattr(runtime, "enroll", engine)
    assert enrol(runtime, key.record, wav_bytes(1.0)) == (403, "invalid_api_key")  # as the auth layer answers now
    with pytest.raises(ApiError) as refused:
        authenticate(runtime.backends.keys, {"apikey": key.api_key}, None)
    assert refused.value.status == 403
    assert [item["key_id"] for item in every_stored_voiceprint(runtime)] == [bystander.record.key_id]


def test_a_revocation_between_the_write_and_the_answer_is_refused_too(runtime, wav_bytes, monkeypatch):
    """The revocation's deletion removes what was written; the enrolment must not then answer 200 for a
    voiceprint of a revoked key."""
    key = create_key(runtime.backends.keys, "customer")
    store = runtime.backends.voiceprints
    real_put = store.put

    def put(item):
        real_put(item)
        revoke(key)

    monkeypatch.setattr(runtime, "enroll", lambda audio, name: fake_enrolment(name))
    monkeypatch.setattr(store, "put", put)
    assert enrol(runtime, key.record, wav_bytes(1.0)) == (403, "invalid_api_key")
    assert every_stored_voiceprint(runtime) == []


def test_a_write_whose_reply_was_lost_is_removed_when_the_key_was_revoked(runtime, wav_bytes, monkeypatch):
    """The put landed but its reply was lost (a timeout), after the revocation had deleted the key's
    voiceprints: the failed put must not leave the embedding behind."""
    key = create_key(runtime.backends.keys, "customer")
    store = runtime.backends.voiceprints
    real_put = store.put

    def engine(audio, name):
        revoke(key)
        return fake_enrolment(name)

    def put(item):
        real_put(item)
        raise BackendError("DynamoDB put failed: read timeout (simulated)")

    monkeypatch.setattr(runtime, "enroll", engine)
    monkeypatch.setattr(store, "put", put)
    assert enrol(runtime, key.record, wav_bytes(1.0)) == (403, "invalid_api_key")
    assert every_stored_voiceprint(runtime) == []


def test_an_unrevoked_key_whose_check_fails_keeps_nothing_and_may_retry(runtime, wav_bytes, monkeypatch):
    """When the key cannot be re-read after the write, nothing proves the revocation did not run: the
    voiceprint is removed and the client told to retry (503); the retry then enrols it."""
    key = create_key(runtime.backends.keys, "customer")
    keys_store = runtime.backends.keys
    monkeypatch.setattr(runtime, "enroll", lambda audio, name: fake_enrolment(name))

    def get(key_hash):
        raise BackendError("DynamoDB get failed: throttled (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(keys_store, "get", get)
        assert enrol(runtime, key.record, wav_bytes(1.0)) == (503, "service_unavailable")
    assert every_stored_voiceprint(runtime) == []
    status, answer = enrol(runtime, key.record, wav_bytes(1.0))
    assert status == 200
    assert [item["voiceprint_id"] for item in every_stored_voiceprint(runtime)] == [answer["voiceprint_id"]]
