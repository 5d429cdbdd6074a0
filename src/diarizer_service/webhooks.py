"""Signed webhook delivery (Standard Webhooks style) with SSRF checks, timeout and retries.

Every POST carries::

    webhook-id: <stable per job, receivers dedupe on it>
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(secret_bytes, f"{id}.{timestamp}.{body}")>

The secret is shown once when the API key is created, as ``whsec_<base64>``; the HMAC key is the decoded
bytes after the prefix (what the Standard Webhooks libraries do). `verify_signature` needs only base64, hashlib,
hmac and time, so receivers can copy it as is.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from diarizer_service.observability import logger
from diarizer_service.ssrf import UnresolvableHostError, UnsafeUrlError, WebhookTarget, resolve_safe_target

SECRET_PREFIX = "whsec_"
BACKOFF_SECONDS = 1.0  # first retry after 1 s, then 2 s, 4 s...
ATTEMPTS = 3  # POSTs in one delivery round
USER_AGENT = "diarizer-webhooks/1"


def longest_delivery_seconds(timeout: float, attempts: int = ATTEMPTS) -> float:
    """How long one `deliver` may take: every attempt running out its `timeout`, and the backoffs between them
    (name resolution aside). A function that delivers must not start one with less time left than this."""
    return attempts * timeout + sum(BACKOFF_SECONDS * 2 ** retry for retry in range(attempts - 1))


# Room beside one delivery for the record's own reads and writes (the job, its result or error record) and the
# webhook's name resolution.
DELIVERY_SLACK_SECONDS = 12.0


def delivery_margin(webhook_timeout_seconds: float) -> float:
    """How long before an invocation's deadline work that may end in a webhook delivery must be over, or not be
    started: one whole delivery at this timeout (`longest_delivery_seconds`), and the slack. A delivery cut by the
    deadline is never recorded."""
    return longest_delivery_seconds(webhook_timeout_seconds) + DELIVERY_SLACK_SECONDS


def generate_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, tolerance_seconds: int = 300) -> bool:
    """Receiver side: True when the body was signed with `secret` within `tolerance_seconds` of now.

    `headers` must be looked up case-insensitively (e.g. `http.server`'s `self.headers`, or a lower-cased dict).
    """
    msg_id, timestamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature") or ""
    if not msg_id or not timestamp or not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if abs(time.time() - int(timestamp)) > tolerance_seconds:
        return False
    key = base64.b64decode(secret[6:] if secret.startswith("whsec_") else secret)
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()
    for candidate in signatures.split():  # several space-separated "v1,<sig>" during secret rotation
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    status: int | None = None  # last HTTP status, if any answer came
    error: str | None = None  # why the last attempt failed
    refused: bool = False  # the URL is unsafe (the SSRF guard said no): never worth another round

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "refused"}  # `error` says it

    @property
    def retryable(self) -> bool:
        """Worth another round later: no answer (a DNS failure included), a 5xx, 408 or 429. Not: an unsafe
        URL, another 4xx."""
        if self.delivered or self.refused:
            return False
        return self.status is None or self.status >= 500 or self.status in (408, 429)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that passed the SSRF check, whatever DNS says now."""

    def __init__(self, target: WebhookTarget, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: WebhookTarget, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # certificate checked for the name


class _RetryableError(Exception):
    pass


def _post_once(target: WebhookTarget, body: bytes, headers: dict, timeout: float) -> int:
    """One POST; its status. `timeout` bounds the whole attempt, not just each socket read: a receiver that
    trickles its answer (a header line every few seconds) would otherwise hold the worker until the Lambda
    timeout. When the time is up the socket is shut down, which ends any blocked read."""
    conn_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = conn_class(target, timeout)
    timed_out = threading.Event()

    def abort() -> None:
        timed_out.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout, abort)
    timer.daemon = True
    timer.start()
    try:
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            response = conn.getresponse()
            if timed_out.is_set():  # headers cut short by the shutdown: not a complete answer
                raise TimeoutError
        except (OSError, http.client.HTTPException) as exc:
            if timed_out.is_set():
                raise TimeoutError(f"no complete answer within {timeout:g} s") from exc
            raise
        try:
            response.read(64 * 1024)  # drain a little; redirects are not followed on purpose
        except (OSError, http.client.HTTPException):
            pass  # the status line and headers arrived: the answer counts, whatever the body does
        return response.status
    finally:
        timer.cancel()
        conn.close()


def _unexpected(exc: Exception, step: str) -> str:
    """An exception no check foresaw (a URL http.client cannot send, a corrupt secret...): a failed attempt,
    not a crash, or the worker's message is redelivered and the sweeper stops on this record. Only the type is
    kept: messages can quote the URL (query strings carry tokens) or the secret."""
    logger.warning("webhook attempt failed unexpectedly", extra={"step": step, "error_type": type(exc).__name__})
    return f"unexpected error while {step}: {type(exc).__name__}"


def deliver(
    url: str,
    payload: dict,
    *,
    secret: str,
    msg_id: str,
    timeout: float,
    allow_local: bool,
    attempts: int = ATTEMPTS,
    backoff_seconds: float | None = None,
    sleep: Callable[[float], None] | None = None,
) -> DeliveryResult:
    """POST `payload` as signed JSON. Retries network errors and 5xx (and 429) with exponential backoff,
    never other 4xx. Never raises: the caller records the result on the job (an unexpected exception counts
    as a failed attempt)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    backoff_seconds = BACKOFF_SECONDS if backoff_seconds is None else backoff_seconds
    sleep = sleep or time.sleep
    last_status: int | None = None
    last_error = "not attempted"
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            sleep(backoff_seconds * 2 ** (attempt - 2))
        try:
            target = resolve_safe_target(url, allow_local=allow_local)  # re-checked at every attempt
        except UnresolvableHostError as exc:  # DNS down or flaky: like no answer, worth retrying
            last_status, last_error = None, str(exc)
            continue
        except UnsafeUrlError as exc:
            return DeliveryResult(False, attempt, None, f"refused: {exc}", refused=True)
        except Exception as exc:  # noqa: BLE001 (never raise: see _unexpected)
            last_status, last_error = None, _unexpected(exc, "resolving")
            continue
        try:
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, msg_id, timestamp, body),
            }
            last_status = _post_once(target, body, headers, timeout)
        except (OSError, http.client.HTTPException) as exc:
            last_status, last_error = None, f"{type(exc).__name__}: {exc}"
            continue
        except Exception as exc:  # noqa: BLE001
            last_status, last_error = None, _unexpected(exc, "posting")
            continue
        if 200 <= last_status < 300:
            return DeliveryResult(True, attempt, last_status)
        last_error = f"HTTP {last_status}"
        if last_status < 500 and last_status != 429:
            return DeliveryResult(False, attempt, last_status, last_error)
    return DeliveryResult(False, attempts, last_status, last_error)
