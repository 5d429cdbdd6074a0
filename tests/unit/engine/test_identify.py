"""Known voices in the engine: enrolment, identification across recordings, confidence, the voiceprint file."""
import dataclasses
import json
import os
import stat

import numpy as np
import pytest

import audio_factory as af
from diarizer.confidence import with_confidence
from diarizer.identify import MATCH_THRESHOLD, match, speaker_prints
from diarizer.types import DiarizationOptions, EnrollmentError, Voiceprint
from diarizer.voiceprints import MIN_SPEECH_SECONDS, VoiceprintFile

TWO, THREE = af.DEMO_DIR / "two-speakers.flac", af.DEMO_DIR / "three-speakers.flac"


@pytest.fixture(scope="module")
def enrolled(engine):
    """A and B enrolled from the two-speaker demo only; the tests then identify them in the other recording."""
    return {name: engine.enroll(name, [af.encode(af.demo_voice(label), format="FLAC")])
            for name, label in (("alice", "A"), ("bob", "B"))}


def speaker_of(result, label_turns):
    """The output speaker talking most during the reference turns of one voice."""
    talk = {}
    for seg in result.segments:
        for start, end in label_turns:
            talk[seg.speaker_id] = talk.get(seg.speaker_id, 0.0) + max(0.0, min(end, seg.end) - max(start, seg.start))
    return max(talk, key=talk.get)


def test_enrolled_voices_are_named_in_another_recording_and_a_stranger_is_not(engine, enrolled):
    result = engine.diarize(THREE, DiarizationOptions(identify=True, voiceprints=tuple(enrolled.values())))
    _, turns = af.demo_recording("three-speakers")
    by_label = {label: speaker_of(result, [(s, e) for s, e, who in turns if who == label]) for label in "ABC"}
    names = {m.speaker_id: m.name for m in result.speakers}
    assert names[by_label["A"]] == "alice" and names[by_label["B"]] == "bob"
    assert names[by_label["C"]] is None  # never enrolled: stays unnamed
    matched = {m.name: m.match for m in result.speakers if m.name}
    assert all(MATCH_THRESHOLD <= score <= 1.0 for score in matched.values())
    body = result.to_dict()
    assert all(seg["speaker_name"] == names[seg["speaker_id"]] for seg in body["segments"])
    assert body["speakers"] == [m.to_dict() for m in result.speakers] and len(body["speakers"]) == 3


def test_two_speakers_never_get_one_name(engine, enrolled):
    # Only alice is known: the recording's other voices may resemble her, but only one speaker is named.
    result = engine.diarize(THREE, DiarizationOptions(identify=True, voiceprints=(enrolled["alice"],)))
    assert [m.name for m in result.speakers].count("alice") == 1
    # The assignment itself: both speakers prefer voiceprint 0, the better one gets it, the other is unnamed.
    scores = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert match(scores, np.array([True, True]), 0.55) == [0, None]
    assert match(scores, np.array([False, True]), 0.55) == [None, 0]  # a speaker with too little speech
    assert match(scores, np.array([True, True]), 0.95) == [None, None]  # open set: nobody is close enough


def test_enrolment_refuses_short_speech_and_two_voices(engine):
    one_turn = af.demo_voice("A", until=4.0)  # about 2.7 s of speech
    with pytest.raises(EnrollmentError) as short:
        engine.enroll("alice", [af.encode(one_turn, format="FLAC")])
    assert short.value.code == "too_little_speech" and f"{MIN_SPEECH_SECONDS:g} s" in str(short.value)
    samples, _ = af.demo_recording("two-speakers")
    with pytest.raises(EnrollmentError) as two:
        engine.enroll("alice", [af.encode(samples[: 16 * 16000], format="FLAC")])
    assert two.value.code == "several_voices"
    with pytest.raises(EnrollmentError) as mixed:  # two files, each one voice, but not the same voice
        engine.enroll("alice", [af.encode(af.demo_voice("A"), format="FLAC"), af.encode(af.demo_voice("B"), format="FLAC")])
    assert mixed.value.code == "several_voices"


