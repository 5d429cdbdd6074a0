"""The receiver-side signature check exactly as the README shows it (tests use this copy, so the README's
snippet is known to work against the real server)."""
import base64
import hashlib
import hmac
import time


def verify_webhook(secret: str, headers, body: bytes, tolerance_seconds: int = 300) -> bool:
    """True if `body` (the raw request bytes) was signed with `secret` ("whsec_...") less than 5 minutes ago.
    `headers` must be looked up case-insensitively (e.g. http.server's self.headers, Flask's request.headers)."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature") or ""
    if not msg_id or not timestamp or not timestamp.isdigit():
        return False
    if abs(time.time() - int(timestamp)) > tolerance_seconds:  # replayed or badly delayed
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (candidate.partition(",") for candidate in signatures.split())
    )
