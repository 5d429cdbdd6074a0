"""The API and worker handlers on moto with a fake engine: contract edges, privacy, failures, logs."""
import base64
import json
import io
import socket

import pytest

from diarizer_service.auth import create_key, revoke_key

ASYNC_V2 = "/audio/generic/api/v2/async/diarize"
ASYNC_V1 = "/audio/generic/api/v1/async/diarize"


def audio_body(audio: bytes, **extra) -> dict:
    return {"content": base64.b64encode(audio).decode(), **extra}


@pytest.fixture
def submit(stack, api_handler, webhook_receiver, wav_bytes):
    def submit(request_id="r-1", route=ASYNC_V2, body=None, **query):
        query = {"webhook": webhook_receiver.url, "request_id": request_id, **query}
        return stack.call_api("POST", route, query=query, body=body or audio_body(wav_bytes(1.0)), handler=api_handler)
    return submit


def test_v1_and_v2_async_routes_queue_jobs(stack, submit):
    assert submit("a") == (200, {"request_id": "a", "api": "diarize"})
    assert submit("b", route=ASYNC_V1) == (200, {"request_id": "b", "api": "diarize"})
    assert len(stack.receive_sqs_event()["Records"]) == 2


def test_repeated_request_id_returns_the_same_reply_and_queues_once(stack, submit):
    assert submit("same") == submit("same") == (200, {"request_id": "same", "api": "diarize"})
    assert len(stack.receive_sqs_event()["Records"]) == 1


@pytest.mark.parametrize("case,status,code,field", [
    ("no key", 401, "missing_api_key", None),
    ("unknown key", 403, "invalid_api_key", None),
    ("not json", 400, "invalid_json", None),
    ("json bomb", 400, "invalid_json", None),
    ("no content", 400, "missing_field", "content"),
    ("bad base64", 400, "invalid_base64", "content"),
    ("empty content", 400, "empty_audio", "content"),
    ("not audio", 400, "unsupported_audio", "content"),
    ("too long", 413, "audio_too_long", "content"),
    ("bad sampleRate", 400, "invalid_field", "sampleRate"),
    ("bad speakers", 400, "invalid_field", "speakers"),
    ("min over max", 400, "invalid_field", "min_speakers"),
    ("bad vad", 400, "invalid_field", "vad"),
    ("no webhook", 400, "missing_field", "webhook"),
    ("bad request_id", 400, "invalid_field", "request_id"),
    ("long request_id", 400, "invalid_field", "request_id"),
])
def test_validation_errors_are_json_and_name_the_field(stack, api_handler, webhook_receiver, wav_bytes, monkeypatch,
                                                      case, status, code, field):
    monkeypatch.setenv("DIARIZER_MAX_AUDIO_SECONDS", "1")
    from diarizer_service.settings import get_settings
    get_settings.cache_clear()
    stack.runtime.settings = get_settings()
    query = {"webhook": webhook_receiver.url, "request_id": "r-1"}
    body: object = audio_body(wav_bytes(0.5))
    api_key = "default"
    if case == "no key":
        api_key = None
    elif case == "unknown key":
        api_key = "dk_00000000_" + "x" * 43
    elif case == "not json":
        body = "content=abc"
    elif case == "json bomb":
        body = "[" * 50_000 + "]" * 50_000
    elif case == "no content":
        body = {"speakers": 2}
    elif case == "bad base64":
        body = {"content": "%%%not-base64%%%"}
    elif case == "empty content":
        body = {"content": ""}
    elif case == "not audio":
        body = audio_body(b"<html>definitely not audio</html>")
    elif case == "too long":
        body = audio_body(wav_bytes(2.0))
    elif case == "bad sampleRate":
        body["sampleRate"] = "fast"
    elif case == "bad speakers":
        body["speakers"] = 0
    elif case == "min over max":
        body.update(min_speakers=3, max_speakers=2)
    elif case == "bad vad":
        body["vad"] = "maybe"
    elif case == "no webhook":
        del query["webhook"]
    elif case == "bad request_id":
        query["request_id"] = "../../etc/passwd"
    elif case == "long request_id":
        query["request_id"] = "r" * 129
    answer_status, answer = stack.call_api("POST", ASYNC_V2, query=query, body=body, api_key=api_key, handler=api_handler)
    assert answer_status == status
    assert answer["error"]["code"] == code and answer["error"]["message"]
    assert answer["error"].get("field") == field
    assert stack.receive_sqs_event()["Records"] == []  # nothing queued for a refused request


