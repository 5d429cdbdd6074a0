import json

import pytest

from diarizer_service import keys as keys_cli
from diarizer_service.auth import authenticate, create_key, hash_api_key, list_keys, revoke_key
from diarizer_service.errors import ApiError


def status_of(store, query=None, headers=None):
    with pytest.raises(ApiError) as caught:
        authenticate(store, query, headers)
    return caught.value.status, caught.value.code


def test_key_is_high_entropy_and_only_its_hash_is_stored(runtime, new_key):
    store = runtime.backends.keys
    assert new_key.api_key.startswith(f"dk_{new_key.record.key_id}_") and len(new_key.api_key) >= 50
    [item] = store.list()
    assert item["key_hash"] == hash_api_key(new_key.api_key)
    assert new_key.api_key not in json.dumps(item)
    assert new_key.record.webhook_secret.startswith("whsec_") and item["webhook_secret"] == new_key.record.webhook_secret


@pytest.mark.parametrize("where", ["apikey", "api_key", "header"])
def test_authenticates_from_query_or_header(runtime, new_key, where):
    query, headers = ({}, {"X-API-Key": new_key.api_key}) if where == "header" else ({where: new_key.api_key}, {})
    assert authenticate(runtime.backends.keys, query, headers).key_id == new_key.record.key_id


def test_missing_unknown_revoked(runtime, new_key):
    store = runtime.backends.keys
    assert status_of(store, {}, {}) == (401, "missing_api_key")
    assert status_of(store, {"apikey": ""}, None) == (401, "missing_api_key")
    assert status_of(store, {"apikey": "dk_nope_nope"}) == (403, "invalid_api_key")
    assert status_of(store, {"apikey": "x" * 10_000}) == (403, "invalid_api_key")
    assert revoke_key(store, new_key.record.key_id).revoked_at is not None
    assert status_of(store, {"apikey": new_key.api_key}) == (403, "invalid_api_key")
    assert revoke_key(store, "unknown") is None


def test_cli_create_list_revoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIARIZER_BACKEND", "local")
    monkeypatch.setenv("DIARIZER_DATA_DIR", str(tmp_path))
    assert keys_cli.main(["--json", "create", "--name", "acme"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["api_key"].startswith("dk_") and created["webhook_secret"].startswith("whsec_")
    assert keys_cli.main(["--json", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [{"key_id": created["key_id"], "name": "acme", "created_at": created["created_at"],
                       "status": "active"}]
    assert created["api_key"] not in json.dumps(listed)
    assert keys_cli.main(["revoke", created["key_id"]]) == 0
    capsys.readouterr()
    keys_cli.main(["--json", "list"])
    assert json.loads(capsys.readouterr().out)[0]["status"] == "revoked"
    assert keys_cli.main(["revoke", "nope"]) == 1


def test_list_keys_is_sorted_by_creation(runtime):
    store = runtime.backends.keys
    made = [create_key(store, name) for name in "abc"]
    for age, key in zip((100, 300, 200), made):  # stored out of creation order
        store.update(key.record.key_hash, {"created_at": age})
    assert [k.name for k in list_keys(store)] == ["a", "c", "b"]


def test_key_ids_are_unique_and_never_reused(runtime, monkeypatch):
    """Jobs are stored under key_id#request_id: a second key with a taken id would share them."""
    store = runtime.backends.keys
    first = create_key(store, "first")
    ids = iter([first.record.key_id, first.record.key_id, "0123456789abcdef"])
    monkeypatch.setattr("diarizer_service.auth.secrets.token_hex", lambda n: next(ids))
    assert create_key(store, "second").record.key_id == "0123456789abcdef"


def test_the_status_route_never_shows_another_keys_job_even_with_the_same_key_id(runtime, wav_bytes):
    """Keys made before ids were checked may share one: the job's key hash decides, not the id."""
    import base64
    import dataclasses
    import json as json_module

    from diarizer_service import api
    from diarizer_service.errors import ApiError

    store = runtime.backends.keys
    owner = create_key(store, "owner").record
    intruder = dataclasses.replace(create_key(store, "intruder").record, key_id=owner.key_id)
    body = json_module.dumps({"content": base64.b64encode(wav_bytes(0.5)).decode()})
    api.submit_async(runtime, owner, body, False, {"webhook": "http://127.0.0.1:9/h", "request_id": "mine"})
    assert api.job_status(runtime, owner, "mine")["status"] == "queued"
    with pytest.raises(ApiError) as caught:
        api.job_status(runtime, intruder, "mine")
    assert (caught.value.status, caught.value.code) == (404, "job_not_found")
    with pytest.raises(ApiError) as caught:  # nor can it take over the request_id
        api.submit_async(runtime, intruder, body, False, {"webhook": "http://127.0.0.1:9/h", "request_id": "mine"})
    assert caught.value.status == 409
