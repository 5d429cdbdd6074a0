"""A small stand-in for API Gateway: HTTP request -> REST proxy (v1) event -> the API Lambda handler -> HTTP answer.

What it guards like API Gateway does: request body size (checked from Content-Length before reading), bodies
without a length (411), clients that send too slowly (socket timeout and a whole-body deadline), too many open
connections (503). Everything else (routes, auth, validation, error bodies) is the Lambda handler's job.
"""
from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

from diarizer_service.backends.base import BackendError
from diarizer_service.backends.local import LOCAL_UPLOAD_PATH
from diarizer_service.local_server.handlers import LocalLambdaContext
from diarizer_service.settings import BODY_TOO_LARGE_MESSAGE, MAX_REQUEST_BODY_BYTES

# The API refuses bodies over 6 MB itself (413 body_too_large); a little room above that lets the handler give
# its own answer for bodies just over, while anything larger is refused here without being read.
MAX_BODY_BYTES = MAX_REQUEST_BODY_BYTES + 1024 * 1024
SOCKET_TIMEOUT_SECONDS = 30.0  # per read: an idle or stalled client is dropped
BODY_DEADLINE_SECONDS = 120.0  # the whole body: a client trickling bytes cannot hold a thread forever
MAX_CONNECTIONS = 32
_HANDLED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # GatewayHandler's do_* methods
# http.server's own refusals (GatewayHandler.send_error): status and error code.
_OWN_REFUSALS = {
    HTTPStatus.BAD_REQUEST: (400, "bad_request"),
    HTTPStatus.REQUEST_URI_TOO_LONG: (414, "uri_too_long"),
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: (431, "headers_too_large"),
    HTTPStatus.NOT_IMPLEMENTED: (405, "method_not_allowed"),  # a method no route has, such as TRACE
    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: (400, "http_version_not_supported"),  # HTTP/2 prior knowledge, ...
}
_LENGTH_DIGITS = 15  # a Content-Length with more digits (after leading zeros) is over every limit here
OPENAPI_PATH = "/openapi.json"
# (method, resource) of the requests that run the engine
SYNC_ROUTES = {("POST", "/audio/generic/api/v1/sync/diarize"), ("POST", "/audio/generic/api/v2/sync/diarize"),
               ("POST", "/audio/generic/api/v2/voiceprints")}
# name=value pairs of a query in any logged text (a request line, a path), and anything shaped like an API key
_QUERY_PAIR = re.compile(r"([?&;\s])([^=&;\s?]*)=([^&;\s?')]*)")  # a value ends where another pair could begin
_KEY_SHAPE = re.compile(r"dk_[0-9a-f]{8,}_[A-Za-z0-9_-]{20,}")


def redact_secrets(text: str) -> str:
    """`text` with every API key masked: the value of any query parameter whose name decodes to `apikey` or
    `api_key` (the API decodes `api%6Bey` to `apikey` and accepts it), and anything that looks like a key."""
    def mask(match: re.Match) -> str:
        if unquote_plus(match.group(2)).strip().lower() in ("apikey", "api_key"):
            return f"{match.group(1)}{match.group(2)}=***"
        return match.group(0)
    return _KEY_SHAPE.sub("dk_***", _QUERY_PAIR.sub(mask, text))


class _UploadAborted(Exception):
    """The uploading client was too slow ("timeout") or went away ("gone")."""


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class RouteTable:
    """Route templates such as /a/{request_id} -> the `resource` and `pathParameters` API Gateway would send."""

    def __init__(self, templates: Iterable[str]):
        self._routes = []
        for template in sorted(set(templates), key=lambda t: (t.count("{"), t)):  # literal routes win
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
            self._routes.append((template, re.compile(pattern + r"\Z")))

    def match(self, path: str) -> tuple[str, dict | None]:
        for template, pattern in self._routes:
            found = pattern.match(path)
            if found:
                return template, (found.groupdict() or None)
        return path, None


def _last_values(pairs: list[tuple[str, str]]) -> dict | None:
    return {name: value for name, value in pairs} or None


def _multi_values(pairs: list[tuple[str, str]]) -> dict | None:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped or None