@pytest.mark.parametrize("webhook", [
    "http://127.0.0.1:8080/hook", "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/hook", "https://[::1]/hook", "https://[::ffff:127.0.0.1]/hook",
    "https://hooks.internal.example/hook", "ftp://hooks.example.com/hook", "file:///etc/passwd",
    "http://hooks.example.com/hook",
])
def test_unsafe_webhooks_are_refused_in_deployed_mode(stack, api_handler, wav_bytes, monkeypatch, webhook):
    import dataclasses
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, allow_local_webhooks=False)
    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host.endswith(".example") or host.endswith("example.com"):
            address = "10.20.30.40" if "internal" in host else "93.184.215.14"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    status, answer = stack.call_api("POST", ASYNC_V2, query={"webhook": webhook}, body=audio_body(wav_bytes(0.5)),
                                    handler=api_handler)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, "invalid_webhook", "webhook")


def test_revoked_key_is_403(stack, submit):
    revoke_key(stack.runtime.backends.keys, stack.key.record.key_id)
    status, answer = submit()
    assert (status, answer["error"]["code"]) == (403, "invalid_api_key")


def test_header_key_and_api_key_query_parameter(stack, api_handler, webhook_receiver, wav_bytes):
    body = audio_body(wav_bytes(0.5))
    query = {"webhook": webhook_receiver.url}
    assert stack.call_api("POST", ASYNC_V2, query=query, body=body, api_key=None, handler=api_handler,
                          headers={"x-api-key": stack.key.api_key})[0] == 200
    assert stack.call_api("POST", ASYNC_V2, query={**query, "api_key": stack.key.api_key}, body=body, api_key=None,
                          handler=api_handler)[0] == 200


def test_status_route_through_the_lifecycle_and_privacy(stack, api_handler, worker_handler, submit, fake_engine):
    submit("job-7")
    status, job = stack.call_api("GET", f"{ASYNC_V2}/job-7", handler=api_handler)
    assert status == 200 and job["status"] == "queued" and job["api"] == "diarize"
    other = create_key(stack.runtime.backends.keys, "someone else")
    status, answer = stack.call_api("GET", f"{ASYNC_V2}/job-7", api_key=other.api_key, handler=api_handler)
    assert (status, answer["error"]["code"]) == (404, "job_not_found")
    assert stack.call_api("GET", f"{ASYNC_V2}/nope", handler=api_handler)[0] == 404
    stack.run_worker(worker_handler)
    status, job = stack.call_api("GET", f"{ASYNC_V2}/job-7", handler=api_handler)
    assert job["status"] == "done" and job["response"] == fake_engine.results[-1]


def test_a_request_id_the_client_percent_encoded_in_the_path_finds_its_job(stack, api_handler, submit):
    """REST APIs pass the path on still percent-encoded (unlike HTTP APIs); clients encode ':' and other characters
    a request_id may hold (encodeURIComponent, the official client's path quoting). Found by fuzzing the events."""
    assert submit("meeting:2026-01-01_10h")[0] == 200
    for path in ("meeting:2026-01-01_10h", "meeting%3A2026-01-01_10h", "meeting%3a2026%2D01-01%5F10h"):
        status, job = stack.call_api("GET", f"{ASYNC_V2}/{path}", handler=api_handler)
        assert (status, job.get("request_id"), job.get("status")) == (200, "meeting:2026-01-01_10h", "queued"), path
    # decoded once, as the client encoded it once: '%' itself is not a request_id character
    assert stack.call_api("GET", f"{ASYNC_V2}/meeting%253A2026-01-01_10h", handler=api_handler)[0] == 404


def test_duplicate_sqs_delivery_sends_one_webhook(stack, worker_handler, submit, webhook_receiver, fake_engine):
    submit("dup")
    event = stack.receive_sqs_event()
    duplicate = {"Records": event["Records"] + [{**event["Records"][0], "messageId": "redelivered-copy"}]}
    assert stack.run_worker(worker_handler, duplicate) == {"batchItemFailures": []}
    stack.run_worker(worker_handler, event)  # and once more, later
    assert fake_engine.calls == 1 and len(webhook_receiver.received) == 1


