"""What a library caller can get wrong gets the package's own exception (diarizer.types), never numpy's or
io's, and a silently accepted wrong option is refused (found by fuzzing the library, fourteenth session)."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest

import audio_factory as af
from diarizer import AudioDecodeError, DiarizationOptions, InvalidOptionsError
from diarizer.types import EnrollmentError, Voiceprint

DEMO = af.DEMO_DIR / "two-speakers.flac"


def test_an_array_passed_to_diarize_points_to_diarize_samples(engine):
    with pytest.raises(AudioDecodeError, match="diarize_samples"):
        engine.diarize(np.zeros(16000, np.float32))
    with pytest.raises(AudioDecodeError):
        engine.diarize(None)


def test_a_stream_that_cannot_seek_is_named(engine):
    read_end, write_end = os.pipe()
    os.write(write_end, DEMO.read_bytes()[:4096])
    os.close(write_end)
    with open(read_end, "rb") as pipe, pytest.raises(AudioDecodeError, match="cannot seek"):
        engine.diarize(pipe)


def test_one_file_object_diarized_twice_gives_the_same_answer(engine):
    with open(DEMO, "rb") as source:
        first = engine.diarize(source)
        second = engine.diarize(source)  # was "the audio is empty (0 bytes)": read on from where the first ended
    assert first.to_dict() == second.to_dict() and first.num_speakers == 2


@pytest.mark.parametrize("limit", [float("nan"), 0, -5, None, "60"])
def test_a_limit_that_is_no_limit_is_refused(engine, limit):
    with pytest.raises(InvalidOptionsError, match="max_seconds"):
        engine.diarize(DEMO, max_seconds=limit)


@pytest.mark.parametrize("options", [
    {"speakers": 2.5}, {"speakers": float("nan")}, {"speakers": True}, {"speakers": "2"}, {"speakers": None},
    {"min_speakers": 1.5}, {"max_speakers": "3"},
])
def test_speaker_counts_must_be_whole_numbers(options):
    with pytest.raises(InvalidOptionsError):
        DiarizationOptions(**options)
    assert DiarizationOptions(speakers=np.int64(2)).speakers == 2  # numpy's integers are integers


@pytest.mark.parametrize("embedding", [(0.1,) * 10, (float("nan"),) * 192, ("x",) * 192])
def test_a_voiceprint_that_is_no_embedding_is_refused(engine, embedding):
    with pytest.raises(InvalidOptionsError, match="voiceprint"):
        options = DiarizationOptions(identify=True, voiceprints=(Voiceprint("alice", embedding, 10.0),))
        engine.diarize(DEMO, options)


def test_enrolment_names_and_sources(engine, tmp_path):
    with pytest.raises(EnrollmentError) as refused:
        engine.enroll(None, [DEMO])
    assert refused.value.code == "invalid_name"
    missing = tmp_path / "nobody.wav"
    with pytest.raises(AudioDecodeError, match="nobody.wav"):  # one path, not a list of one-letter paths
        engine.enroll("alice", str(missing))
    with pytest.raises(EnrollmentError):  # one recording as bytes: two voices in it
        engine.enroll("alice", io.BytesIO(DEMO.read_bytes()).getvalue())


def test_a_folder_or_a_pipe_given_as_audio_is_named_for_what_it_is(engine, tmp_path):
    fifo = tmp_path / "audio.wav"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(AudioDecodeError, match="not a regular file"):  # was "no such audio file"
            engine.diarize(path)


def test_an_object_that_reads_but_cannot_seek_is_named(engine):
    class ReadOnly:
        def __init__(self, data: bytes):
            self._data = io.BytesIO(data)

        def read(self, n=-1):
            return self._data.read(n)

    with pytest.raises(AudioDecodeError, match="cannot seek"):
        engine.diarize(ReadOnly(DEMO.read_bytes()))


def test_a_voiceprint_held_as_a_numpy_array_is_taken(engine):
    embedding = np.ones(192) / np.sqrt(192)
    options = DiarizationOptions(identify=True, voiceprints=(Voiceprint("alice", embedding, 10.0),))
    assert engine.diarize(DEMO, options).num_speakers == 2
