import base64
import json

import pytest

from diarizer_service.errors import ApiError
from diarizer_service.settings import MAX_REQUEST_BODY_BYTES
from diarizer_service.validation import (
    engine_options,
    parse_job_request,
    parse_json_body,
    parse_speaker_options,
    validate_request_id,
)

AUDIO = base64.b64encode(b"RIFF....WAVEfmt ").decode()
HOOK = "http://127.0.0.1:9/hook"


def parse(body, query=None, *, require_webhook=True):
    query = {"webhook": HOOK} if query is None else query
    return parse_job_request(body, query, require_webhook=require_webhook, allow_local_webhooks=True,
                             new_request_id=lambda: "generated-id")


def error_of(fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fn(*args, **kwargs)
    return caught.value


def test_official_client_body_is_accepted():
    request = parse({"content": AUDIO, "sampleRate": "8000", "encoding": "FLAC", "languageCode": "en-US",
                     "speakers": 2, "audioType": "default", "vad": False, "unknownExtra": {"x": 1}},
                    {"webhook": HOOK, "request_id": "r-1"})
    assert request.request_id == "r-1" and request.webhook == HOOK
    assert request.audio == b"RIFF....WAVEfmt " and request.sample_rate == 8000.0
    assert request.options.speakers == 2 and request.options.merge_adjacent is False
    assert request.encoding_hint == "FLAC" and request.audio_type == "default" and request.language_code == "en-US"


def test_defaults_and_generated_request_id():
    request = parse({"content": AUDIO})
    assert request.request_id == "generated-id"
    assert request.options.to_dict() == {"speakers": -1, "min_speakers": None, "max_speakers": None,
                                         "merge_adjacent": True}
    options = engine_options(request.options.to_dict())
    assert (options.speakers, options.merge_adjacent) == (-1, True)


@pytest.mark.parametrize("raw,status", [
    (None, 400), ("", 400), ("not json", 400), ("[1, 2]", 400), ('"str"', 400), ("{\"a\": ", 400),
    ("[" * 100_000 + "]" * 100_000, 400),  # nesting bomb: refused by the bracket count, before parsing
    ('{"a": ' + "[" * 300 + "]" * 300 + "}", 400),
    ("x" * (MAX_REQUEST_BODY_BYTES + 1), 413),
])
def test_bad_bodies(raw, status):
    error = error_of(parse_json_body, raw)
    assert error.status == status
    assert error.code == ("body_too_large" if status == 413 else "invalid_json")


def test_base64_encoded_event_body():
    raw = base64.b64encode(json.dumps({"content": AUDIO}).encode()).decode()
    assert parse_json_body(raw, is_base64=True) == {"content": AUDIO}


@pytest.mark.parametrize("body,field,code", [
    ({}, "content", "missing_field"),
    ({"content": 12}, "content", "invalid_field"),
    ({"content": "not base64!!"}, "content", "invalid_base64"),
    ({"content": ""}, "content", "empty_audio"),
    ({"content": AUDIO, "upload_id": "0" * 32}, "upload_id", "invalid_field"),
    ({"upload_id": "../etc/passwd"}, "upload_id", "invalid_field"),
    ({"content": AUDIO, "speakers": 0}, "speakers", "invalid_field"),
    ({"content": AUDIO, "speakers": -2}, "speakers", "invalid_field"),
    ({"content": AUDIO, "speakers": 101}, "speakers", "invalid_field"),
    ({"content": AUDIO, "speakers": "two"}, "speakers", "invalid_field"),
    ({"content": AUDIO, "speakers": True}, "speakers", "invalid_field"),
    ({"content": AUDIO, "speakers": 2.5}, "speakers", "invalid_field"),
    ({"content": AUDIO, "min_speakers": 0}, "min_speakers", "invalid_field"),
    ({"content": AUDIO, "min_speakers": 4, "max_speakers": 2}, "min_speakers", "invalid_field"),
    ({"content": AUDIO, "max_speakers": "x"}, "max_speakers", "invalid_field"),
    ({"content": AUDIO, "sampleRate": "fast"}, "sampleRate", "invalid_field"),
    ({"content": AUDIO, "sampleRate": -8000}, "sampleRate", "invalid_field"),
    ({"content": AUDIO, "sampleRate": [8000]}, "sampleRate", "invalid_field"),
    ({"content": AUDIO, "vad": "yes"}, "vad", "invalid_field"),
    ({"content": AUDIO, "encoding": 3}, "encoding", "invalid_field"),
    ({"content": AUDIO, "languageCode": "x" * 65}, "languageCode", "invalid_field"),
    ({"content": AUDIO, "audioType": {"a": 1}}, "audioType", "invalid_field"),
])
def test_field_errors_name_the_field(body, field, code):
    error = error_of(parse, body)
    assert (error.status, error.field, error.code) == (400, field, code)
    assert error.to_body()["error"]["field"] == field


def test_numeric_strings_and_wrapped_base64_are_accepted():
    wrapped = "\n".join(AUDIO[i:i + 8] for i in range(0, len(AUDIO), 8))
    request = parse({"content": wrapped, "speakers": "3", "min_speakers": 2.0, "sampleRate": 16000.0})
    assert request.audio == b"RIFF....WAVEfmt " and request.options.speakers == 3 and request.options.min_speakers == 2


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode,
                                    lambda data: base64.b64encode(data).rstrip(b"="),
                                    lambda data: base64.urlsafe_b64encode(data).rstrip(b"=")])
