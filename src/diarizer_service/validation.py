"""Turn an HTTP request (JSON body + query) into a typed JobRequest, or raise ApiError naming the field.

Unknown body fields are ignored (clients send extras); known fields with a wrong type are 400.
`audioType`, `languageCode`, `encoding` and `sampleRate` are accepted hints: the format is detected from
the bytes, never trusted from `encoding`.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from diarizer.types import DiarizationOptions, Voiceprint

from diarizer_service.errors import ApiError, invalid_field, missing_field
from diarizer_service.settings import BODY_TOO_LARGE_MESSAGE, MAX_REQUEST_BODY_BYTES
from diarizer_service.ssrf import UnsafeUrlError, resolve_safe_target

MAX_SPEAKERS = 100
MAX_DEPTH = 256  # nesting: a real request has 1 or 2 levels; a nesting bomb has thousands
MAX_BRACKETS = 10_000  # in all, outside strings: bounds the work of the depth scan and of json.loads
_BRACKET = re.compile(rb"[\[\]{}]")
MAX_HINT_LENGTH = 64
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")


VOICEPRINT_ID_RE = re.compile(r"vp_[0-9a-f]{16}")
MAX_VOICEPRINTS_PER_REQUEST = 100


@dataclass(frozen=True)
class SpeakerOptions:
    speakers: int = -1
    min_speakers: int | None = None
    max_speakers: int | None = None
    merge_adjacent: bool = True
    exclusive: bool = False  # one speaker at a time (not in the DeepAffects contract; the page offers it)
    identify: bool = False  # name speakers after the key's voiceprints (all of them, or `voiceprints`)
    voiceprints: tuple[str, ...] = ()  # voiceprint ids (not the prints: those stay in their table)
    confidence: bool = False

    def to_dict(self) -> dict:
        values = dict(self.__dict__)
        # Records and tests of jobs without these options stay exactly as they were.
        for name in ("exclusive", "identify", "confidence", "voiceprints"):
            if not values[name]:
                del values[name]
        if self.voiceprints:
            values["voiceprints"] = list(self.voiceprints)
        return values


@dataclass(frozen=True)
class JobRequest:
    request_id: str
    options: SpeakerOptions
    webhook: str | None = None
    audio: bytes | None = None  # inline `content`, decoded
    upload_id: str | None = None  # or a previous upload
    encoding_hint: str | None = None
    sample_rate: float | None = None
    language_code: str | None = None
    audio_type: str | None = None


def parse_json_body(raw: str | bytes | None, is_base64: bool = False) -> dict:
    """Cheap checks first (size, bracket count), then json.loads; the result must be an object."""
    if raw is None or raw == "" or raw == b"":
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    if len(raw) > MAX_REQUEST_BODY_BYTES * (4 / 3 if is_base64 else 1):
        raise ApiError(413, "body_too_large", BODY_TOO_LARGE_MESSAGE)
    # surrogatepass: a lone surrogate (an event's JSON may escape one) becomes bytes json.loads refuses, a 400
    data = raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw
    if is_base64:
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, "invalid_json", "The request body is not valid base64.") from exc
    if _too_complex(data):
        raise ApiError(400, "invalid_json", "The request body is too deeply nested or too complex.")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return body


def _too_complex(data: bytes) -> bool:
    """Nested deeper than MAX_DEPTH, or more than MAX_BRACKETS brackets, outside strings (a flat body with
    hundreds of `{}` in an unknown field is fine; brackets inside strings are text). Byte-level operations
    only (split, count, replace run in C): a 6 MB body is scanned in milliseconds."""
    if data.count(b"{") + data.count(b"[") <= MAX_DEPTH:  # cannot be deeper: skip the scan
        return False
    # Escapes first (`\\` before `\"`), so that every remaining quote opens or closes a string.
    unescaped = data.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    structure = b"".join(unescaped.split(b'"')[::2])  # the parts outside strings
    opening = structure.count(b"{") + structure.count(b"[")
    if opening > MAX_BRACKETS or structure.count(b"}") + structure.count(b"]") > MAX_BRACKETS:
        return True
    depth = 0
    for bracket in _BRACKET.findall(structure):
        depth += 1 if bracket in (b"{", b"[") else -1
        if depth > MAX_DEPTH:
            return True
    return False


def _int_field(name: str, value: Any) -> int:
    """An integer, an integral float, or a numeric string ("2")."""
    if isinstance(value, bool):
        raise invalid_field(name, f"`{name}` must be an integer.")
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}\s*", value):  # int() of thousands of digits is slow
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise invalid_field(name, f"`{name}` must be an integer.")


def _optional_count(values: Mapping[str, Any], name: str) -> int | None:
    if values.get(name) is None:
        return None
    count = _int_field(name, values[name])
    if not 1 <= count <= MAX_SPEAKERS:
        raise invalid_field(name, f"`{name}` must be between 1 and {MAX_SPEAKERS}.")
    return count


def parse_speaker_options(values: Mapping[str, Any]) -> SpeakerOptions:
    """`speakers` (-1 or 1..100, default -1), optional `min_speakers`/`max_speakers`, `vad` (bool, default true)."""
    speakers = -1 if values.get("speakers") is None else _int_field("speakers", values["speakers"])
    if speakers != -1 and not 1 <= speakers <= MAX_SPEAKERS:
        raise invalid_field("speakers", f"`speakers` must be -1 (unknown) or between 1 and {MAX_SPEAKERS}.")
    min_speakers = _optional_count(values, "min_speakers")
    max_speakers = _optional_count(values, "max_speakers")
    if min_speakers and max_speakers and min_speakers > max_speakers:
        raise invalid_field("min_speakers", "`min_speakers` is larger than `max_speakers`.")
    vad = values.get("vad", True)
    if vad is None:
        vad = True
    if not isinstance(vad, bool):
        raise invalid_field("vad", "`vad` must be true or false.")
    exclusive = values.get("exclusive") or False
    if not isinstance(exclusive, bool):
        raise invalid_field("exclusive", "`exclusive` must be true or false.")
    return SpeakerOptions(speakers, min_speakers, max_speakers, vad, exclusive, *parse_identification(values))


def _flag(values: Mapping[str, Any], name: str) -> bool:
    value = values.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid_field(name, f"`{name}` must be true or false.")
    return value


def parse_identification(values: Mapping[str, Any]) -> tuple[bool, tuple[str, ...], bool]:
    """`identify` (bool), `voiceprints` (1-100 voiceprint ids; implies identify), `confidence` (bool)."""
    identify, confidence = _flag(values, "identify"), _flag(values, "confidence")
    ids = values.get("voiceprints")
    if ids is None:
        return identify, (), confidence
    if (not isinstance(ids, list) or not 1 <= len(ids) <= MAX_VOICEPRINTS_PER_REQUEST
            or not all(isinstance(i, str) and VOICEPRINT_ID_RE.fullmatch(i) for i in ids)):
        raise invalid_field("voiceprints", f"`voiceprints` must be a list of 1-{MAX_VOICEPRINTS_PER_REQUEST} "
                                           "voiceprint ids as returned by POST /audio/generic/api/v2/voiceprints.")
    if values.get("identify") is False:
        raise invalid_field("identify", "`identify` is false but `voiceprints` asks for identification.")
    return True, tuple(dict.fromkeys(ids)), confidence


def engine_options(options: Mapping[str, Any], voiceprints: Sequence[Voiceprint] = ()) -> DiarizationOptions:
    """Stored job options (SpeakerOptions.to_dict()) and the voiceprints they name -> the engine's options."""
    return DiarizationOptions(speakers=options.get("speakers", -1), min_speakers=options.get("min_speakers"),
                              max_speakers=options.get("max_speakers"),
                              merge_adjacent=options.get("merge_adjacent", True),
                              exclusive=options.get("exclusive", False),
                              identify=bool(options.get("identify")), voiceprints=tuple(voiceprints),
                              confidence=bool(options.get("confidence")))


