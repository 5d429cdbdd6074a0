"""bench/load.py itself: a tiny run accounts for every request and exits 0; jobs that never finish are reported
lost with a non-zero exit within its timeout; a non-loopback target is refused before any request."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOAD = [sys.executable, str(REPO / "bench" / "load.py")]


def run_load(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*LOAD, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_a_small_burst_is_fully_accounted_for(tmp_path):
    report_path = tmp_path / "load.json"
    done = run_load("--requests", "6", "--concurrency", "3", "--timeout", "90", "--json", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["accepted"] == report["jobs_done"] == report["webhooks_received"] == 6
    assert report["lost"] == 0 and report["duplicate_webhooks"] == 0 and report["bad_signatures"] == 0
    assert report["latency_p50_ms"] > 0 and report["requests_per_second"] > 0
    assert "OK: every request accounted for" in done.stdout


def test_jobs_that_never_finish_are_reported_lost_and_exit_non_zero(start_server, tmp_path):
    server = start_server("--no-worker")  # accepts jobs, never runs them
    report_path = tmp_path / "load.json"
    done = run_load("--url", server.url, "--api-key", server.api_key, "--webhook-secret", server.webhook_secret,
                    "--requests", "3", "--concurrency", "3", "--timeout", "8", "--json", str(report_path))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["accepted"] == 3 and report["lost"] == 3 and report["unfinished"] == 3 and report["timed_out"]
    assert sorted(report["lost_request_ids"]) == report["lost_request_ids"] and len(report["lost_request_ids"]) == 3
    assert "FAIL" in done.stdout


def test_a_non_loopback_target_is_refused():
    done = run_load("--url", "http://10.0.0.1:3000", "--api-key", "x", "--requests", "1", timeout=60)
    assert done.returncode != 0 and "non-loopback" in done.stderr
