"""API keys at start-up: create one on first start (printed once), or register the key given with --api-key."""
from __future__ import annotations

import time
from typing import Callable

from diarizer_service.auth import MAX_KEY_LENGTH, ApiKey, create_key, hash_api_key, list_keys, new_key_id
from diarizer_service.backends.base import KeyStore
from diarizer_service.webhooks import generate_webhook_secret

LOCAL_KEY_NAME = "local"


class KeySetupError(Exception):
    pass


def register_key(store: KeyStore, api_key: str, name: str = LOCAL_KEY_NAME) -> tuple[ApiKey, bool]:
    """The key record for `api_key`, stored if new; returns (record, created)."""
    if not api_key or len(api_key) > MAX_KEY_LENGTH or not api_key.isprintable() or any(c.isspace() for c in api_key):
        raise KeySetupError(f"--api-key must be 1-{MAX_KEY_LENGTH} printable characters without spaces")
    item = store.get(hash_api_key(api_key))
    if item is not None:
        record = ApiKey.from_item(item)
        if not record.active:
            raise KeySetupError(f"the --api-key key (id {record.key_id}) was revoked; choose another key")
        return record, False
    record = ApiKey(key_hash=hash_api_key(api_key), key_id=new_key_id(store), name=name,
                    created_at=int(time.time()), webhook_secret=generate_webhook_secret())
    store.put(record.to_item())
    return record, True


def announce_keys(store: KeyStore, api_key: str | None, say: Callable[[str], None]) -> None:
    """Make sure a usable key exists and tell the user which one (plain keys are only known when created)."""
    if api_key is not None:
        record, created = register_key(store, api_key)
        say(f"using the key given with --api-key (key id {record.key_id}, "
            f"{'registered now' if created else 'registered before'})")
        # Whoever holds the key may see its signing secret: it is needed to check the webhooks.
        say(f"webhook secret: {record.webhook_secret}")
        return
    active = [key for key in list_keys(store) if key.active]
    if not active:
        new = create_key(store, LOCAL_KEY_NAME)
        say(f"api key: {new.api_key}")
        say(f"webhook secret: {new.record.webhook_secret}")
        say("(a new key: shown only now, only its hash is stored; --api-key KEY registers a key of your choice)")
        return
    ids = ", ".join(key.key_id for key in active)
    say(f"api keys: {len(active)} active (key id {ids}); each was shown when it was created. "
        "Pass --api-key KEY to register a key of your choice.")