def test_base64_variants_clients_send_decode_to_the_same_audio(encode):
    """Standard, URL-safe (browsers' base64url) and unpadded base64 are all the same bytes."""
    audio = bytes(range(256)) * 3 + b"\xfb\xff"  # every byte value: '+' '/' (or '-' '_') and padding all occur
    assert parse({"content": encode(audio).decode()}).audio == audio


@pytest.mark.parametrize("content", ["not base64!!", "ab-c+d==", "abcde"])
def test_what_no_base64_variant_reads_is_still_refused(content):
    assert error_of(parse, {"content": content}).code == "invalid_base64"


def test_webhook_is_required_for_async_only():
    assert error_of(parse, {"content": AUDIO}, {}).field == "webhook"
    assert parse({"content": AUDIO}, {}, require_webhook=False).webhook is None


def test_poll_true_lets_an_async_request_go_without_a_webhook():
    assert parse({"content": AUDIO}, {"poll": "true"}).webhook is None
    assert error_of(parse, {"content": AUDIO}, {"poll": "false"}).field == "webhook"


def test_exclusive_reaches_the_engine_and_is_a_bool():
    request = parse({"content": AUDIO, "exclusive": True}, {"poll": "true"})
    assert request.options.to_dict()["exclusive"] is True
    assert engine_options(request.options.to_dict()).exclusive is True
    assert "exclusive" not in parse({"content": AUDIO}, {"poll": "true"}).options.to_dict()
    assert error_of(parse, {"content": AUDIO, "exclusive": "yes"}, {"poll": "true"}).field == "exclusive"


def test_unsafe_webhook_is_400():
    error = error_of(parse_job_request, {"content": AUDIO}, {"webhook": "http://169.254.169.254/latest"},
                     require_webhook=True, allow_local_webhooks=False, new_request_id=str)
    assert (error.status, error.code, error.field) == (400, "invalid_webhook", "webhook")


@pytest.mark.parametrize("value", ["a" * 129, "../x", "a/b", "..", ".", "a b", "ü", "", "x\n", None, 1.5, True])
def test_bad_request_ids(value):
    error = error_of(validate_request_id, value)
    assert error.field == "request_id"


@pytest.mark.parametrize("value,expected", [("r-1", "r-1"), ("a.b_c:d-E9", "a.b_c:d-E9"), (42, "42"),
                                            ("a" * 128, "a" * 128), ("..a", "..a")])
def test_good_request_ids(value, expected):
    assert validate_request_id(value) == expected


def test_request_id_from_query_wins_over_body():
    request = parse({"content": AUDIO, "request_id": "from-body"}, {"webhook": HOOK, "request_id": "from-query"})
    assert request.request_id == "from-query"
    assert parse({"content": AUDIO, "request_id": "from-body"}).request_id == "from-body"


def test_speaker_options_from_strings():
    assert parse_speaker_options({"speakers": "-1", "max_speakers": "4"}).max_speakers == 4


def test_a_count_out_of_range_says_so_even_as_a_long_numeric_string():
    """S3 metadata is always text: "9999999" was told "must be an integer" (found by fuzzing the batch path)."""
    for value in ("9999999", 9999999, "  0 "):
        with pytest.raises(ApiError, match="between 1 and"):
            parse_speaker_options({"max_speakers": value})
    with pytest.raises(ApiError, match="must be an integer"):
        parse_speaker_options({"max_speakers": "9" * 5000})  # never given to int()


def test_the_nesting_rule_counts_depth_not_brackets():
    """Documented: nested deeper than 256 is refused. Before, every bracket counted: a flat body with 300 `{}`
    in an unknown field was refused as "too deeply nested"."""
    import json as json_module

    from diarizer_service.validation import parse_json_body

    flat = {"content": "UklGRg==", "extra": [{} for _ in range(300)], "note": "[" * 1000}
    assert parse_json_body(json_module.dumps(flat))["extra"] == [{}] * 300
    assert parse_json_body(b'{"a": ' + b"[" * 255 + b"]" * 255 + b"}")["a"]
    for body in (b'{"a": ' + b"[" * 257 + b"]" * 257 + b"}", b'{"a": "\\\\", "b": ' + b"[" * 300 + b"]" * 300 + b"}",
                 b'{"a": [' + b"[]," * 20_000 + b"[]]}"):
        with pytest.raises(ApiError) as caught:
            parse_json_body(body)
        assert (caught.value.status, caught.value.code) == (400, "invalid_json")


@pytest.mark.parametrize("value", [16000, 8000.5, "16000", " 44100 ", "22050.0", 0, -5, 2_000_000, "0x10", "1e4",
                                   "+16000", "16_000", "1.2.3", "...", "", "48000 / 24000", True, None])
def test_sample_rate_is_accepted_exactly_when_the_openapi_schema_allows_it(value):
    """The published schema and the validation must agree on the hint (the schema allowed '1.2.3' and 0;
    the code let '1e4' and '+16000' through)."""
    import json
    from pathlib import Path

    import jsonschema

    document = json.loads((Path(__file__).resolve().parents[3] / "src/diarizer_service/openapi.json").read_text())
    schema = document["components"]["schemas"]["DiarizeAudio"]["properties"]["sampleRate"]
    body = {"content": AUDIO} if value is None else {"content": AUDIO, "sampleRate": value}
    try:
        parse(body)
        accepted = True
    except ApiError:
        accepted = False
    allowed = value is None or jsonschema.Draft4Validator(schema).is_valid(value)  # 3.0's exclusiveMinimum: Draft 4
    assert accepted == allowed
