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


def test_enroll_identify_list_and_delete_voiceprints(tmp_path):
    store = tmp_path / "prints" / "voiceprints.json"
    for name, label in (("alice", "A"), ("bob", "B")):
        af.write(tmp_path / f"{name}.flac", af.demo_voice(label), format="FLAC")
        done = run("enroll", name, tmp_path / f"{name}.flac", "--voiceprints", store)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["name"] == name and "enrolled" in done.stderr
    assert (store.stat().st_mode & 0o777) == 0o600

    done = run(af.DEMO_DIR / "three-speakers.flac", "--identify", "--confidence", "--voiceprints", store, "--quiet")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert sorted(str(s["name"]) for s in body["speakers"]) == ["None", "alice", "bob"]  # the API's shape
    assert all({"speaker_name", "confidence"} <= set(s) for s in body["segments"])

    listed = json.loads(run("voiceprints", "--voiceprints", store).stdout)["voiceprints"]
    assert [v["name"] for v in listed] == ["alice", "bob"] and all("embedding" not in v for v in listed)
    assert run("voiceprints", "--voiceprints", store, "--delete", "alice").returncode == 0
    assert run("voiceprints", "--voiceprints", store, "--delete", "alice").returncode == 1
    assert [v["name"] for v in json.loads(run("voiceprints", "--voiceprints", store).stdout)["voiceprints"]] == ["bob"]
    assert "alice" not in store.read_text()


def test_enroll_refuses_two_voices_and_short_speech(tmp_path):
    samples, _ = af.demo_recording("two-speakers")
    af.write(tmp_path / "both.flac", samples[: 16 * 16000], format="FLAC")
    af.write(tmp_path / "short.flac", af.demo_voice("A", until=4.0), format="FLAC")
    store = tmp_path / "voiceprints.json"
    for audio, reason in (("both.flac", "more than one voice"), ("short.flac", "at least 5 s of speech")):
        done = run("enroll", "alice", tmp_path / audio, "--voiceprints", store)
        assert done.returncode == 1 and reason in done.stderr, done.stderr
    assert not store.exists()