def build_api_event(method: str, target: str, headers: list[tuple[str, str]], body: bytes, *, source_ip: str,
                    routes: RouteTable, stage: str = "local", request_id: str | None = None) -> dict:
    """The API Gateway REST proxy (payload v1) event for one request, as the deployed API would send it."""
    parts = urlsplit(target)
    path = parts.path or "/"  # still percent-encoded, as REST APIs pass it on (the API handler decodes)
    resource, path_parameters = routes.match(path)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if body:
        try:
            text, is_base64 = body.decode("utf-8"), False
        except UnicodeDecodeError:  # API Gateway passes such bodies base64-encoded
            text, is_base64 = base64.b64encode(body).decode(), True
    else:
        text, is_base64 = None, False
    lower = {name.lower(): value for name, value in headers}
    now = time.time()
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": _last_values(headers),
        "multiValueHeaders": _multi_values(headers),
        "queryStringParameters": _last_values(query),
        "multiValueQueryStringParameters": _multi_values(query),
        "pathParameters": path_parameters,
        "stageVariables": None,
        "body": text,
        "isBase64Encoded": is_base64,
        "requestContext": {
            "resourcePath": resource, "httpMethod": method, "path": f"/{stage}{path}", "stage": stage,
            "requestId": request_id or str(uuid.uuid4()), "accountId": "000000000000", "apiId": "local",
            "protocol": "HTTP/1.1", "domainName": lower.get("host", ""),
            "requestTime": formatdate(now, usegmt=True), "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": source_ip, "userAgent": lower.get("user-agent", "")},
        },
    }