def test_webhook_down_leaves_job_done_and_result_retrievable(stack, api_handler, worker_handler, submit,
                                                              webhook_receiver, no_webhook_backoff, fake_engine):
    webhook_receiver.statuses = [502, 502, 502]
    submit("down")
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}  # not retried by SQS
    assert len(webhook_receiver.received) == 3
    status, job = stack.call_api("GET", f"{ASYNC_V2}/down", handler=api_handler)
    assert job["status"] == "done" and job["response"] == fake_engine.results[-1]
    assert job["webhook"] == {"state": "pending", "delivered": False, "attempts": 3, "status": 502,
                              "error": "HTTP 502", "rounds": 1}


def test_transient_failure_is_reported_for_that_record_only(stack, worker_handler, submit, fake_engine):
    submit("one")
    submit("two")
    event = stack.receive_sqs_event()
    calls = iter([None, RuntimeError("out of memory")])

    real = fake_engine.diarize

    def flaky(audio, options, *, max_seconds):
        error = next(calls)
        if error:
            raise error
        return real(audio, options, max_seconds=max_seconds)

    fake_engine.diarize = flaky
    answer = stack.run_worker(worker_handler, event)
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [event["Records"][1]["messageId"]]


def test_last_receive_marks_the_job_failed_before_the_dlq(stack, api_handler, worker_handler, submit, fake_engine,
                                                          webhook_receiver):
    submit("doomed")
    event = stack.receive_sqs_event()
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "3"
    fake_engine.fail_with = RuntimeError("engine crashed")
    answer = stack.run_worker(worker_handler, event)
    assert len(answer["batchItemFailures"]) == 1
    status, job = stack.call_api("GET", f"{ASYNC_V2}/doomed", handler=api_handler)
    assert job["status"] == "failed" and job["error"]["code"] == "processing_failed"
    assert webhook_receiver.received[0].json() == {"request_id": "doomed", "error": job["error"]}


def test_queue_outage_is_503_and_leaves_no_job(stack, submit):
    stack.sqs.delete_queue(QueueUrl=stack.queue_url)
    status, answer = submit("lost")
    assert status == 503 and answer["error"] == {"code": "service_unavailable", "retryable": True,
                                                 "message": answer["error"]["message"]}
    assert stack.job_item("lost") is None
    listed = stack.s3.list_objects_v2(Bucket=stack.runtime.settings.bucket, Prefix="jobs/")
    assert listed.get("KeyCount", 0) == 0


def test_upload_flow_for_large_files(stack, api_handler, worker_handler, webhook_receiver, wav_bytes, fake_engine):
    status, upload = stack.call_api("POST", "/audio/generic/api/v2/uploads", handler=api_handler)
    assert status == 200 and upload["method"] == "PUT" and len(upload["upload_id"]) == 32
    object_key = f"uploads/{stack.key.record.key_id}/{upload['upload_id']}"
    assert object_key in upload["upload_url"] and "Signature" in upload["upload_url"]
    body = {"upload_id": upload["upload_id"]}
    status, answer = stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url, "request_id": "big"},
                                    body=body, handler=api_handler)
    assert (status, answer["error"]["code"]) == (400, "upload_not_found")
    stack.s3.put_object(Bucket=stack.runtime.settings.bucket, Key=object_key, Body=wav_bytes(3.0))  # the client's PUT
    status, answer = stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url, "request_id": "big"},
                                    body=body, handler=api_handler)
    assert status == 200 and stack.job_item("big")["audio_key"] == object_key
    stack.run_worker(worker_handler)
    assert webhook_receiver.received[0].json()["response"] == fake_engine.results[-1]
    assert fake_engine.results[-1]["segments"][-1]["end"] == pytest.approx(3.0)  # the uploaded 3 s, not other audio
    other = create_key(stack.runtime.backends.keys, "other")  # another key cannot use this upload
    status, answer = stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url}, body=body,
                                    api_key=other.api_key, handler=api_handler)
    assert answer["error"]["code"] == "upload_not_found"


