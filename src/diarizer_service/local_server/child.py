"""`diarize serve` as a child process on a free loopback port: what `make demo` and the load
benchmark start, talk to over HTTP, and stop."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


class ServeProcess:
    """Starts `diarize serve --port 0` with its own data dir and key; its output goes to `log_path`.

    `url` and `webhook_secret` are read from the start-up banner. The caller's DIARIZER_* variables
    are not passed on: the child is a local-mode server whatever the caller's environment says.
    """

    def __init__(self, data_dir: Path, api_key: str, log_path: Path, *extra_args: str,
                 start_timeout: float = 60.0):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIARIZER_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed by stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "diarizer.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(data_dir), "--api-key", api_key, "--no-access-log", *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url, self.webhook_secret = self._wait_until_listening(start_timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_until_listening(self, timeout: float) -> tuple[str, str | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            text = self.log()
            listening = re.search(r"listening on (http://127\.0\.0\.1:\d+)", text)
            if listening:
                secret = re.search(r"webhook secret: (\S+)", text)
                return listening.group(1), secret.group(1) if secret else None
            time.sleep(0.1)
        reason = (f"exited with code {self.process.returncode}" if self.process.poll() is not None
                  else f"did not start within {timeout:g} s")
        self.stop()
        raise RuntimeError(f"`diarize serve` {reason}:\n{self.log()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM (a clean stop), then SIGKILL if it takes more than 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
