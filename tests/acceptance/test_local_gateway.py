"""The local API Gateway stand-in, in-process with a recording fake handler: event shape, answers, and the
guards (body size, missing length, slow clients, connection cap, one handler call at a time)."""
from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time

import pytest
from serve_helpers import wait_for

from diarizer_service.local_server.gateway import Gateway, GatewayServer, RouteTable, build_api_event
from diarizer_service.local_server.openapi import load_openapi

STATUS_ROUTE = "/audio/generic/api/v2/async/diarize/{request_id}"


class RecordingHandler:
    def __init__(self):
        self.events: list[dict] = []
        self.active = self.most_active = 0
        self.delay = 0.0
        self.fail = False
        self._lock = threading.Lock()

    def __call__(self, event: dict, context) -> dict:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.events.append(event)
            time.sleep(self.delay)
            if self.fail:
                raise RuntimeError("boom")
            assert context.function_name == "diarizer-api" and context.get_remaining_time_in_millis() > 0
            return {"statusCode": 201, "headers": {"Content-Type": "application/json", "X-A": "1"},
                    "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]}, "body": json.dumps({"ok": True}),
                    "isBase64Encoded": False}
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def make_server(handler):
    servers = []

    def make(**options) -> GatewayServer:
        options = {"access_log": False, "socket_timeout": 1.0, "body_deadline": 2.0, **options}
        server = GatewayServer(("127.0.0.1", 0), Gateway(handler, load_openapi()), **options)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(make_server) -> GatewayServer:
    return make_server()