def validate_request_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):  # the contract types it as Number
        value = str(value)
    if not isinstance(value, str) or not REQUEST_ID_RE.fullmatch(value) or set(value) == {"."}:
        raise invalid_field("request_id", "`request_id` must be 1-128 characters from A-Z a-z 0-9 . _ : - "
                                          "(and not only dots).")
    return value


def _hint(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_HINT_LENGTH:
        raise invalid_field(name, f"`{name}` must be a string of at most {MAX_HINT_LENGTH} characters.")
    return value


SAMPLE_RATE_TEXT = re.compile(r"\s*[0-9]+(\.[0-9]+)?\s*")  # what openapi.json's pattern allows, no more


def _sample_rate(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = float(value) if SAMPLE_RATE_TEXT.fullmatch(value) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1_000_000:
        raise invalid_field("sampleRate", "`sampleRate` must be a positive number (or a numeric string).")
    return float(value)


def decode_content(value: Any) -> bytes:
    if not isinstance(value, str):
        raise invalid_field("content", "`content` must be a base64 string.")
    if value.startswith("data:") and "," in value[:200]:  # tolerate a data: URL
        value = value.split(",", 1)[1]
    if any(ch in value for ch in "\r\n \t"):
        value = "".join(value.split())  # line-wrapped base64 (MIME style)
    if ("-" in value or "_" in value) and not ("+" in value or "/" in value):
        value = value.replace("-", "+").replace("_", "/")  # the URL-safe alphabet (browsers' base64url)
    value += "=" * (-len(value) % 4)  # unpadded (JWT style); a length of 4n+1 stays invalid
    try:
        audio = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", "`content` is not valid base64.", field="content") from exc
    if not audio:
        raise ApiError(400, "empty_audio", "`content` decodes to no bytes.", field="content")
    return audio


def _first(query: Mapping[str, str], body: Mapping[str, Any], name: str) -> Any:
    """Query parameters first (the contract puts webhook and request_id there), then the body."""
    if query.get(name) not in (None, ""):
        return query[name]
    return body.get(name)


def validate_webhook(url: Any, *, allow_local: bool) -> str:
    if not isinstance(url, str):
        raise invalid_field("webhook", "`webhook` must be a URL string.")
    try:
        target = resolve_safe_target(url, allow_local=allow_local)
    except UnsafeUrlError as exc:
        raise ApiError(400, "invalid_webhook", f"`webhook` refused: {exc}.", field="webhook") from exc
    # Stored as the ASCII URL it is sent to (IDNA host, UTF-8 percent-encoding); ASCII URLs as they came.
    return url if url.isascii() else target.url


def parse_job_request(body: Mapping[str, Any], query: Mapping[str, str] | None, *, require_webhook: bool,
                      allow_local_webhooks: bool, new_request_id: Callable[[], str]) -> JobRequest:
    query = query or {}
    request_id = _first(query, body, "request_id")
    request_id = new_request_id() if request_id in (None, "") else validate_request_id(request_id)
    webhook = _first(query, body, "webhook")
    if webhook in (None, ""):
        if require_webhook and str(_first(query, body, "poll")).lower() != "true":
            raise missing_field("webhook", "`webhook` is required for async requests (query parameter), unless "
                                           "`poll=true`: then read the result from the status route.")
        webhook = None
    else:
        webhook = validate_webhook(webhook, allow_local=allow_local_webhooks)

    upload_id = body.get("upload_id")
    if body.get("content") is not None and upload_id is not None:
        raise invalid_field("upload_id", "Send either `content` or `upload_id`, not both.")
    audio = None
    if upload_id is not None:
        if not isinstance(upload_id, str) or not UPLOAD_ID_RE.fullmatch(upload_id):
            raise invalid_field("upload_id", "`upload_id` must be the id returned by POST /audio/generic/api/v2/uploads.")
    elif body.get("content") is None:
        raise missing_field("content", "`content` (base64 audio) is required, or `upload_id` for uploaded files.")
    else:
        audio = decode_content(body["content"])

    return JobRequest(
        request_id=request_id,
        options=parse_speaker_options(body),
        webhook=webhook,
        audio=audio,
        upload_id=upload_id,
        encoding_hint=_hint(body, "encoding"),
        sample_rate=_sample_rate(body.get("sampleRate")),
        language_code=_hint(body, "languageCode"),
        audio_type=_hint(body, "audioType"),
    )