def test_sync_refuses_long_audio_with_413(stack, api_handler, wav_bytes, monkeypatch, fake_engine):
    import dataclasses
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, sync_max_seconds=1.0)
    status, answer = stack.call_api("POST", "/audio/generic/api/v2/sync/diarize", body=audio_body(wav_bytes(2.0)),
                                    handler=api_handler)
    assert status == 413 and answer["error"]["code"] == "audio_too_long_for_sync"
    assert ASYNC_V2 in answer["error"]["message"] and fake_engine.calls == 0


def test_unknown_route_is_json_404(stack, api_handler):
    status, answer = stack.call_api("GET", "/audio/generic/api/v3/whatever", handler=api_handler)
    assert (status, answer["error"]["code"]) == (404, "route_not_found")


def test_logs_never_contain_the_api_key_or_secret(stack, api_handler, worker_handler, submit, webhook_receiver,
                                                  capsys, caplog, monkeypatch):
    from diarizer_service.observability import logger
    log_stream = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", log_stream)  # the handler kept the stdout of import time
    submit("logged")
    submit("logged")
    submit("bad/id")
    stack.call_api("GET", f"{ASYNC_V2}/logged", handler=api_handler)
    stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url}, body="not json", handler=api_handler)
    stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url}, api_key=stack.key.api_key + "x",
                   body={}, handler=api_handler)
    stack.run_worker(worker_handler)
    captured = capsys.readouterr()
    output = log_stream.getvalue() + captured.out + captured.err + caplog.text
    assert stack.key.record.key_id in output and '"request_id":"logged"' in output  # logging really happened
    assert stack.key.api_key not in output and stack.key.api_key[-20:] not in output
    assert stack.key.record.webhook_secret not in output


def test_the_engine_is_created_once_per_container(stack, worker_handler, submit, fake_engine):
    created = []
    stack.runtime.engine_factory = lambda: created.append(1) or fake_engine
    submit("first")
    stack.run_worker(worker_handler)
    submit("second")
    stack.run_worker(worker_handler)
    assert fake_engine.calls == 2 and len(created) == 1


def test_an_upload_replaced_by_an_oversized_file_after_submit_is_refused_unread(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, monkeypatch):
    """The presigned URL stays valid for an hour: the client may PUT a 5 GB file after the submit's size check.
    The worker must refuse it from the object's size, not read it into memory (three out-of-memory deaths)."""
    import dataclasses
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, max_upload_bytes=50_000)
    status, upload = stack.call_api("POST", "/audio/generic/api/v2/uploads", handler=api_handler)
    object_key = f"uploads/{stack.key.record.key_id}/{upload['upload_id']}"
    bucket = stack.runtime.settings.bucket
    stack.s3.put_object(Bucket=bucket, Key=object_key, Body=wav_bytes(1.0))  # 32 kB: within the limit
    status, answer = stack.call_api("POST", ASYNC_V2, query={"webhook": webhook_receiver.url, "request_id": "swap"},
                                    body={"upload_id": upload["upload_id"]}, handler=api_handler)
    assert status == 200
    stack.s3.put_object(Bucket=bucket, Key=object_key, Body=wav_bytes(3.0))  # 96 kB: the URL used again
    reads = []
    body_class = type(stack.runtime.backends.blobs._s3.get_object(Bucket=bucket, Key=object_key)["Body"])
    real_read = body_class.read
    monkeypatch.setattr(body_class, "read", lambda self, amt=None: reads.append(amt) or real_read(self, amt))
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}  # permanent: not retried
    assert None not in reads  # never an unbounded read
    status, job = stack.call_api("GET", f"{ASYNC_V2}/swap", handler=api_handler)
    assert job["status"] == "failed" and job["error"]["code"] == "audio_too_large"
    assert webhook_receiver.received[0].json()["error"]["code"] == "audio_too_large"


