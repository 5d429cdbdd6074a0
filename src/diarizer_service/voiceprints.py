"""Voiceprint routes and storage: enrol, list, delete, and load them for a diarization.

A voiceprint belongs to the API key that enrolled it; another key's voiceprint is "not found" (404, no leak).
Stored items: key_id, voiceprint_id, name, seconds, created_at (and created_ns, for the order) and the
embedding (192 float32, base64). The embedding never leaves the store except into the engine: no route returns
it and nothing logs it (biometric data, see docs/security.md).
"""
from __future__ import annotations

import base64
import hmac
import secrets
import time
from typing import Any, Mapping, Sequence

import numpy as np

from diarizer.types import AudioDecodeError, EnrollmentError, Voiceprint

from diarizer_service.auth import ApiKey
from diarizer_service.backends import Backends, BackendError
from diarizer_service.backends.base import VoiceprintStore
from diarizer_service.errors import ApiError, invalid_field, missing_field, service_unavailable
from diarizer_service.observability import MetricUnit, logger, metrics
from diarizer_service.runtime import Runtime
from diarizer_service.validation import VOICEPRINT_ID_RE, decode_content, parse_json_body

ROUTE = "/audio/generic/api/v2/voiceprints"
MAX_VOICEPRINTS_PER_KEY = 500  # `identify: true` compares every speaker with all of them
MAX_NAME_LENGTH = 64


def _store(backends: Backends) -> VoiceprintStore:
    if backends.voiceprints is None:
        raise ApiError(501, "voiceprints_not_configured", "This deployment has no voiceprint table "
                       "(DIARIZER_VOICEPRINTS_TABLE).")
    return backends.voiceprints


def _not_found(field: str | None = "voiceprints") -> ApiError:
    """field: the request field that named the voiceprint; None for the DELETE route, which names it in its path."""
    return ApiError(404, "voiceprint_not_found", "No voiceprint with this id for this API key.", field=field)


def _owned(item: Mapping[str, Any] | None, key_hash: str) -> bool:
    """Is this item the key's? Items are stored under `key_id`, which two keys made before ids were 64-bit may
    share (docs/security.md), so the key's hash is stored with each voiceprint and compared, as for jobs. Items
    enrolled before the hash was stored carry none and go by `key_id` alone."""
    return item is not None and hmac.compare_digest(str(item.get("key_hash", key_hash)), key_hash)


def _key_items(store: VoiceprintStore, key_id: str, key_hash: str) -> list[dict]:
    """Every voiceprint of the key: those stored under its id that are its own (`_owned`)."""
    return [item for item in store.list(key_id) if _owned(item, key_hash)]


def _public(item: Mapping[str, Any]) -> dict:
    """What a client may see of a voiceprint: never the embedding."""
    return {"voiceprint_id": item["voiceprint_id"], "name": item["name"], "seconds": item["seconds"],
            "created_at": item["created_at"]}


def _name(body: Mapping[str, Any]) -> str:
    name = body.get("name")
    if name is None:
        raise missing_field("name", "`name` (the enrolled person's name) is required.")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME_LENGTH or not name.isprintable():
        raise invalid_field("name", f"`name` must be 1-{MAX_NAME_LENGTH} printable characters.")
    return name.strip()


def enroll(runtime: Runtime, key: ApiKey, raw_body: str | bytes | None, is_base64: bool) -> dict:
    """POST /voiceprints: {"name", "content"} -> {"voiceprint_id", "name", "seconds"}."""
    from diarizer_service.api import audio_error, probe_or_reject  # the same audio checks as the diarize routes

    store = _store(runtime.backends)
    body = parse_json_body(raw_body, is_base64)
    name = _name(body)
    if body.get("content") is None:
        raise missing_field("content", "`content` (base64 audio of the one voice to enrol) is required.")
    audio = decode_content(body["content"])
    limit = runtime.settings.sync_max_seconds
    too_long = ApiError(413, "audio_too_long_for_sync", f"Enrolment takes audio up to {limit:g} s; 10-30 s of one "
                        "voice is plenty.", field="content")
    probe_or_reject(runtime, audio, limit, too_long)
    try:
        if len(_key_items(store, key.key_id, key.key_hash)) >= MAX_VOICEPRINTS_PER_KEY:
            raise ApiError(409, "too_many_voiceprints", f"This API key has {MAX_VOICEPRINTS_PER_KEY} voiceprints: "
                           "delete some first.")
    except BackendError as exc:
        raise service_unavailable() from exc
    try:
        voiceprint = runtime.enroll(audio, name)
    except AudioDecodeError as exc:
        raise audio_error(exc, too_long) from exc
    except EnrollmentError as exc:
        if exc.code == "several_voices":
            raise ApiError(400, "several_voices", str(exc), field="content") from exc
        if exc.code == "invalid_name":  # _name checked it already; the engine's own check agrees
            raise ApiError(400, "invalid_field", str(exc), field="name") from exc
        raise ApiError(400, "too_little_speech", str(exc), field="content") from exc
    created_ns = time.time_ns()  # orders voiceprints enrolled within one second; clients see created_at
    item = {"key_id": key.key_id, "key_hash": key.key_hash, "voiceprint_id": "vp_" + secrets.token_hex(8), "name": name,
            "seconds": float(voiceprint.seconds), "created_at": created_ns // 10**9, "created_ns": created_ns,
            "embedding": base64.b64encode(np.asarray(voiceprint.embedding, "<f4").tobytes()).decode()}
    try:
        store.put(item)
    except BackendError as exc:
        try:  # the put may have landed all the same: not for a key revoked meanwhile
            _forget_if_revoked(runtime, store, key, item["voiceprint_id"])
        except BackendError:
            logger.warning("could not check the key (or remove the voiceprint) after a failed voiceprint write")
        raise service_unavailable() from exc
    try:
        _forget_if_revoked(runtime, store, key, item["voiceprint_id"])
    except BackendError as exc:  # cannot tell whether the key was revoked: keep nothing, the client retries
        try:
            store.delete(key.key_id, item["voiceprint_id"])
        except BackendError:
            logger.exception("could not remove a voiceprint whose key could not be checked")
        raise service_unavailable() from exc
    metrics.add_metric(name="VoiceprintsEnrolled", unit=MetricUnit.Count, value=1)
    logger.info("voiceprint enrolled", extra={"voiceprint_id": item["voiceprint_id"]})  # never the name or print
    return {"voiceprint_id": item["voiceprint_id"], "name": name, "seconds": item["seconds"]}


