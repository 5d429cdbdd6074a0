"""Is a webhook URL safe to POST to from inside our network?

Deployed mode: https only, a DNS name (no IP literals), every resolved address public. Local mode
(`allow_local=True`) additionally allows http/https to the loopback host (localhost, 127.0.0.1, [::1]).
`resolve_safe_target` is called at submit time and again at delivery time, and the delivery connects to the
address it checked (DNS can change between the two). Non-ASCII URLs (API Gateway decodes query strings, so
`/caf%C3%A9` arrives as `/café`) are normalised: IDNA host, percent-encoded path and query; every check is
made on that host, the one that is resolved and connected to.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

MAX_URL_LENGTH = 2048
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# quote() leaves these alone: only non-ASCII is encoded, so an already encoded %XX stays as it is.
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))


class UnsafeUrlError(ValueError):
    """The URL must not be called (bad scheme, private address, unresolvable host...)."""


class UnresolvableHostError(UnsafeUrlError):
    """The host did not resolve (this time). A 400 at submit; at delivery a retryable failure, since a DNS
    outage (EAI_AGAIN) is not the receiver's fault and passes."""


@dataclass(frozen=True)
class WebhookTarget:
    scheme: str
    host: str  # as written in the URL (used for the Host header and TLS SNI)
    port: int
    path: str  # path + query, what goes on the request line
    address: str  # the checked IP to connect to

    @property
    def url(self) -> str:
        """The normalised (ASCII) URL; the fragment, never sent, is dropped."""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != (443 if self.scheme == "https" else 80):
            netloc += f":{self.port}"
        return f"{self.scheme}://{netloc}{self.path}"


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that embed an IPv4 address are only as public as that address.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
    # fec0::/10 (deprecated site-local) is still routed inside some networks, and `is_global` lets it through.
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
        or site_local
    )


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _ascii_host(host: str) -> str:
    """The IDNA (A-label) form of a DNS name, which is what getaddrinfo would resolve; IP literals as is."""
    if _is_ip_literal(host):
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UnsafeUrlError("webhook host is not a valid domain name") from exc


def parse_webhook_url(url: str, *, allow_local: bool) -> tuple[str, str, int, str]:
    """Syntactic checks only: returns (scheme, host, port, path), host and path in ASCII."""
    if not isinstance(url, str) or not url:
        raise UnsafeUrlError("webhook must be a non-empty URL")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrlError(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 0x7F for ch in url):
        raise UnsafeUrlError("webhook URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrlError(f"webhook URL is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".").lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrlError("webhook URL scheme must be https")
    if not host:
        raise UnsafeUrlError("webhook URL has no host")
    host = _ascii_host(host)  # every check below is on the name that is resolved (fullwidth digits included)
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrlError("webhook URL must not contain credentials")
    is_loopback_host = allow_local and host in LOOPBACK_NAMES
    if scheme == "http" and not is_loopback_host:
        raise UnsafeUrlError("webhook URL must use https (http is only allowed to localhost in local mode)")
    if _is_ip_literal(host) and not is_loopback_host:
        raise UnsafeUrlError("webhook host must be a DNS name, not an IP address")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        path = quote(path, safe=_PRINTABLE_ASCII)  # http.client sends the request line in ASCII
    except UnicodeError as exc:  # a lone surrogate (JSON allows "\ud800")
        raise UnsafeUrlError("webhook URL path is not valid text") from exc
    return scheme, host, port or (443 if scheme == "https" else 80), path


def resolve_safe_target(url: str, *, allow_local: bool) -> WebhookTarget:
    """Parse, resolve and check every address of the host; raises UnsafeUrlError if any is not public, or
    UnresolvableHostError (a subclass) if the name does not resolve."""
    scheme, host, port, path = parse_webhook_url(url, allow_local=allow_local)
    if allow_local and host in LOOPBACK_NAMES:
        address = "::1" if host == "::1" else "127.0.0.1"
        return WebhookTarget(scheme, host, port, path, address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableHostError(f"webhook host {host!r} does not resolve ({exc.strerror or exc})") from exc
    except UnicodeError as exc:  # a name the resolver cannot encode: will never resolve
        raise UnsafeUrlError(f"webhook host {host!r} is not a valid domain name") from exc
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise UnresolvableHostError(f"webhook host {host!r} does not resolve")
    for address in addresses:
        if not is_public_address(address):
            raise UnsafeUrlError(f"webhook host {host!r} resolves to a non-public address")
    return WebhookTarget(scheme, host, port, path, addresses[0])
