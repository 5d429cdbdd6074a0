import socket

import pytest

from diarizer_service.ssrf import UnsafeUrlError, is_public_address, resolve_safe_target


def fake_dns(mapping):
    def getaddrinfo(host, port, *args, **kwargs):
        if host not in mapping:
            raise socket.gaierror(f"unknown host {host}")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in mapping[host]]
    return getaddrinfo


@pytest.fixture
def dns(monkeypatch):
    mapping = {"hooks.example.com": ["93.184.215.14"], "internal.example.com": ["10.1.2.3"],
               "mixed.example.com": ["93.184.215.14", "192.168.0.5"], "v6.example.com": ["2606:4700::1111"],
               "metadata.example.com": ["169.254.169.254"], "mapped.example.com": ["::ffff:127.0.0.1"]}
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns(mapping))
    return mapping


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "http://127.0.0.1:8080/hook", "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/hook", "https://[::1]/hook", "https://0.0.0.0/", "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:a9fe:a9fe]/", "https://93.184.215.14/hook",  # even a public IP literal: names only
    "https://internal.example.com/hook", "https://mixed.example.com/hook", "https://metadata.example.com/",
    "https://mapped.example.com/", "https://unknown.example.com/hook",
    "http://hooks.example.com/hook",  # plain http in deployed mode
    "ftp://hooks.example.com/x", "file:///etc/passwd", "gopher://hooks.example.com/", "javascript:alert(1)",
    "https://user:pw@hooks.example.com/", "https:///nohost", "", "https://hooks.example.com/a b",
    "https://localhost/hook",
])
def test_deployed_mode_refuses_unsafe_urls(dns, url):
    with pytest.raises(UnsafeUrlError):
        resolve_safe_target(url, allow_local=False)


def test_deployed_mode_accepts_public_https_and_pins_the_checked_address(dns):
    target = resolve_safe_target("https://hooks.example.com:8443/diar?x=1", allow_local=False)
    assert (target.scheme, target.host, target.port, target.path, target.address) == (
        "https", "hooks.example.com", 8443, "/diar?x=1", "93.184.215.14")
    assert resolve_safe_target("https://v6.example.com/", allow_local=False).address == "2606:4700::1111"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/h", "http://localhost/h", "https://localhost/h",
                                 "http://[::1]:9000/h"])
def test_local_mode_allows_loopback(dns, url):
    assert resolve_safe_target(url, allow_local=True).address in ("127.0.0.1", "::1")


@pytest.mark.parametrize("url", ["http://10.0.0.1/h", "https://169.254.169.254/", "http://hooks.example.com/h",
                                 "https://internal.example.com/h"])
def test_local_mode_still_refuses_private_networks_and_remote_http(dns, url):
    with pytest.raises(UnsafeUrlError):
        resolve_safe_target(url, allow_local=True)


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.0.0.1", False),
    ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("255.255.255.255", False), ("::1", False), ("::", False),
    ("fe80::1", False), ("fc00::1", False), ("ff02::1", False), ("::ffff:10.0.0.1", False),
    ("64:ff9b::a9fe:a9fe", False), ("2002:a00:1::1", False), ("fec0::1", False),
])
def test_is_public_address(address, public):
    assert is_public_address(address) is public


@pytest.mark.parametrize("url", ["https://2130706433/", "https://0x7f000001/", "https://127.1/", "https://0177.0.0.1/"])
def test_numeric_host_spellings_of_loopback_are_refused(url):
    # Not IP literals to the ipaddress module, but the real resolver turns them into 127.0.0.1 (no network:
    # numeric forms never reach DNS). Refused by the address check, not for failing to resolve.
    with pytest.raises(UnsafeUrlError, match="non-public address"):
        resolve_safe_target(url, allow_local=False)
