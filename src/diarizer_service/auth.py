"""API keys: generation, hashing, lookup, and request authentication.

A key looks like ``dk_<key_id>_<43 random url-safe chars>`` (256 bits of entropy). Only its SHA-256 is stored
(a plain hash is right for high-entropy secrets; no need for a slow KDF). `key_id` is a short non-secret
identifier stored alongside, safe for logs and job ids. The per-key webhook signing secret is stored in the
same item because the worker needs it to sign.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Mapping

from diarizer_service.backends.base import KeyStore
from diarizer_service.errors import ApiError
from diarizer_service.webhooks import generate_webhook_secret

KEY_PREFIX = "dk_"
MAX_KEY_LENGTH = 256  # longer strings are not our keys: refuse before hashing


@dataclass(frozen=True)
class ApiKey:
    key_hash: str
    key_id: str
    name: str
    created_at: int
    webhook_secret: str
    revoked_at: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_item(cls, item: dict) -> "ApiKey":
        return cls(key_hash=item["key_hash"], key_id=item["key_id"], name=item.get("name", ""),
                   created_at=int(item.get("created_at", 0)), webhook_secret=item["webhook_secret"],
                   revoked_at=item.get("revoked_at"))

    def to_item(self) -> dict:
        item = dict(self.__dict__)
        if item["revoked_at"] is None:
            del item["revoked_at"]
        return item


@dataclass(frozen=True)
class NewKey:
    """What `create_key` returns: the only moment the plain key and webhook secret are visible."""

    api_key: str
    record: ApiKey


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode(errors="surrogatepass")).hexdigest()  # a lone surrogate: no key, a 403


def new_key_id(store: KeyStore) -> str:
    """A key id no stored key has: job ids and S3 prefixes are `key_id`-scoped, so two keys sharing one would
    share their jobs' names. 64 random bits, checked against the stored keys (creating a key is rare)."""
    taken = {item.get("key_id") for item in store.list()}
    while True:
        key_id = secrets.token_hex(8)
        if key_id not in taken:
            return key_id


def create_key(store: KeyStore, name: str = "") -> NewKey:
    key_id = new_key_id(store)
    api_key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(key_hash=hash_api_key(api_key), key_id=key_id, name=name, created_at=int(time.time()),
                    webhook_secret=generate_webhook_secret())
    store.put(record.to_item())
    return NewKey(api_key, record)


def list_keys(store: KeyStore) -> list[ApiKey]:
    return sorted((ApiKey.from_item(item) for item in store.list()), key=lambda k: k.created_at)


class AmbiguousKeyId(ValueError):
    """Several keys share the id (ids were 32 random bits before they became 64 and checked): revoking by it
    could revoke another customer's key, so nothing is revoked."""


def revoke_key(store: KeyStore, key_id: str) -> ApiKey | None:
    """Revoke by the non-secret key id; returns the revoked key, or None if no such key."""
    matching = [key for key in list_keys(store) if hmac.compare_digest(key.key_id, key_id)]
    if len(matching) > 1:
        raise AmbiguousKeyId(f"{len(matching)} keys share the id {key_id!r} (made before key ids were 64-bit); "
                             "nothing was revoked: revoke such a key by the key itself (`revoke --api-key-stdin`)")
    if not matching:
        return None
    return _revoke(store, matching[0])


def revoke_by_secret(store: KeyStore, api_key: str) -> ApiKey | None:
    """Revoke the key itself (its holder's copy): the one way to single out a key whose id is shared."""
    item = store.get(hash_api_key(api_key.strip()))
    return None if item is None else _revoke(store, ApiKey.from_item(item))


def _revoke(store: KeyStore, key: ApiKey) -> ApiKey:
    if key.active:
        store.update(key.key_hash, {"revoked_at": int(time.time())})
    return ApiKey.from_item(store.get(key.key_hash))


def extract_api_key(query: Mapping[str, str] | None, headers: Mapping[str, str] | None) -> str | None:
    """The key from query `apikey` (official SDK), `api_key` (documented), or header `x-api-key`."""
    query = query or {}
    for name in ("apikey", "api_key"):
        if query.get(name):
            return query[name]
    for name, value in (headers or {}).items():
        if name.lower() == "x-api-key" and value:
            return value
    return None


def authenticate(store: KeyStore, query: Mapping[str, str] | None, headers: Mapping[str, str] | None) -> ApiKey:
    """Missing key -> 401; unknown or revoked key -> 403 (same message: do not tell which)."""
    api_key = extract_api_key(query, headers)
    if not api_key:
        raise ApiError(401, "missing_api_key", "An API key is required: query parameter 'apikey' or header 'x-api-key'.")
    forbidden = ApiError(403, "invalid_api_key", "The API key is not valid.")
    if len(api_key) > MAX_KEY_LENGTH:
        raise forbidden
    item = store.get(hash_api_key(api_key))
    if item is None:
        raise forbidden
    key = ApiKey.from_item(item)
    if not key.active:
        raise forbidden
    return key
