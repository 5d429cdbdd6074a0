"""`diarize serve` as a real subprocess on a free port with a temporary data dir (see conftest.py for fixtures).

The server is started with `--port 0` and the port is read from its "listening on" line, so two test runs never
race for a port. Its output goes to a file (a pipe nobody reads could fill up and block the server).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_TWO_SPEAKERS = REPO_ROOT / "demo" / "two-speakers.flac"
START_TIMEOUT = 60.0


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


class LocalServer:
    def __init__(self, data_dir: Path, log_path: Path, api_key: str | None, extra_args: list[str],
                 env_overrides: dict | None = None):
        """With `api_key` None the server makes one on first start and prints it (read back from the log)."""
        self.data_dir, self.log_path, self.api_key = data_dir, log_path, api_key
        command = [sys.executable, "-m", "diarizer.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
                   "--retry-delay", "0.5", *(["--api-key", api_key] if api_key else []), *extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name in [n for n in env if n.startswith("DIARIZER_")]:  # nothing from the test process leaks in
            del env[name]
        env.update(env_overrides or {})
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        self.url = self._wait_until_listening()
        if self.api_key is None:
            found = re.search(r"api key: (\S+)", self.log())
            self.api_key = found.group(1) if found else None
        found = re.search(r"webhook secret: (\S+)", self.log())
        self.webhook_secret = found.group(1) if found else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_until_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"listening on http://(127\.0\.0\.1|0\.0\.0\.0):(\d+)", self.log())
            if found:  # a server on every interface is reached through loopback here
                return f"http://127.0.0.1:{found.group(2)}"
            if self.process.poll() is not None:
                pytest.fail(f"diarize serve exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"diarize serve did not listen within {START_TIMEOUT:g} s:\n{self.log()}")

    # ---- HTTP helpers (plain urllib: what any client would send) ---------------------------------------------
    def request(self, method: str, path: str, *, body: dict | bytes | None = None, query: dict | None = None,
                headers: dict | None = None, with_key: bool = True, timeout: float = 60.0) -> tuple[int, dict | list]:
        query = dict(query or {})
        if with_key:
            query.setdefault("apikey", self.api_key)
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def submit(self, audio_b64: str, webhook: str, request_id: str) -> None:
        """The v2 async request, as the official SDK sends it."""
        status, answer = self.request("POST", "/audio/generic/api/v2/async/diarize",
                                      body={"content": audio_b64, "encoding": "FLAC", "sampleRate": 16000,
                                            "languageCode": "en-US", "speakers": -1, "audioType": "default",
                                            "vad": True},
                                      query={"webhook": webhook, "request_id": request_id})
        assert (status, answer) == (200, {"request_id": request_id, "api": "diarize"})

    def job(self, request_id: str) -> dict:
        status, answer = self.request("GET", f"/audio/generic/api/v2/async/diarize/{request_id}")
        assert status == 200, answer
        return answer

    # ---- stopping --------------------------------------------------------------------------------------------
    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()