@dataclass
class Gateway:
    """Routes each request to the API handler; serves the OpenAPI document itself.

    `engine_gate` (shared with the worker loop) stands for the one engine of this machine: a sync request waits
    for it *before* taking the handler lock, so a long job keeps the sync routes waiting (503 `engine_busy` after
    `engine_wait_seconds`) without blocking submits and status reads behind them.
    """

    api_handler: Callable[[dict, object], dict]
    openapi: dict
    stage: str = "local"
    engine_gate: threading.Lock | None = None
    engine_wait_seconds: float = 25.0  # answer before a client (or API Gateway, at 29 s) gives up
    resolver: object | None = None  # the API handler's powertools resolver (its state is saved in engine_running)
    uploads: object | None = None  # the FileBlobStore that receives presigned PUTs (S3's role)
    max_upload_bytes: int = 0
    routes: RouteTable = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _holder: int | None = field(default=None, init=False, repr=False)  # thread id inside the handler
    _in_progress: int = field(default=0, init=False, repr=False)
    _idle: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.routes = RouteTable(self.openapi.get("paths", {}))

    def methods_of(self, path: str) -> set[str]:
        """The methods the document gives the route `path` belongs to (HEAD with GET); empty for no route."""
        path = path or "/"  # matched as the handler matches it: percent-encoded
        if path == OPENAPI_PATH:
            return {"GET", "HEAD"}
        template, _ = self.routes.match(path.rstrip("/") or "/")  # the handler takes a trailing slash too
        methods = {method.upper() for method in self.openapi.get("paths", {}).get(template, {})
                   if method in ("get", "post", "put", "patch", "delete")}
        return methods | ({"HEAD"} if "GET" in methods else set())

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled; False if one still is after `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_progress == 0, timeout)

    def stop_accepting(self) -> None:
        """Refuse requests that begin from now on (keep-alive connections outlive the listening socket): once
        wait_idle has seen no request, none may start that the exit would cut off half-way."""
        with self._idle:
            self._stopping = True

    @contextmanager
    def handling(self):
        """Counts one HTTP request for wait_idle for as long as it is handled: body, upload, handler and answer
        (an upload cut off at exit would leave its temp file). Yields False, counting nothing, once stopping."""
        with self._idle:
            admitted = not self._stopping
            if admitted:
                self._in_progress += 1
        try:
            yield admitted
        finally:
            if admitted:
                self._done()

    def invoke(self, event: dict) -> dict:
        with self._idle:
            self._in_progress += 1
        try:
            return self._route(event)
        finally:
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._in_progress -= 1
            self._idle.notify_all()

    def _route(self, event: dict) -> dict:
        if self.engine_gate is None or (event["httpMethod"], event["resource"]) not in SYNC_ROUTES:
            return self._call(event)
        if not self.engine_gate.acquire(timeout=self.engine_wait_seconds):
            return {"statusCode": 503, "headers": {"Content-Type": "application/json", "Retry-After": "10"},
                    "body": error_body("engine_busy", "The engine is busy with a job; retry later, or use the "
                                       "async route.").decode(), "isBase64Encoded": False}
        try:
            return self._call(event)
        finally:
            self.engine_gate.release()

    def _call(self, event: dict) -> dict:
        # One request at a time, like one Lambda container: powertools' resolver keeps the current event on a
        # class attribute, so concurrent calls would read each other's requests.
        with self._lock:
            self._holder = threading.get_ident()
            try:
                return self.api_handler(event, LocalLambdaContext("diarizer-api", timeout_seconds=29))
            finally:
                self._holder = None

    @contextmanager
    def engine_running(self):
        """Runtime.around_engine: while a sync request is inside the engine (seconds), let other requests
        (submits, status reads) through the handler, then give the sync request back its resolver state. The
        engine itself stays one at a time (engine_gate). Other threads (the worker loop) pass straight through."""
        if self._holder != threading.get_ident():
            yield
            return
        from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

        saved = (BaseRouter.current_event, BaseRouter.lambda_context)
        saved_context = dict(getattr(self.resolver, "context", {}))
        self._holder = None
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._holder = threading.get_ident()
            BaseRouter.current_event, BaseRouter.lambda_context = saved
            if self.resolver is not None:
                self.resolver.context.clear()
                self.resolver.context.update(saved_context)


class GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like API Gateway; every answer has a Content-Length
    server_version = "diarizer-local/1"
    server: "GatewayServer"

    def setup(self) -> None:
        self.timeout = self.server.socket_timeout  # StreamRequestHandler applies it to the socket
        super().setup()

    # ---- every method goes to the API handler, which answers 404 for unknown routes --------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals -- a malformed request line, a URI or headers too long, a method or an HTTP
        version it does not speak -- as JSON like every other answer, and as the client's mistake (4xx): its HTML
        page, a 501 or 505, and, before the request line was understood, no status line at all, told clients
        nothing they could parse."""
        status, reason = _OWN_REFUSALS.get(code, (code if code < 500 else 400, "bad_request"))
        if self.request_version in ("", "HTTP/0.9"):  # unparsed: http.server would leave out the status line
            self.request_version = "HTTP/1.1"
        self.log_error("code %d, message %s", code, message)
        detail = redact_secrets(message or HTTPStatus(code).phrase)
        headers = [("Content-Type", "application/json")]
        if status == 405:
            known = self.server.gateway.methods_of(urlsplit(self.path).path) if getattr(self, "path", None) else set()
            headers.append(("Allow", ", ".join(sorted(known) if known else _HANDLED_METHODS)))
        self._send(status, error_body(reason, f"{detail}."), close=True, headers=headers)

    def parse_request(self) -> bool:
        """http.server's parsing, refusing what it lets through: an HTTP/0.9 request line (answered with no status
        line or headers at all), and a header block it stopped reading at a malformed line (`Junk`, `Name : v`),
        which leaves the rest -- a Content-Length among it -- unread, so the body would be taken for the next
        request (RFC 9112 5.1)."""
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not served; send HTTP/1.1")
            return False
        if self.headers.defects:
            self.send_error(HTTPStatus.BAD_REQUEST, "Malformed header line")
            return False
        return True

    def handle_expect_100(self) -> bool:
        # Refuse an oversized or unmeasured body before the client sends it (curl sends Expect for >1 MB).
        problem = self._upload_problem() if self._is_upload() else self._body_problem()
        if problem is not None:
            self._send(*problem, close=True)
            return False
        return super().handle_expect_100()

    def _dispatch(self) -> None:
        with self.server.gateway.handling() as admitted:
            if admitted:
                self._handle()
            else:
                self._send(503, error_body("service_unavailable", "The server is stopping; retry shortly."),
                           close=True, headers=[("Content-Type", "application/json"), ("Retry-After", "5")])

    def _handle(self) -> None:
        if self._is_upload():
            self._receive_upload()
            return
        body = self._read_body()  # always read first: unread bytes would corrupt the next request on this connection
        if body is None:
            return
        # HEAD is GET without the body (`_send` leaves it out), so uptime checks (`curl -I`) see what GET sees.
        method = "GET" if self.command == "HEAD" else self.command
        if method == "GET" and urlsplit(self.path).path == OPENAPI_PATH:
            self._send(200, json.dumps(self.server.gateway.openapi, indent=2).encode())
            return
        allowed = self.server.gateway.methods_of(urlsplit(self.path).path)
        if allowed and method not in allowed:  # API Gateway's own answer would be a bare 403; this one says why
            self._send(405, error_body("method_not_allowed", f"{self.command} is not a method of this route."),
                       headers=[("Content-Type", "application/json"), ("Allow", ", ".join(sorted(allowed)))])
            return
        request_id = str(uuid.uuid4())
        event = build_api_event(method, self.path, list(self.headers.items()), body,
                                source_ip=self.client_address[0], routes=self.server.gateway.routes,
                                stage=self.server.gateway.stage, request_id=request_id)
        try:
            response = self.server.gateway.invoke(event)
        except Exception:  # what API Gateway answers when the Lambda itself crashes
            self.log_error("API handler raised for %s %s", self.command, self.path)
            self._send(502, json.dumps({"message": "Internal server error"}).encode(), request_id=request_id)
            return
        self._send_proxy_response(response, request_id)

    # ---- request body --------------------------------------------------------------------------------------
    def _declared_length(self) -> tuple[int | None, tuple[int, bytes] | None]:
        """The body length the Content-Length header declares (None without one), or the answer to a bad header."""
        values = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not values:
            return None, None
        if len(values) > 1:  # RFC 9112 6.3: a proxy may have taken the other one (request smuggling)
            return None, (400, error_body("invalid_content_length", "The request has conflicting Content-Length "
                                                                    "headers."))
        raw = values.pop()
        if not (raw.isascii() and raw.isdigit()):  # isdigit() alone passes "²", which int() refuses
            return None, (400, error_body("invalid_content_length", "Content-Length must be a non-negative integer."))
        digits = raw.lstrip("0") or "0"
        # int() refuses more than 4,300 digits (a ValueError that would drop the connection unanswered), and any
        # length that long is over every limit anyway.
        return (int(digits) if len(digits) <= _LENGTH_DIGITS else 10**_LENGTH_DIGITS), None

    def _body_problem(self) -> tuple[int, bytes] | None:
        if self.headers.get("Transfer-Encoding"):
            return 411, error_body("length_required", "Send the body with a Content-Length (chunked bodies are "
                                                      "not accepted).")
        length, problem = self._declared_length()
        if problem is None and length is not None and length > MAX_BODY_BYTES:
            return 413, error_body("body_too_large", BODY_TOO_LARGE_MESSAGE)
        return problem

    def _read_body(self) -> bytes | None:
        """The body, or None after an error answer was sent (the connection is then closed)."""
        problem = self._body_problem()
        if problem is not None:
            self._send(*problem, close=True)
            return None
        remaining = self._declared_length()[0] or 0
        chunks, deadline = [], time.monotonic() + self.server.body_deadline
        try:
            while remaining > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(min(remaining, 256 * 1024))
                if not chunk:
                    self.close_connection = True  # the client went away mid-body: nobody to answer
                    return None
                chunks.append(chunk)
                remaining -= len(chunk)
        except (TimeoutError, socket.timeout):
            self._send(408, error_body("request_timeout", "The request body was not received in time."), close=True)
            return None
        return b"".join(chunks)

    # ---- presigned uploads (S3's part in local mode): streamed to disk, never whole in memory ----------------
    def _is_upload(self) -> bool:
        return self.server.gateway.uploads is not None and urlsplit(self.path).path.startswith(LOCAL_UPLOAD_PATH)

    def _upload_problem(self) -> tuple[int, bytes] | None:
        if self.command == "OPTIONS":
            return None
        if self.command != "PUT":
            return 405, error_body("method_not_allowed", "Upload URLs take PUT.")
        length, problem = self._declared_length()
        if self.headers.get("Transfer-Encoding") or (length is None and problem is None):
            return 411, error_body("length_required", "Send the file with a Content-Length.")
        if problem is not None:
            return problem
        if length > self.server.gateway.max_upload_bytes:
            return 413, error_body("upload_too_large",
                                   f"The file is over {self.server.gateway.max_upload_bytes} bytes.")
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        key = unquote(parts.path[len(LOCAL_UPLOAD_PATH):])
        if not key.startswith("uploads/") or not self.server.gateway.uploads.check_upload(
                key, query.get("expires", ""), query.get("signature", "")):
            return 403, error_body("invalid_signature", "The upload URL is invalid or expired; ask for a new one.")
        return None

    def _receive_upload(self) -> None:
        cors = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "PUT"),
                ("Access-Control-Allow-Headers", "Content-Type")]
        problem = self._upload_problem()
        if problem is not None:
            allow = [("Allow", "PUT, OPTIONS")] if problem[0] == 405 else []
            self._send(*problem, close=True, headers=[("Content-Type", "application/json"), *cors, *allow])
            return
        if self.command == "OPTIONS":  # a page on another origin (localhost vs 127.0.0.1) asks first
            self._send(204, b"", headers=cors)
            return
        remaining = self._declared_length()[0]
        # Like S3: a slow client gets time in proportion to the size (at least 64 kB/s), never forever.
        deadline = time.monotonic() + self.server.body_deadline + remaining / (64 * 1024)

        def chunks() -> Iterable[bytes]:
            left = remaining
            while left > 0:
                try:
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    chunk = self.rfile.read1(min(left, 1024 * 1024))
                except (TimeoutError, socket.timeout) as exc:
                    raise _UploadAborted("timeout") from exc
                except OSError as exc:
                    raise _UploadAborted("gone") from exc
                if not chunk:
                    raise _UploadAborted("gone")
                left -= len(chunk)
                yield chunk

        key = unquote(urlsplit(self.path).path[len(LOCAL_UPLOAD_PATH):])
        json_cors = [("Content-Type", "application/json"), *cors]
        try:
            self.server.gateway.uploads.put_stream(key, chunks(), content_type=self.headers.get("Content-Type")
                                                   or "application/octet-stream")
        except _UploadAborted as exc:
            if exc.args[0] == "timeout":
                self._send(408, error_body("request_timeout", "The file was not received in time."), close=True,
                           headers=json_cors)
            else:
                self.close_connection = True  # the client went away mid-upload: nobody to answer
            return
        except BackendError as exc:  # disk full, permissions: retryable, like S3's 503
            self.log_error("upload of %s failed: %s", key, exc)
            self._send(503, error_body("service_unavailable", "The file could not be stored; retry later."),
                       close=True, headers=json_cors)
            return
        self._send(200, b"", headers=[("ETag", '"uploaded"'), *cors])

    # ---- answers -------------------------------------------------------------------------------------------
    def _send_proxy_response(self, response: dict, request_id: str) -> None:
        body = response.get("body") or ""
        data = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
        headers: list[tuple[str, str]] = list((response.get("headers") or {}).items())
        for name, values in (response.get("multiValueHeaders") or {}).items():
            headers.extend((name, str(value)) for value in values if (name, str(value)) not in headers)
        self._send(int(response.get("statusCode", 200)), data, headers=headers, request_id=request_id)

    def _send(self, status: int, data: bytes, *, headers: list[tuple[str, str]] | None = None,
              close: bool = False, request_id: str | None = None) -> None:
        headers = headers or [("Content-Type", "application/json")]
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, str(value))
        if request_id:
            self.send_header("x-amzn-RequestId", request_id)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_request(self, code="-", size="-") -> None:
        if self.server.access_log:
            self.log_message('"%s" %s %s', self.requestline, getattr(code, "value", code), size)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        # Everything http.server logs passes here -- access lines, its own send_error() for a malformed request
        # line (even with the access log off), our log_error() calls with a path -- so the key is masked once.
        super().log_message("%s", redact_secrets(format % args))


class GatewayServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on simultaneous connections (extra ones get an immediate 503)."""

    daemon_threads = True  # an open keep-alive connection must not delay shutdown
    # listen() backlog. socketserver's default of 5 overflows when a few dozen clients connect at once while
    # the process is busy (the worker holds the GIL part of the time): Linux then falls back to SYN cookies
    # and some clients get "connection reset by peer" instead of an answer (seen with bench/load.py).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], gateway: Gateway, *, access_log: bool = True,
                 max_connections: int = MAX_CONNECTIONS, socket_timeout: float = SOCKET_TIMEOUT_SECONDS,
                 body_deadline: float = BODY_DEADLINE_SECONDS):
        self.gateway = gateway
        self.access_log = access_log
        self.socket_timeout = socket_timeout
        self.body_deadline = body_deadline
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, GatewayHandler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            body = error_body("too_many_connections", "Too many open connections; retry shortly.")
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
