"""Webhook URLs and deliveries that used to crash or give up too early:

* a non-ASCII URL (API Gateway decodes `/caf%C3%A9` to `/café`) is stored and sent as ASCII: percent-encoded
  path and query, IDNA host, every SSRF check on that host. It used to pass validation and then make
  http.client raise on the request line, out of deliver(), the worker and the sweeper;
* deliver() never raises, and the sweeper goes on past a record that raises: it used to stop on it at every
  run, so no other job was ever re-driven;
* a DNS failure at delivery (EAI_AGAIN) is retried like no answer, not refused for good like a private address.

Deployed-mode deliveries go over real TLS: a fake DNS answers a public address, the connection to it is routed
to a loopback HTTPS receiver whose certificate the client trusts through SSL_CERT_FILE.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import datetime
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from diarizer_service.errors import ApiError
from diarizer_service.jobs import make_job_id
from diarizer_service.ssrf import UnsafeUrlError, resolve_safe_target
from diarizer_service.sweeper import sweep
from diarizer_service.validation import validate_webhook
from diarizer_service.webhooks import deliver, generate_webhook_secret, verify_signature
from reliability.helpers import job_status, submit

PUBLIC_IP = "93.184.215.14"


# --------------------------------------------------------------------------- deployed mode over real TLS
@dataclass
class Hit:
    path: str
    headers: dict  # lower-cased names
    body: bytes

class TLSReceiver:
    """An HTTPS receiver on 127.0.0.1 with a certificate for `names`, signed by a CA written to `ca_file`."""

    def __init__(self, names: list[str], tmp_path):
        self.received: list[Hit] = []
        self.ca_file, cert_file, key_file = _make_certificates(names, tmp_path)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _make_certificates(names: list[str], tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(path) for path in paths)


@pytest.fixture
def public_web(stack, monkeypatch, tmp_path):
    """Deployed-mode rules; `names` resolve to PUBLIC_IP (while `dns.up`), whose port 443 is the TLS receiver."""
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, allow_local_webhooks=False)
    names = ["hooks.example.com", "xn--caf-dma.example.com"]
    receiver = TLSReceiver(names, tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", receiver.ca_file)  # read by ssl.create_default_context()

    dns = SimpleNamespace(up=True, lookups=[])
    real_getaddrinfo, real_create_connection = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "127.0.0.1":  # the routed connection below
            return real_getaddrinfo(host, port, *args, **kwargs)
        dns.lookups.append(host)
        if not dns.up:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_IP, port))]

    def create_connection(address, *args, **kwargs):
        assert address == (PUBLIC_IP, 443), f"connection to {address!r}"
        return real_create_connection(("127.0.0.1", receiver.port), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    receiver.dns = dns
    yield receiver
    receiver.close()


# --------------------------------------------------------------------------- non-ASCII URLs
def test_a_non_ascii_webhook_path_is_stored_as_ascii_and_delivered_once(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes):
    hook = webhook_receiver.url + "/caf\u00e9?q=\u00e9t\u00e9&done=%C3%A9&token=x%2Fy"
    code, body = submit(stack, api_handler, hook, "accent", wav_bytes(1.0))
    assert code == 200, body
    expected_path = "/hook/caf%C3%A9?q=%C3%A9t%C3%A9&done=%C3%A9&token=x%2Fy"  # %XX as sent, kept as is
    assert stack.job_item("accent")["webhook"] == webhook_receiver.url.removesuffix("/hook") + expected_path

    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    [hit] = webhook_receiver.received
    assert hit.path == expected_path
    assert verify_signature(stack.key.record.webhook_secret, hit.headers, hit.body)
    job = job_status(stack, api_handler, "accent")
    assert job["webhook"]["state"] == "delivered" and hit.json() == {"request_id": "accent",
                                                                       "response": job["response"]}


def test_a_record_stored_with_a_non_ascii_url_before_the_fix_is_still_delivered(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes):
    assert submit(stack, api_handler, webhook_receiver.url, "old", wav_bytes(1.0))[0] == 200
    job_id = make_job_id(stack.key.record.key_id, "old")
    stack.runtime.jobs.table.update(job_id, {"webhook": webhook_receiver.url + "/\u00fcber"})  # as stored before
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    assert [hit.path for hit in webhook_receiver.received] == ["/hook/%C3%BCber"]
    assert job_status(stack, api_handler, "old")["webhook"]["state"] == "delivered"


def test_an_internationalised_host_is_checked_and_delivered_under_its_idna_name(
        stack, api_handler, worker_handler, public_web, wav_bytes):
    code, body = submit(stack, api_handler, "https://Caf\u00e9.example.com/h\u00e9", "idn", wav_bytes(1.0))
    assert code == 200, body
    assert stack.job_item("idn")["webhook"] == "https://xn--caf-dma.example.com/h%C3%A9"
    assert public_web.dns.lookups == ["xn--caf-dma.example.com"]  # the name checked is the name resolved
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    [hit] = public_web.received  # TLS verified the certificate for the A-label (SNI), Host says the same
    assert hit.path == "/h%C3%A9" and hit.headers["host"] == "xn--caf-dma.example.com"
    assert job_status(stack, api_handler, "idn")["webhook"]["state"] == "delivered"


def test_idna_normalisation_cannot_smuggle_a_private_target(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7" if host == "xn--caf-dma.example.com" else PUBLIC_IP,
                                                       port))])
    with pytest.raises(UnsafeUrlError, match="non-public"):
        resolve_safe_target("https://caf\u00e9.example.com/", allow_local=False)
    with pytest.raises(UnsafeUrlError, match="IP address"):  # fullwidth digits: NFKC makes them 127.0.0.1
        resolve_safe_target("https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", allow_local=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/\ud800", "https://\ue000.example.com/",
                                 "https://" + "\u00e9" * 64 + ".example.com/", "http://127.0.0.1:9/\x7f"])
def test_urls_that_cannot_be_made_ascii_are_a_400(url):
    with pytest.raises(ApiError) as caught:
        validate_webhook(url, allow_local=True)
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "invalid_webhook", "webhook")


# --------------------------------------------------------------------------- nothing escapes
def test_deliver_counts_an_unexpected_exception_as_a_failed_attempt(webhook_receiver):
    result = deliver(webhook_receiver.url, {"a": 1}, secret="whsec_abc", msg_id="msg_1", timeout=2,
                     allow_local=True, attempts=2, sleep=lambda s: None)  # a corrupt secret: binascii.Error
    assert not result.delivered and result.attempts == 2 and result.retryable
    assert result.error == "unexpected error while posting: Error" and "abc" not in json.dumps(result.to_dict())
    assert webhook_receiver.received == []


def test_a_record_that_raises_does_not_stop_the_sweeper_from_redriving_the_others(
        stack, api_handler, worker_handler, webhook_receiver, wav_bytes, no_webhook_backoff, due_now, monkeypatch):
    webhook_receiver.statuses = [503] * 3  # the worker's round fails: the webhook stays pending
    assert submit(stack, api_handler, webhook_receiver.url, "poison", wav_bytes(1.0))[0] == 200
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    poison = stack.runtime.jobs.get(make_job_id(stack.key.record.key_id, "poison"))
    assert poison.webhook_pending
    result_json = stack.runtime.backends.blobs.get(poison.result_key)
    stack.runtime.backends.blobs.put(poison.result_key, b'{"truncated', content_type="application/json")
    stack.runtime.jobs.table.update(poison.job_id, {"outbox_at": 1})  # the oldest due record

    class Killed(BaseException):
        pass

    def die(**kwargs):
        raise Killed
    with monkeypatch.context() as patched:  # a submit that dies before its message: only the sweeper runs it
        patched.setattr(stack.runtime.backends.queue._sqs, "send_message", die)
        with pytest.raises(Killed):
            submit(stack, api_handler, webhook_receiver.url, "orphan", wav_bytes(1.0))

    now = time.time() + 10
    report = sweep(worker_handler.get_worker(), now=now)
    assert (report.resent, report.errors) == ([make_job_id(stack.key.record.key_id, "orphan")], 1)
    assert stack.runtime.jobs.get(poison.job_id).outbox_at > now  # pushed back, still in the outbox
    assert sweep(worker_handler.get_worker(), now=now).errors == 0  # not in front of the others any more

    stack.runtime.backends.blobs.put(poison.result_key, result_json, content_type="application/json")
    assert sweep(worker_handler.get_worker(), now=now + 3600).redelivered == [poison.job_id]
    assert job_status(stack, api_handler, "poison")["webhook"]["state"] == "delivered"
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    assert job_status(stack, api_handler, "orphan")["webhook"]["state"] == "delivered"


# --------------------------------------------------------------------------- DNS failures
def test_a_dns_failure_at_delivery_is_retried_and_a_later_round_delivers(
        stack, api_handler, worker_handler, public_web, wav_bytes, no_webhook_backoff, due_now):
    code, body = submit(stack, api_handler, "https://hooks.example.com/h?k=1", "dns", wav_bytes(1.0))
    assert code == 200, body
    public_web.dns.up = False  # the resolver hiccups (EAI_AGAIN) while the worker finishes the job
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    webhook = job_status(stack, api_handler, "dns")["webhook"]
    assert (webhook["state"], webhook["rounds"], webhook["attempts"]) == ("pending", 1, 3)  # every attempt tried
    assert "does not resolve" in webhook["error"] and not webhook["error"].startswith("refused")
    assert public_web.received == []

    public_web.dns.up = True
    assert sweep(worker_handler.get_worker(), now=time.time() + 10).redelivered == [
        make_job_id(stack.key.record.key_id, "dns")]
    [hit] = public_web.received
    assert hit.path == "/h?k=1" and verify_signature(stack.key.record.webhook_secret, hit.headers, hit.body)
    assert job_status(stack, api_handler, "dns")["webhook"]["state"] == "delivered"


def test_a_name_resolving_to_a_private_address_at_delivery_is_still_refused_for_good(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))])
    result = deliver("https://hooks.example.com/h", {"a": 1}, secret=generate_webhook_secret(), msg_id="m",
                     timeout=2, allow_local=False, attempts=3, sleep=lambda s: None)
    assert (result.attempts, result.retryable, result.refused) == (1, False, True)
    assert result.error.startswith("refused") and "refused" not in result.to_dict()
