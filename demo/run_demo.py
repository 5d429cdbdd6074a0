"""`make demo`: start the local service, diarize the bundled conversation through the real API, show who spoke when.

Starts `diarize serve` on a free port with a throw-away data dir, runs a webhook receiver on 127.0.0.1, sends
demo/two-speakers.flac to the v2 async route (what the DeepAffects SDK calls), waits for the signed webhook,
prints the speakers as a table and the JSON, and stops the server. Standard library + this project only.

    python demo/run_demo.py [--audio FILE] [--timeout SECONDS]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

from diarizer_service.local_server.child import ServeProcess
from diarizer_service.webhooks import verify_signature  # the check the README shows receivers

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parent
START_TIMEOUT = 60.0


class WebhookReceiver:
    """Records the POSTs it receives (raw body + headers) on 127.0.0.1, in a thread."""

    def __init__(self):
        self.received: queue.Queue = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def submit(service: ServeProcess, api_key: str, audio: bytes, webhook: str, request_id: str) -> dict:
    query = urllib.parse.urlencode({"apikey": api_key, "webhook": webhook, "request_id": request_id})
    body = {"content": base64.b64encode(audio).decode(), "encoding": "FLAC", "sampleRate": 16000,
            "languageCode": "en-US", "speakers": -1}
    request = urllib.request.Request(f"{service.url}/audio/generic/api/v2/async/diarize?{query}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"the API answered {error.code}: {error.read().decode(errors='replace')}") from error


def reference_speakers(audio_path: Path) -> int | None:
    rttm = audio_path.with_suffix(".rttm")
    if not rttm.exists():
        return None
    return len({line.split()[7] for line in rttm.read_text().splitlines() if line.startswith("SPEAKER")})


def print_result(audio_path: Path, diarized: dict, signature_ok: bool, elapsed: float) -> None:
    segments = diarized["segments"]
    shown = audio_path.relative_to(REPO_ROOT) if audio_path.is_relative_to(REPO_ROOT) else audio_path
    print(f"\nWho spoke when in {shown} (answered in {elapsed:.1f} s):\n")
    print(f"  {'speaker':<10} {'start':>7} {'end':>7} {'length':>7}")
    for segment in segments:
        start, end = segment["start"], segment["end"]
        print(f"  {segment['speaker_id']:<10} {start:7.2f} {end:7.2f} {end - start:7.2f}")
    expected = reference_speakers(audio_path)
    reference = f" (the reference RTTM has {expected})" if expected is not None else ""
    print(f"\nNumber of speakers: {diarized['num_speakers']}{reference}")
    print(f"Webhook signature: {'valid' if signature_ok else 'INVALID'}")
    print("\nThe webhook's JSON (the DeepAffects `response` object):")
    lines = [f"  {json.dumps(segment)}" for segment in segments]
    print(f'{{"num_speakers": {diarized["num_speakers"]}, "segments": [\n' + ",\n".join(lines) + "\n]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=DEMO_DIR / "two-speakers.flac", help="a FLAC/WAV/OGG/MP3 file")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the result (default 180)")
    args = parser.parse_args(argv)
    audio_path = args.audio.resolve()
    if not audio_path.is_file():
        print(f"run_demo: no such file: {audio_path}", file=sys.stderr)
        return 2

    api_key = "dk_demo_" + secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="diarizer-demo-") as tmp:
        receiver, service = WebhookReceiver(), None
        try:
            print("Starting the local service (diarize serve)...", flush=True)
            service = ServeProcess(Path(tmp) / "data", api_key, Path(tmp) / "serve.log", "--log-level", "WARNING",
                                   start_timeout=START_TIMEOUT)
            print(f"Listening on {service.url}; sending {audio_path.name} to POST "
                  "/audio/generic/api/v2/async/diarize with a webhook...", flush=True)
            began = time.monotonic()
            reply = submit(service, api_key, audio_path.read_bytes(), receiver.url, f"demo-{int(time.time())}")
            print(f"Accepted: {json.dumps(reply)}; waiting for the webhook...", flush=True)
            try:
                headers, body = receiver.received.get(timeout=args.timeout)
            except queue.Empty:
                raise RuntimeError(f"no result within {args.timeout:g} s (try a longer --timeout on a slow "
                                   "machine; the server log is below)") from None
            payload = json.loads(body)
            if "error" in payload:
                raise RuntimeError(f"the job failed: {payload['error']['code']}: {payload['error']['message']}")
            print_result(audio_path, payload["response"], verify_signature(service.webhook_secret, headers, body),
                         time.monotonic() - began)
            return 0
        except BrokenPipeError:  # e.g. `run_demo.py | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        except (RuntimeError, OSError) as exc:
            print(f"\nrun_demo: {exc}", file=sys.stderr)
            if service is not None:
                print("---- diarize serve log ----\n" + service.log()[-4000:], file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            if service is not None:
                service.stop()
            receiver.close()


if __name__ == "__main__":
    sys.exit(main())
