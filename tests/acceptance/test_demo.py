"""`make demo` (demo/run_demo.py) end to end, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

from serve_helpers import REPO_ROOT

DEMO = [sys.executable, str(REPO_ROOT / "demo" / "run_demo.py")]


def test_the_demo_prints_who_spoke_when_and_exits_0():
    done = subprocess.run(DEMO, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Number of speakers: 2 (the reference RTTM has 2)" in done.stdout
    assert "Webhook signature: valid" in done.stdout
    table = [line.split() for line in done.stdout.splitlines() if line.startswith("  speaker") and "start" not in line]
    assert len(table) >= 2 and {row[0] for row in table} == {"speaker1", "speaker2"}
    result = json.loads(done.stdout[done.stdout.index('{"num_speakers"'):])
    assert result["num_speakers"] == 2 and len(result["segments"]) == len(table)


def test_the_demo_says_clearly_when_the_result_does_not_come():
    done = subprocess.run([*DEMO, "--timeout", "0.001"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "no result within 0.001 s" in done.stderr and "---- diarize serve log ----" in done.stderr


def test_the_demo_refuses_a_missing_file(tmp_path):
    done = subprocess.run([*DEMO, "--audio", str(tmp_path / "none.wav")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no such file" in done.stderr