def test_confidence_is_high_on_right_turns_and_low_on_a_turn_given_to_the_wrong_speaker(engine):
    result = engine.diarize(TWO, DiarizationOptions(confidence=True))
    body = result.to_dict()
    assert set(body) == {"num_speakers", "segments"}  # confidence alone adds no names
    assert body["segments"] and all(set(s) == {"speaker_id", "start", "end", "confidence"} for s in body["segments"])
    assert all(0.9 <= s["confidence"] <= 0.99 for s in body["segments"])  # this demo is diarized right throughout

    # The same turns with one long turn handed to the other speaker: that turn's confidence collapses.
    samples, _ = af.demo_recording("two-speakers")
    plain = engine.diarize(TWO)
    longest = max(range(len(plain.segments)), key=lambda i: plain.segments[i].end - plain.segments[i].start)
    swapped = [dataclasses.replace(s, speaker_id="speaker2" if s.speaker_id == "speaker1" else "speaker1")
               if i == longest else s for i, s in enumerate(plain.segments)]
    broken = dataclasses.replace(plain, segments=swapped)
    rescored = with_confidence(samples, broken, speaker_prints(samples, swapped, engine._embed_many), engine._embed_many)
    # Calibrated on the suite's real mistakes (mostly turns that mix two voices, about half right), a turn
    # wholly given to the wrong voice reads "unsure" (under 0.6, the timeline page's band), not near 0.
    assert rescored.segments[longest].confidence < 0.6
    others = [s.confidence for i, s in enumerate(rescored.segments) if i != longest]
    assert min(others) >= 0.9


def test_without_the_new_options_the_output_is_the_contract_exactly(engine):
    plain = engine.diarize(TWO)
    explicit = engine.diarize(TWO, DiarizationOptions(identify=False, confidence=False))
    assert json.dumps(plain.to_dict()) == json.dumps(explicit.to_dict())
    assert set(plain.to_dict()) == {"num_speakers", "segments"}
    assert all(set(s) == {"speaker_id", "start", "end"} for s in plain.to_dict()["segments"])
    assert plain.to_rttm("x") == explicit.to_rttm("x")


def test_a_recording_with_nobody_in_it_gets_an_empty_answer_and_no_voiceprint(engine, enrolled):
    silence = np.zeros(5 * 16000, np.float32)
    asked = engine.diarize_samples(silence, DiarizationOptions(identify=True, confidence=True,
                                                                voiceprints=tuple(enrolled.values())))
    assert asked.to_dict() == {"num_speakers": 0, "segments": [], "speakers": []}
    with pytest.raises(EnrollmentError) as nobody:
        engine.enroll("alice", [af.encode(silence, format="FLAC")])
    assert nobody.value.code == "too_little_speech"


def test_identify_with_no_voiceprints_names_nobody(engine):
    result = engine.diarize(TWO, DiarizationOptions(identify=True))
    assert [m.name for m in result.speakers] == [None, None]
    assert all(s["speaker_name"] is None for s in result.to_dict()["segments"])


def test_voiceprint_file_is_private_atomic_and_keyed_by_name(tmp_path):
    path = tmp_path / "data" / "diarizer" / "voiceprints.json"
    store = VoiceprintFile(path)
    assert store.load() == [] and store.entries() == []
    alice = Voiceprint("alice", tuple(np.linspace(-1, 1, 192)), 12.5)
    assert store.save(alice) is False
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert store.save(Voiceprint("alice", tuple(np.ones(192)), 20.0)) is True  # enrolling again replaces
    assert [(v.name, v.seconds) for v in store.load()] == [("alice", 20.0)]
    assert [e["name"] for e in store.entries()] == ["alice"] and "embedding" not in store.entries()[0]
    assert store.delete("alice") is True and store.delete("alice") is False and store.load() == []
    assert "embedding" not in repr(alice) and "0.99" not in repr(alice)  # prints stay out of reprs and logs
    other = tmp_path / "notes.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a voiceprint file"):
        VoiceprintFile(other).save(alice)
    assert other.read_text() == '{"hello": 1}'


def test_default_file_is_under_the_users_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert VoiceprintFile().path == tmp_path / "diarizer" / "voiceprints.json"


def test_a_plain_diarization_loads_none_of_the_identification_code():
    import subprocess
    import sys

    script = ("import sys; from diarizer import Diarizer; Diarizer().diarize(sys.argv[1]); "
              "print(sorted(m for m in ('diarizer.identify', 'diarizer.confidence', 'diarizer.voiceprints') "
              "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script, str(TWO)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