@pytest.mark.parametrize("where", ["body", "query key", "header key", "enrolled name"])
def test_a_lone_surrogate_anywhere_is_a_4xx_not_a_500(stack, api_handler, where):
    """An event's JSON may escape a lone UTF-16 surrogate; encoding it for hashing or parsing raised
    UnicodeEncodeError, a 500 (found by fuzzing the events)."""
    voiceprints_route = "/audio/generic/api/v2/voiceprints"
    route, query, headers, body = {
        "body": (ASYNC_V2, {"poll": "true"}, None, '{"content": "\ud800"}'),
        "query key": (ASYNC_V2, {"apikey": stack.key.api_key + "\ud800"}, None, "{}"),
        "header key": (voiceprints_route, {}, {"x-api-key": "dk_\udcff"}, None),
        "enrolled name": (voiceprints_route, {}, None, '{"name": "\udcff", "content": ""}'),
    }[where]
    method = "GET" if body is None else "POST"
    api_key = None if "apikey" in query or headers else "default"
    status, answer = stack.call_api(method, route, query=query, headers=headers, body=body, api_key=api_key,
                                    handler=api_handler)
    assert 400 <= status < 500 and answer["error"]["code"] in ("invalid_json", "invalid_base64", "invalid_field",
                                                                "invalid_api_key"), (status, answer)


def test_routes_answer_behind_a_custom_domain_base_path(stack, api_handler, submit):
    """https://api.example.com/diarizer mapped to the stage: API Gateway's `path` carries /diarizer, its `resource`
    (the route it matched) does not. Every route answered 404 there (found by fuzzing the events)."""
    assert submit("behind-a-base-path")[0] == 200

    def call(method: str, route: str, resource: str, path_parameters: dict | None = None, base: str = "/diarizer"):
        event = stack.make_event(method, base + route, query={"apikey": stack.key.api_key},
                                 path_parameters=path_parameters)
        event["resource"] = resource
        return api_handler.lambda_handler(event, stack.context)

    answer = call("GET", f"{ASYNC_V2}/behind-a-base-path", ASYNC_V2 + "/{request_id}",
                  {"request_id": "behind-a-base-path"})
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["status"] == "queued"
    answer = call("GET", "/audio/generic/api/v2/voiceprints", "/audio/generic/api/v2/voiceprints", base="/a/b")
    assert (answer["statusCode"], json.loads(answer["body"])) == (200, {"voiceprints": []})
    page = call("GET", "/", "/")  # without the "/", a redirect to it (see the next test)
    assert page["statusCode"] == 200 and "<html" in page["body"].lower()
    # without a base path, as before
    answer = call("GET", "/audio/generic/api/v2/voiceprints", "/audio/generic/api/v2/voiceprints", base="")
    assert answer["statusCode"] == 200


@pytest.mark.parametrize("path, visible, location", [
    ("/", "/Prod", "/Prod/"),  # the stage URL `sam deploy` prints, https://ID.execute-api.REGION.amazonaws.com/Prod
    ("/diarizer", "/diarizer", "/diarizer/"),  # a custom domain's base path, https://api.example.com/diarizer
    ("/", "/Prod/", None),
    ("/diarizer/", "/diarizer/", None),
    ("/", "/", None),  # a custom domain mapped at its root
    ("/", "//evil.example", None),  # never a redirect off the site
    ("/", None, None),
])
def test_the_page_is_loaded_from_a_url_ending_in_a_slash(stack, api_handler, path, visible, location):
    """The page links its files relative to itself (ui/app.js): loaded from .../Prod, they resolved to /ui/app.js,
    outside the stage, and the page came up unstyled and dead. `requestContext.path` is the path as the browser
    sent it (API Gateway's `path` has no stage, so "/Prod" and "/Prod/" look alike there)."""
    event = stack.make_event("GET", path)
    event["resource"] = "/"
    event["requestContext"]["path"] = visible
    answer = api_handler.lambda_handler(event, stack.context)
    if location is None:
        assert answer["statusCode"] == 200 and "<html" in answer["body"].lower()
        assert 'src="ui/app.js"' in answer["body"]  # what the "/" is for
    else:
        assert answer["statusCode"] == 308
        assert answer["multiValueHeaders"]["Location"] == [location]


@pytest.mark.parametrize("context", ["a string", ["a", "list"], 7])
def test_a_request_context_that_is_not_an_object_still_gets_the_page(stack, api_handler, context):
    """API Gateway always sends an object; a hand-made event (sam local invoke, a test harness) may not. The page
    route read `.get` on it: a 500."""
    event = stack.make_event("GET", "/")
    event["resource"] = "/"
    event["requestContext"] = context
    answer = api_handler.lambda_handler(event, stack.context)
    assert answer["statusCode"] == 200 and "<html" in answer["body"].lower()
