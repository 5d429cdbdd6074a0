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
    # naming a voiceprint file asks for names: without --identify it was silently ignored
    named = json.loads(run(af.DEMO_DIR / "three-speakers.flac", "--voiceprints", store, "--quiet").stdout)
    assert sorted(str(s["name"]) for s in named["speakers"]) == ["None", "alice", "bob"]
    plain = json.loads(run(af.DEMO_DIR / "three-speakers.flac", "--quiet").stdout)
    assert "speakers" not in plain and all("speaker_name" not in s for s in plain["segments"])

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


def test_files_sharing_a_name_keep_their_own_results(tmp_path):
    """a/my clip.flac and b/my clip.flac: two results, IDs that are one RTTM token each."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    (tmp_path / "a" / "my clip.flac").write_bytes((af.DEMO_DIR / "two-speakers.flac").read_bytes())
    (tmp_path / "b" / "my clip.flac").write_bytes((af.DEMO_DIR / "three-speakers.flac").read_bytes())
    rttm, out = tmp_path / "all.rttm", tmp_path / "all.json"
    done = run(tmp_path / "a" / "my clip.flac", tmp_path / "b" / "my clip.flac", "--rttm", rttm, "--json", out, "--quiet")
    assert done.returncode == 0, done.stderr
    body = json.loads(out.read_text())
    assert {k: v["num_speakers"] for k, v in body.items()} == {"my_clip": 2, "my_clip-2": 3}
    lines = rttm.read_text().splitlines()
    assert {line.split()[1] for line in lines} == {"my_clip", "my_clip-2"}
    assert all(len(line.split()) == 10 for line in lines)


def test_an_output_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path):
    done = run(af.DEMO_DIR / "two-speakers.flac", "--quiet", "--json", tmp_path / "missing" / "out.json")
    assert done.returncode == 1
    assert "cannot write" in done.stderr and "Traceback" not in done.stderr


def test_a_damaged_voiceprint_file_is_named_before_any_work(tmp_path):
    store = tmp_path / "voiceprints.json"
    store.write_text(json.dumps({"format": "diarizer-voiceprints", "version": 1,
                                 "voiceprints": [{"name": "alice", "seconds": 8.0, "embedding": [0.1] * 12}]}))
    done = run(af.DEMO_DIR / "two-speakers.flac", "--identify", "--voiceprints", store, "--quiet")
    assert done.returncode == 2 and "voiceprint 1 is damaged" in done.stderr and "Traceback" not in done.stderr
    store.write_text("[]")
    listed = run("voiceprints", "--voiceprints", store)
    assert listed.returncode == 1 and "not a voiceprint file" in listed.stderr and "Traceback" not in listed.stderr


def test_a_bad_thread_count_is_an_error_not_a_traceback():
    import os

    done = subprocess.run([*DIARIZE, str(af.DEMO_DIR / "two-speakers.flac"), "--quiet"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "DIARIZER_THREADS": "abc"})
    assert done.returncode == 1
    assert "DIARIZER_THREADS" in done.stderr and "Traceback" not in done.stderr


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback():
    """`diarize a.flac | head -c 10`: the reader is gone before the JSON is written."""
    process = subprocess.Popen([*DIARIZE, str(af.DEMO_DIR / "two-speakers.flac"), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # like `head` exiting before diarize prints
    _, stderr = process.communicate(timeout=300)
    assert "Traceback" not in stderr.decode() and "BrokenPipe" not in stderr.decode(), stderr.decode()
    assert process.returncode == 1


def test_help_names_every_subcommand_and_format():
    done = run("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for word in ("enroll", "voiceprints", "serve", "AIFF", "AU", "instead of stdout"):
        assert word in text


def test_an_output_that_would_overwrite_the_recording_or_another_output_is_refused_before_any_work(tmp_path):
    """`diarize talk.wav --json talk.wav` overwrote the recording with its own result (found by fuzzing the CLI)."""
    audio = tmp_path / "talk.flac"
    audio.write_bytes((af.DEMO_DIR / "two-speakers.flac").read_bytes())
    original = audio.read_bytes()
    link = tmp_path / "link.flac"
    link.symlink_to(audio)
    for args in (("--json", audio), ("--html", link), ("--rttm", tmp_path / "." / "talk.flac")):
        done = run(audio, "--quiet", *args)
        assert done.returncode == 2 and "input recording" in done.stderr, (args, done.stderr)
    done = run(audio, "--quiet", "--json", tmp_path / "out", "--rttm", tmp_path / "out")
    assert done.returncode == 2 and "same file" in done.stderr
    assert audio.read_bytes() == original and not (tmp_path / "out").exists()


def test_a_file_name_that_is_not_utf8_is_written_to_rttm_and_the_page(tmp_path):
    """A Latin-1 name from an old archive: the RTTM and the page raised UnicodeEncodeError."""
    import os

    name = os.fsdecode(b"caf\xe9.flac")
    (tmp_path / name).write_bytes((af.DEMO_DIR / "two-speakers.flac").read_bytes())
    done = subprocess.run([*DIARIZE, name, "--quiet", "--rttm", "out.rttm", "--html", "out.html"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "out.rttm").read_bytes().startswith(b"SPEAKER caf\xe9 1 ")  # the name's own bytes
    assert '"audioSrc": "caf%E9.flac"' in (tmp_path / "out.html").read_text(encoding="utf-8")


def test_a_full_disk_behind_stdout_is_an_error_not_a_traceback():
    with open("/dev/full", "w") as full:
        done = subprocess.run([*DIARIZE, str(af.DEMO_DIR / "two-speakers.flac"), "--quiet"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 1
    assert "cannot write the result to stdout" in done.stderr and "Traceback" not in done.stderr


def test_a_page_too_big_to_embed_the_audio_in_is_refused_before_diarizing(tmp_path):
    big = tmp_path / "big.wav"
    with open(big, "wb") as out:
        out.write((af.DEMO_DIR / "two-speakers.flac").read_bytes())
        out.truncate(26 * 1024 * 1024)
    done = run(big, "--quiet", "--html", tmp_path / "page.html", "--embed-audio")
    assert done.returncode == 2 and "up to 25 MB" in done.stderr and "26.0 MB" in done.stderr
    assert not (tmp_path / "page.html").exists()


def test_two_outputs_on_dev_null_are_no_clash(tmp_path):
    done = run(af.DEMO_DIR / "two-speakers.flac", "--quiet", "--json", "/dev/null", "--rttm", "/dev/null")
    assert done.returncode == 0, done.stderr
