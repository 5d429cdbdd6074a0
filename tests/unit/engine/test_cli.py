"""The `diarize` command, run as a user runs it."""
import json
import subprocess
import sys

import audio_factory as af

DIARIZE = [sys.executable, "-m", "diarizer.cli"]


def run(*args, cwd=None):
    return subprocess.run([*DIARIZE, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_one_file_prints_the_diarized_object():
    done = run(af.DEMO_DIR / "two-speakers.flac", "--quiet")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["num_speakers"] == 2 and body["segments"][0]["speaker_id"] == "speaker1"


def test_several_files_one_rttm_and_json(tmp_path):
    rttm, out = tmp_path / "all.rttm", tmp_path / "all.json"
    done = run(af.DEMO_DIR / "two-speakers.flac", af.DEMO_DIR / "three-speakers.flac", "--rttm", rttm, "--json", out)
    assert done.returncode == 0, done.stderr
    ids = {line.split()[1] for line in rttm.read_text().splitlines()}
    assert ids == {"two-speakers", "three-speakers"}
    body = json.loads(out.read_text())
    assert body["two-speakers"]["num_speakers"] == 2 and body["three-speakers"]["num_speakers"] == 3
    assert "real-time factor" in done.stderr and "100%" in done.stderr


def test_speaker_count_option():
    done = run(af.DEMO_DIR / "three-speakers.flac", "--speakers", "2", "--quiet")
    assert json.loads(done.stdout)["num_speakers"] == 2


def test_a_bad_file_is_named_and_fails_the_run(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"definitely not audio")
    done = run(bad, af.DEMO_DIR / "two-speakers.flac", "--quiet", "--rttm", tmp_path / "out.rttm")
    assert done.returncode == 1
    assert "broken.wav" in done.stderr and "not a recognised audio file" in done.stderr
    assert "two-speakers" in (tmp_path / "out.rttm").read_text()  # the good file still ran


def test_bad_options_are_usage_errors():
    done = run(af.DEMO_DIR / "two-speakers.flac", "--speakers", "0")
    assert done.returncode == 2 and "speakers" in done.stderr