def _forget_if_revoked(runtime: Runtime, store: VoiceprintStore, key: ApiKey, voiceprint_id: str) -> None:
    """After the put: a key revoked while the engine ran has had its voiceprints deleted already (revocation
    is revoke, then delete_all), so this one would outlive it. Deleted again and refused as the auth layer
    refuses a revoked key. Either the revocation's delete_all lists this put, or this read sees the revocation
    (both reads are strongly consistent)."""
    item = runtime.backends.keys.get(key.key_hash)
    if item is not None and item.get("revoked_at") is None:
        return
    store.delete(key.key_id, voiceprint_id)
    logger.info("key revoked during enrolment: voiceprint removed", extra={"voiceprint_id": voiceprint_id})
    raise ApiError(403, "invalid_api_key", "The API key is not valid.")


def list_voiceprints(runtime: Runtime, key: ApiKey) -> dict:
    try:
        items = _key_items(_store(runtime.backends), key.key_id, key.key_hash)
    except BackendError as exc:
        raise service_unavailable() from exc
    return {"voiceprints": [_public(item) for item in sorted(items, key=_enrolment_order)]}


def _enrolment_order(item: Mapping[str, Any]) -> tuple[int, str]:
    """Oldest first. Items stored before created_ns existed have whole seconds only."""
    return int(item.get("created_ns", int(item["created_at"]) * 10**9)), item["voiceprint_id"]


def delete(runtime: Runtime, key: ApiKey, voiceprint_id: str) -> dict:
    if not isinstance(voiceprint_id, str) or not VOICEPRINT_ID_RE.fullmatch(voiceprint_id):
        raise _not_found(field=None)
    store = _store(runtime.backends)
    try:
        deleted = _owned(store.get(key.key_id, voiceprint_id), key.key_hash) and store.delete(key.key_id, voiceprint_id)
    except BackendError as exc:
        raise service_unavailable() from exc
    if not deleted:
        raise _not_found(field=None)
    logger.info("voiceprint deleted", extra={"voiceprint_id": voiceprint_id})
    return {"voiceprint_id": voiceprint_id, "deleted": True}


def delete_all(backends: Backends, key: ApiKey) -> int:
    """Remove every voiceprint of a key (the key is being revoked); returns how many."""
    if backends.voiceprints is None:
        return 0
    items = _key_items(backends.voiceprints, key.key_id, key.key_hash)
    for item in items:
        backends.voiceprints.delete(key.key_id, item["voiceprint_id"])
    return len(items)


def check_exist(runtime: Runtime, key: ApiKey, options: Mapping[str, Any]) -> None:
    """At submit time: every voiceprint id the request names is this key's (404 otherwise)."""
    ids = options.get("voiceprints") or ()
    if not options.get("identify"):
        return
    store = _store(runtime.backends)
    try:
        if not all(_owned(store.get(key.key_id, voiceprint_id), key.key_hash) for voiceprint_id in ids):
            raise _not_found()
    except BackendError as exc:
        raise service_unavailable() from exc


def load(backends: Backends, key_id: str, key_hash: str, options: Mapping[str, Any]) -> list[Voiceprint]:
    """The voiceprints a diarization compares with: the named ones, or all of the key's. Raises BackendError.

    A named voiceprint deleted since the request was accepted is simply not used."""
    if not options.get("identify") or backends.voiceprints is None:
        return []
    ids: Sequence[str] = options.get("voiceprints") or ()
    if ids:
        items = [backends.voiceprints.get(key_id, voiceprint_id) for voiceprint_id in ids]
    else:
        items = sorted(_key_items(backends.voiceprints, key_id, key_hash), key=lambda i: i["voiceprint_id"])
    return [Voiceprint(item["name"], tuple(np.frombuffer(base64.b64decode(item["embedding"]), "<f4").tolist()),
                       item["seconds"]) for item in items if _owned(item, key_hash)]
