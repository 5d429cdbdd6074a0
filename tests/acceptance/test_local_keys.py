"""Keys at `diarize serve` start-up: created once and printed once, or the --api-key key registered."""
from __future__ import annotations

import pytest

from diarizer_service.auth import authenticate, revoke_key
from diarizer_service.backends.local import create_local_backends
from diarizer_service.local_server.keys import KeySetupError, announce_keys, register_key
from diarizer_service.settings import load_settings


@pytest.fixture
def keys(tmp_path):
    settings = load_settings({"DIARIZER_BACKEND": "local", "DIARIZER_DATA_DIR": str(tmp_path)})
    return create_local_backends(settings).keys


def test_a_given_key_is_registered_once_and_then_authenticates(keys):
    record, created = register_key(keys, "my-local-key")
    again, created_again = register_key(keys, "my-local-key")
    assert created and not created_again
    assert again.webhook_secret == record.webhook_secret  # a restart does not rotate the signing secret
    assert authenticate(keys, {"apikey": "my-local-key"}, {}).key_id == record.key_id


@pytest.mark.parametrize("bad", ["", "has space", "x" * 257, "tab\there"])
def test_unusable_keys_are_refused(keys, bad):
    with pytest.raises(KeySetupError):
        register_key(keys, bad)


def test_a_revoked_key_cannot_be_registered_again(keys):
    record, _ = register_key(keys, "old-key")
    revoke_key(keys, record.key_id)
    with pytest.raises(KeySetupError, match="revoked"):
        register_key(keys, "old-key")


def test_first_start_creates_and_prints_a_key_later_starts_only_count_them(keys):
    said: list[str] = []
    announce_keys(keys, None, said.append)
    [api_key] = [line.split(": ", 1)[1] for line in said if line.startswith("api key: ")]
    [secret] = [line.split(": ", 1)[1] for line in said if line.startswith("webhook secret: ")]
    assert authenticate(keys, {"apikey": api_key}, {}).webhook_secret == secret

    said.clear()
    announce_keys(keys, None, said.append)
    assert len(said) == 1 and said[0].startswith("api keys: 1 active") and api_key not in said[0]