def call(server: GatewayServer, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def raw_exchange(server: GatewayServer, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes, return what the server answers before closing (or `wait` seconds)."""
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except socket.timeout:
            pass
    return b"".join(chunks)


def test_a_request_becomes_an_api_gateway_rest_proxy_event(server, handler):
    status, headers, body = call(server, "GET", "/audio/generic/api/v2/async/diarize/r%3A1?apikey=k&x=1&x=2",
                                 headers={"X-Api-Key": "h", "User-Agent": "t"})
    [event] = handler.events
    assert event["httpMethod"] == "GET"
    # The path still percent-encoded, as REST APIs pass it on (the API handler decodes path parameters)
    assert event["resource"] == STATUS_ROUTE and event["path"] == "/audio/generic/api/v2/async/diarize/r%3A1"
    assert event["pathParameters"] == {"request_id": "r%3A1"}
    assert event["queryStringParameters"] == {"apikey": "k", "x": "2"}  # the last value, like API Gateway
    assert event["multiValueQueryStringParameters"] == {"apikey": ["k"], "x": ["1", "2"]}
    assert event["headers"]["X-Api-Key"] == "h" and event["multiValueHeaders"]["X-Api-Key"] == ["h"]
    assert event["body"] is None and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "t"}
    assert context["stage"] == "local" and context["resourcePath"] == STATUS_ROUTE and context["requestId"]
    # ... and the proxy answer becomes the HTTP answer.
    assert status == 201 and json.loads(body) == {"ok": True}
    assert ("X-A", "1") in headers and [v for k, v in headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert dict(headers)["x-amzn-RequestId"] == context["requestId"]


def test_bodies_are_passed_as_text_or_base64(server, handler):
    call(server, "POST", "/audio/generic/api/v2/async/diarize", body='{"a": "é"}'.encode())
    call(server, "POST", "/audio/generic/api/v2/async/diarize", body=b"\xff\xfe\x00")
    text, binary = handler.events
    assert (text["body"], text["isBase64Encoded"]) == ('{"a": "é"}', False)
    assert text["resource"] == "/audio/generic/api/v2/async/diarize" and text["pathParameters"] is None
    assert (base64.b64decode(binary["body"]), binary["isBase64Encoded"]) == (b"\xff\xfe\x00", True)


def test_unknown_paths_reach_the_handler_unrouted():
    routes = RouteTable(["/a/{id}", "/a/list"])
    assert routes.match("/a/list") == ("/a/list", None)  # a literal route wins over a template
    assert routes.match("/a/7") == ("/a/{id}", {"id": "7"})
    assert routes.match("/a/7/x") == ("/a/7/x", None)
    event = build_api_event("POST", "/nowhere?q", [], b"", source_ip="::1", routes=routes)
    assert event["resource"] == "/nowhere" and event["queryStringParameters"] == {"q": ""}


def test_an_oversized_body_is_refused_from_its_length_without_reading_it(server, handler):
    answer = raw_exchange(server, b"POST /audio/generic/api/v2/async/diarize HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 20000000\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "body_too_large"
    assert handler.events == []


def test_expect_continue_is_refused_before_the_body_is_sent(server, handler):
    answer = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n"
                                  b"Expect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer
    assert handler.events == []


def test_chunked_and_malformed_lengths_are_refused(server, handler):
    chunked = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"5\r\nhello\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411")
    assert json.loads(chunked.partition(b"\r\n\r\n")[2])["error"]["code"] == "length_required"
    malformed = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert malformed.startswith(b"HTTP/1.1 400")
    # "\xb2" is "²" in Latin-1: a digit to str.isdigit(), not to int()
    superscript = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n")
    assert superscript.startswith(b"HTTP/1.1 400")
    assert json.loads(superscript.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_content_length"
    assert handler.events == []


def json_answer(answer: bytes) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one raw HTTP/1.1 answer; fails unless it has a status line and JSON."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), answer[:200]
    headers = dict(line.split(": ", 1) for line in lines)
    assert headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) == len(body)
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize("length", ["9" * 4301, "0" * 5000 + "99999999999", "9" * 16])
def test_a_content_length_of_thousands_of_digits_is_413_not_a_dropped_connection(server, handler, length):
    # int() refuses more than 4,300 digits with a ValueError, which used to kill the request unanswered
    for expect in (b"", b"Expect: 100-continue\r\n"):
        answer = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: " + length.encode() +
                              b"\r\n" + expect + b"\r\nx")
        status, headers, body = json_answer(answer)
        assert (status, body["error"]["code"]) == (413, "body_too_large") and headers["Connection"] == "close"
    assert handler.events == []


def test_leading_zeros_in_a_content_length_are_still_the_length(server, handler):
    answer = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " +
                          b"0" * 5000 + b"2\r\n\r\n{}")
    assert json_answer(answer)[0] == 201 and handler.events[0]["body"] == "{}"


def test_conflicting_content_lengths_are_refused_and_the_connection_closed(server, handler):
    # RFC 9112 6.3: a proxy in front might frame the request by the other one (request smuggling)
    answer = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 50\r\n"
                                  b"\r\n{}")
    status, headers, body = json_answer(answer)
    assert (status, body["error"]["code"], headers["Connection"]) == (400, "invalid_content_length", "close")
    assert handler.events == []
    same_twice = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n"
                                      b"Content-Length: 2\r\n\r\n{}")
    assert json_answer(same_twice)[0] == 201


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    (b"QUERY /audio/generic/api/v2/voiceprints HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    (b"GET / HTTP/2.0\r\n\r\n", 400, "http_version_not_supported"),
    (b"GET /x HTTP/1.1 x\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431, "headers_too_large"),
])
def test_what_http_server_itself_refuses_is_a_json_4xx_with_a_status_line(server, handler, request_bytes, status,
                                                                          code):
    got, headers, body = json_answer(raw_exchange(server, request_bytes))
    assert (got, body["error"]["code"]) == (status, code)
    if status == 405:  # the route's own methods: "/" is the page, the voiceprints route takes GET and POST
        assert headers["Allow"] in ("GET, HEAD", "GET, HEAD, POST")
    assert handler.events == []


@pytest.mark.parametrize("method, path, allow", [
    ("PATCH", "/audio/generic/api/v2/voiceprints?apikey=k", "GET, HEAD, POST"),
    ("PUT", "/audio/generic/api/v2/voiceprints/vp%201", "DELETE"),
    ("DELETE", "/audio/generic/api/v2/async/diarize/r1", "GET, HEAD"),
    ("OPTIONS", "/audio/generic/api/v2/sync/diarize", "POST"),
])
def test_a_method_a_route_does_not_take_is_405_with_allow(server, handler, method, path, allow):
    status, headers, body = call(server, method, path)
    assert status == 405 and dict(headers)["Allow"] == allow
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    assert handler.events == []
    assert call(server, "POST", "/nowhere")[0] == 201 and handler.events[0]["resource"] == "/nowhere"  # no route: the handler's 404
    assert call(server, "HEAD", "/audio/generic/api/v2/async/diarize/r1")[0] == 201  # HEAD is GET


@pytest.mark.parametrize("request_bytes", [
    # a malformed header line makes http.server stop reading headers, the Content-Length after it unread: the
    # body would then be answered as a second request (here a smuggled GET)
    b"POST /audio/generic/api/v2/voiceprints HTTP/1.1\r\nHost: x\r\nJunk\r\nContent-Length: 27\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\n\r\n",
    b"POST /audio/generic/api/v2/voiceprints HTTP/1.1\r\nHost: x\r\nContent-Length : 27\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\n\r\n",
])
def test_a_malformed_header_line_is_one_400_and_its_body_never_a_request(server, handler, request_bytes):
    answer = raw_exchange(server, request_bytes)
    status, headers, body = json_answer(answer)
    assert (status, headers["Connection"]) == (400, "close") and answer.count(b"HTTP/1.1 ") == 1
    assert handler.events == []


def test_an_http_0_9_request_gets_a_400_with_a_status_line(server, handler):
    status, _, body = json_answer(raw_exchange(server, b"GET /openapi.json\r\n\r\n"))
    assert status == 400 and "HTTP/0.9" in body["error"]["message"]
    assert handler.events == []


def test_405_answers_name_the_routes_own_methods(server, handler):
    trace = json_answer(raw_exchange(server, b"TRACE /audio/generic/api/v2/uploads HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert trace[0] == 405 and trace[1]["Allow"] == "POST"
    status, headers, _ = call(server, "POST", "/openapi.json")
    assert status == 405 and dict(headers)["Allow"] == "GET, HEAD"
    status, headers, _ = call(server, "PATCH", "/audio/generic/api/v2/voiceprints/")  # the handler takes the slash
    assert status == 405 and dict(headers)["Allow"] == "GET, HEAD, POST"
    assert handler.events == []


@pytest.mark.parametrize("target", [b"/x?apikey=dk_0123456789abcdef_secretsecretsecretsecret",
                                    b"/x?foo=bar?apikey=customsecretkey", b"/x?webhook=http://h/?api_key=customsecretkey"])
def test_an_api_key_in_a_refused_request_line_is_not_echoed(server, target):
    # a custom key (`diarize serve --api-key`) has no recognisable shape: a pair after a stray "?" is masked too
    # four words with a valid version: http.server quotes the whole request line in its "Bad request syntax"
    answer = raw_exchange(server, b"GET " + target + b" z HTTP/1.1\r\n\r\n")
    status, _, body = json_answer(answer)
    assert status == 400 and "syntax" in body["error"]["message"] and b"secret" not in answer


def test_a_client_that_stops_sending_gets_408_and_is_dropped(server, handler):
    began = time.monotonic()
    answer = raw_exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - began < 4.5
    assert handler.events == []


def test_a_handler_crash_is_a_502_like_api_gateway(server, handler):
    handler.fail = True
    status, _, body = call(server, "GET", "/x")
    assert status == 502 and json.loads(body) == {"message": "Internal server error"}


def test_requests_reach_the_handler_one_at_a_time(server, handler):
    handler.delay = 0.2  # powertools' resolver keeps the current event on a class attribute
    threads = [threading.Thread(target=call, args=(server, "GET", f"/r{i}")) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(handler.events) == 4 and handler.most_active == 1


def test_connections_over_the_cap_get_503(make_server):
    server = make_server(max_connections=1, socket_timeout=3.0)
    with socket.create_connection(("127.0.0.1", server.server_address[1])):  # holds the only slot, idle
        time.sleep(0.3)
        status, _, body = call(server, "GET", "/openapi.json")
    assert status == 503 and json.loads(body)["error"]["code"] == "too_many_connections"


def test_the_access_log_never_shows_the_api_key(make_server, capsys):
    server = make_server(access_log=True)
    call(server, "GET", "/x?apikey=very-secret&api_key=also-secret&b=1")
    logged = capsys.readouterr().err
    assert "GET /x?apikey=***&api_key=***&b=1" in logged and "secret" not in logged


KEY = "dk_0123456789abcdef_" + "S" * 43


def test_no_logged_line_shows_the_api_key_however_it_was_sent(make_server, handler, capsys):
    """Every path to the log: a percent-encoded parameter name (the API decodes `api%6Bey` to `apikey` and takes
    the key), a request line http.server refuses itself (logged even with the access log off), a handler crash
    (logged with its path)."""
    server = make_server(access_log=False)
    raw_exchange(server, f"GET /x?apikey={KEY}&webhook=https://h.example/a b HTTP/1.1\r\n\r\n".encode(), wait=2)
    handler.fail = True
    assert call(server, "GET", f"/x?api%6Bey={KEY}")[0] == 502
    handler.fail = False
    loud = make_server(access_log=True)
    call(loud, "GET", f"/x?api%6Bey={KEY}&API_KEY={KEY}&b=1")
    call(loud, "GET", f"/x?other={KEY}")  # a key pasted into the wrong parameter is still a key
    logged = capsys.readouterr().err
    assert "API handler raised" in logged and "api%6Bey=***" in logged and "b=1" in logged
    assert KEY not in logged and KEY[20:] not in logged, logged


def test_openapi_json_is_served_without_the_handler(server, handler):
    status, _, body = call(server, "GET", "/openapi.json")
    assert status == 200 and "/audio/generic/api/v2/async/diarize" in json.loads(body)["paths"]
    assert handler.events == []


def test_head_is_answered_as_get_without_the_body(server, handler):
    """Uptime checks (`curl -I`) must see what GET sees: the handler is asked for GET, the body is left out."""
    _, get_headers, get_body = call(server, "GET", "/openapi.json")
    status, headers, body = call(server, "HEAD", "/openapi.json")
    assert status == 200 and body == b""
    assert dict(headers)["Content-Length"] == dict(get_headers)["Content-Length"] == str(len(get_body))
    status, _, body = call(server, "HEAD", "/")
    assert status == 201 and body == b""
    assert handler.events[-1]["httpMethod"] == "GET" and handler.events[-1]["path"] == "/"


def test_sync_requests_wait_for_the_engine_without_blocking_other_routes(make_server, handler):
    server = make_server()
    gate = server.gateway.engine_gate = threading.Lock()
    server.gateway.engine_wait_seconds = 0.5
    with gate:  # the worker is running a job
        began = time.monotonic()
        status, headers, body = call(server, "POST", "/audio/generic/api/v2/sync/diarize", body=b"{}")
        assert status == 503 and json.loads(body)["error"]["code"] == "engine_busy"
        assert dict(headers)["Retry-After"] and 0.4 < time.monotonic() - began < 3
        assert call(server, "GET", "/audio/generic/api/v2/async/diarize/r")[0] == 201  # not behind the gate
    assert len(handler.events) == 1
    assert call(server, "POST", "/audio/generic/api/v1/sync/diarize", body=b"{}")[0] == 201  # free again
    assert not gate.locked()


def test_wait_idle_waits_for_requests_being_handled(server, handler):
    handler.delay = 0.5
    request = threading.Thread(target=call, args=(server, "GET", "/slow"))
    request.start()
    wait_for(lambda: handler.events, 5, "the request to reach the handler")
    assert server.gateway.wait_idle(0.05) is False
    assert server.gateway.wait_idle(5) is True
    request.join(5)
