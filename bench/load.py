"""Bounded load test of the local mode: a burst of async requests, then wait until every job is accounted for.

    .venv/bin/python bench/load.py                      # starts `diarize serve` on 127.0.0.1 (temp data dir)
    .venv/bin/python bench/load.py --url http://127.0.0.1:3000 --api-key dk_...   # an already running server

It sends `--requests` (200) v2 async requests from `--concurrency` (20) clients, each a short clip (2-5 s cut
from demo/two-speakers.flac), with a webhook receiver on 127.0.0.1, then waits for the queue to drain. It
reports requests/s and p50/p99 API latency of the burst, jobs done/failed, webhooks received (signature checked,
duplicates counted) and lost (accepted request_ids that are neither done nor failed on the status route, or
have no webhook). Everything stops after `--timeout` seconds. Exit 0 only when nothing was lost, no webhook came
twice, every request was accepted, and every job finished. Loopback only: the target URL must be 127.0.0.1,
localhost or [::1].
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import random
import secrets
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from diarizer_service.local_server.child import ServeProcess
from diarizer_service.webhooks import verify_signature

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "two-speakers.flac"
ASYNC = "/audio/generic/api/v2/async/diarize"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


# ------------------------------------------------------------------------------------------------ clips
def make_clips(count: int, min_seconds: float, max_seconds: float, seed: int) -> list[tuple[float, str]]:
    """`count` distinct FLAC clips cut from the demo recording: (seconds, base64)."""
    import numpy as np
    import soundfile as sf

    samples, rate = sf.read(DEMO, dtype="int16")
    rng = random.Random(seed)
    clips = []
    for _ in range(count):
        seconds = rng.uniform(min_seconds, max_seconds)
        start = rng.uniform(0, len(samples) / rate - seconds)
        part = np.ascontiguousarray(samples[int(start * rate):int((start + seconds) * rate)])
        buffer = io.BytesIO()
        sf.write(buffer, part, rate, format="FLAC", subtype="PCM_16")
        clips.append((len(part) / rate, base64.b64encode(buffer.getvalue()).decode()))
    return clips


# ------------------------------------------------------------------------------------------------ webhooks
def verify(secret: str | None, headers, body: bytes) -> bool:
    # The secret is unknown when targeting a server started elsewhere without --webhook-secret.
    return verify_signature(secret, headers, body) if secret else True


class Receiver:
    """Webhook receiver on 127.0.0.1: counts deliveries per request_id and bad signatures."""

    def __init__(self, secret: str | None):
        self.secret = secret
        self.lock = threading.Lock()
        self.by_request: dict[str, list[dict]] = {}
        self.bad_signatures = 0
        self.last_at = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 10_000_000))
                ok = verify(receiver.secret, self.headers, body)
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {}
                with receiver.lock:
                    if not ok:
                        receiver.bad_signatures += 1
                    receiver.by_request.setdefault(str(payload.get("request_id")), []).append(payload)
                    receiver.last_at = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------ server
# ------------------------------------------------------------------------------------------------ client
def http(base: str, method: str, path: str, api_key: str, *, body: bytes | None = None, query: dict | None = None,
         timeout: float = 60.0) -> tuple[int, dict]:
    query = {**(query or {}), "apikey": api_key}
    request = urllib.request.Request(f"{base}{path}?{urllib.parse.urlencode(query)}", data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"null")
        except ValueError:
            return error.code, {}
    except (OSError, ValueError) as exc:
        return 0, {"error": {"code": "connection", "message": f"{type(exc).__name__}: {exc}"}}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    deadline = started + args.timeout
    clips = make_clips(args.clips, args.min_seconds, args.max_seconds, args.seed)
    server = tmp = None
    if args.url:
        host = urllib.parse.urlsplit(args.url).hostname
        if host not in LOOPBACK_HOSTS:
            raise SystemExit(f"refusing to load a non-loopback target: {host}")
        if not args.api_key:
            raise SystemExit("--url needs --api-key")
        base, api_key, secret = args.url.rstrip("/"), args.api_key, args.webhook_secret
    else:
        tmp = tempfile.TemporaryDirectory(prefix="diarizer-load-")
        api_key = "dk_load_" + secrets.token_urlsafe(16)
        server = ServeProcess(Path(tmp.name) / "data", api_key, Path(tmp.name) / "serve.log", "--retry-delay", "1",
                              start_timeout=args.start_timeout)
        base, secret = server.url, server.webhook_secret
    receiver = Receiver(secret)
    run_id = secrets.token_hex(3)
    request_ids = [f"load-{run_id}-{i:04d}" for i in range(args.requests)]
    latencies: list[float] = []
    rejected: dict[str, int] = {}
    rejection_examples: list[str] = []
    accepted: list[str] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        if time.monotonic() > deadline:
            return
        seconds, content = clips[i % len(clips)]
        body = json.dumps({"content": content, "encoding": "FLAC", "sampleRate": 16000, "languageCode": "en-US",
                           "speakers": -1, "audioType": "default"}).encode()
        t0 = time.monotonic()
        status, answer = http(base, "POST", ASYNC, api_key, body=body,
                              query={"webhook": receiver.url, "request_id": request_ids[i]})
        elapsed = time.monotonic() - t0
        with lock:
            latencies.append(elapsed)
            if status == 200 and answer.get("request_id") == request_ids[i]:
                accepted.append(request_ids[i])
            else:
                code = f"{status} {((answer or {}).get('error') or {}).get('code', '')}".strip()
                rejected[code] = rejected.get(code, 0) + 1
                if len(rejection_examples) < 5:
                    rejection_examples.append(f"{code}: {((answer or {}).get('error') or {}).get('message', '')}")

    try:
        burst_start = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            list(pool.map(send, range(args.requests)))
        burst_seconds = time.monotonic() - burst_start

        # Drain: wait for a webhook per accepted job (bounded by the overall deadline), then ask the status route.
        while time.monotonic() < deadline:
            with receiver.lock:
                if all(rid in receiver.by_request for rid in accepted):
                    break
            time.sleep(0.25)
        with receiver.lock:
            drained_at = receiver.last_at or time.monotonic()
        states: dict[str, str] = {}
        for rid in accepted:
            status, job = http(base, "GET", f"{ASYNC}/{rid}", api_key, timeout=30)
            states[rid] = job.get("status", f"http {status}") if status == 200 else f"http {status}"
        with receiver.lock:
            hooks = {rid: list(v) for rid, v in receiver.by_request.items()}
            bad_signatures = receiver.bad_signatures
    finally:
        receiver.close()
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()

    done = sum(1 for s in states.values() if s == "done")
    failed = sum(1 for s in states.values() if s == "failed")
    unfinished = [rid for rid, s in states.items() if s not in ("done", "failed")]
    no_webhook = [rid for rid in accepted if rid not in hooks]
    lost = sorted(set(unfinished) | set(no_webhook))
    duplicates = sum(len(v) - 1 for rid, v in hooks.items() if rid in states and len(v) > 1)
    strangers = sorted(set(hooks) - set(states))
    audio_seconds = sum(clips[i % len(clips)][0] for i in range(args.requests))
    return {
        "target": "diarize serve (started by this script)" if server is not None else base,
        "requests": args.requests, "concurrency": args.concurrency,
        "clip_seconds": [args.min_seconds, args.max_seconds], "audio_seconds_total": round(audio_seconds, 1),
        "accepted": len(accepted), "rejected": rejected, "rejection_examples": rejection_examples,
        "burst_seconds": round(burst_seconds, 2),
        "requests_per_second": round(len(latencies) / burst_seconds, 1) if burst_seconds else None,
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "latency_max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
        "jobs_done": done, "jobs_failed": failed, "unfinished": len(unfinished),
        "webhooks_received": sum(len(v) for v in hooks.values()), "duplicate_webhooks": duplicates,
        "unexpected_webhooks": len(strangers), "bad_signatures": bad_signatures,
        "lost": len(lost), "lost_request_ids": lost[:20],
        "drain_seconds_after_burst": round(max(0.0, drained_at - burst_start - burst_seconds), 2),
        "total_seconds": round(time.monotonic() - started, 2),
        "timed_out": time.monotonic() >= deadline,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an already running local server (loopback only); default: start one")
    parser.add_argument("--api-key", help="the key for --url")
    parser.add_argument("--webhook-secret", help="the key's webhook secret for --url (to check signatures)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=5.0)
    parser.add_argument("--clips", type=int, default=16, help="distinct clips to cycle through")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="overall limit in seconds")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    if not (1 <= args.requests <= 10_000 and 1 <= args.concurrency <= 64 and args.timeout > 0):
        parser.error("--requests 1..10000, --concurrency 1..64 (the local gateway takes 32 connections)")
    report = run(args)
    for name, value in report.items():
        print(f"{name:28} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    ok = (report["lost"] == 0 and report["duplicate_webhooks"] == 0 and report["bad_signatures"] == 0
          and report["accepted"] == args.requests and report["unfinished"] == 0 and not report["timed_out"])
    print("OK: every request accounted for" if ok else "FAIL: see lost / rejected / duplicates above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
