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
    first = create_key(runtime.backends.keys, "a")
    second = create_key(runtime.backends.keys, "b")
    assert {k.key_id for k in list_keys(runtime.backends.keys)} == {first.record.key_id, second.record.key_id}
