"""The whole engine on real audio: the bundled recordings and, when present, LibriSpeech conversations."""
import subprocess
import sys

import numpy as np
import pytest

import audio_factory as af
from diarizer import AudioDecodeError, DiarizationOptions, InvalidOptionsError


def der(reference, segments, duration, component="diarization error rate"):
    """Diarization error rate (or one of its components, as a fraction of speech) with
    pyannote.metrics, forgiving +-0.25 s around reference boundaries (strict collar-0 figures are
    the benchmark's job)."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for i, (start, end, label) in enumerate(reference):
        ref[Segment(start, end), i] = label
    for i, s in enumerate(segments):
        hyp[Segment(s.start, s.end), i] = s.speaker_id
    detail = DiarizationErrorRate(collar=0.5)(ref, hyp, uem=Segment(0, duration), detailed=True)
    return detail[component] if component == "diarization error rate" else detail[component] / detail["total"]


@pytest.mark.parametrize("name, speakers", [("two-speakers", 2), ("three-speakers", 3)])
def test_bundled_conversations(engine, name, speakers):
    samples, reference = af.demo_recording(name)
    result = engine.diarize(af.encode(samples, 16000, "FLAC"))
    assert result.num_speakers == speakers
    assert der(reference, result.segments, result.duration) < 0.15


@af.requires_shared_eval
@pytest.mark.parametrize("seed", [21, 23])
def test_librispeech_two_speaker_conversation(engine, tmp_path, seed):
    """A one-minute, two-speaker conversation from the evaluation generator (exact voice-level
    reference, pauses, overlap, noise)."""
    subprocess.run(
        [sys.executable, str(af.SHARED_EVAL / "make_conversations.py"), "--pool", str(af.LIBRI_POOL),
         "--out", str(tmp_path), "--count", "1", "--speakers", "2-2", "--minutes", "1-1", "--seed", str(seed)],
        check=True, capture_output=True, timeout=120,
    )
    audio = next(tmp_path.glob("*.flac"))
    reference = [
        (float(p[3]), float(p[3]) + float(p[4]), p[7])
        for p in (line.split() for line in (tmp_path / "reference.rttm").read_text().splitlines())
    ]
    result = engine.diarize(audio)
    assert result.num_speakers == 2
    assert der(reference, result.segments, result.duration) < 0.10


@pytest.mark.parametrize("n", [1, 2, 4])
def test_a_given_speaker_count_is_obeyed(engine, n):
    samples, _ = af.demo_recording("three-speakers")
    assert engine.diarize_samples(samples, DiarizationOptions(speakers=n)).num_speakers == n


@pytest.mark.parametrize("start, end", [(2, 10), (2, 12), (10, 18)])
@pytest.mark.parametrize("option", ["speakers", "min_speakers"])
def test_a_short_clip_gets_the_speakers_asked_for_where_they_talk(engine, start, end, option):
    """8-10 s of the three-speaker recording, all three talking: one or two windows, whose prints lump two of
    the voices. Asked for three, the engine gives three, and the right ones (the lumped speaker is split on
    prints of its turns' pieces; before, two speakers came back whatever was asked)."""
    samples, reference = af.demo_recording("three-speakers")
    clip = samples[start * 16000 : end * 16000]
    truth = [(max(a, start) - start, min(b, end) - start, who) for a, b, who in reference if min(b, end) > max(a, start)]
    result = engine.diarize_samples(clip, DiarizationOptions(**{option: 3}))
    assert result.num_speakers == 3
    assert der(truth, result.segments, result.duration) < 0.05


def test_bounds_limit_the_estimate(engine):
    samples, _ = af.demo_recording("three-speakers")
    assert engine.diarize_samples(samples, DiarizationOptions(max_speakers=2)).num_speakers == 2
    samples, _ = af.demo_recording("two-speakers")
    assert engine.diarize_samples(samples, DiarizationOptions(min_speakers=3)).num_speakers == 3


def test_conflicting_bounds_are_rejected():
    with pytest.raises(InvalidOptionsError):
        DiarizationOptions(min_speakers=4, max_speakers=2)
    with pytest.raises(InvalidOptionsError):
        DiarizationOptions(speakers=0)


@pytest.mark.parametrize(
    "samples",
    [af.silence(20.0), af.silence(0.2), af.demo_recording()[0][:3200], np.zeros(0, np.float32)],
    ids=["20 s of silence", "0.2 s of silence", "0.2 s of speech", "nothing"],
)
def test_silence_and_tiny_clips_give_an_empty_result(engine, samples):
    result = engine.diarize(af.encode(samples, 16000, "WAV")) if len(samples) else engine.diarize_samples(samples)
    assert result.num_speakers == 0 and result.segments == []
    assert result.to_dict() == {"num_speakers": 0, "segments": []}


@pytest.mark.parametrize("name", ["wav_stereo", "wav_8k", "mp3", "ogg_vorbis", "flac_44k_stereo"])
def test_other_formats_give_the_same_speakers(engine, name):
    samples, _ = af.demo_recording("two-speakers")
    assert engine.diarize(af.variant(samples, name)).num_speakers == 2


def test_corrupt_file_is_a_clear_error(engine):
    samples, _ = af.demo_recording()
    with pytest.raises(AudioDecodeError):
        engine.diarize(af.corrupt(af.encode(samples, 16000, "FLAC")))


def test_output_contract(engine):
    samples, _ = af.demo_recording("two-speakers")
    result = engine.diarize_samples(samples)
    body = result.to_dict()
    assert body["num_speakers"] == 2
    ids = [s["speaker_id"] for s in body["segments"]]
    assert ids[0] == "speaker1" and set(ids) == {"speaker1", "speaker2"}
    starts = [s["start"] for s in body["segments"]]
    assert starts == sorted(starts)
    assert all(0 <= s["start"] < s["end"] <= result.duration + 1e-6 for s in body["segments"])
    rttm = result.to_rttm("demo").splitlines()
    assert len(rttm) == len(body["segments"]) and rttm[0].startswith("SPEAKER demo 1 ")


def test_exclusive_output_never_overlaps(engine):
    samples, _ = af.demo_recording("three-speakers")
    segments = engine.diarize_samples(samples, DiarizationOptions(exclusive=True)).segments
    for a, b in zip(segments, segments[1:]):
        assert a.end <= b.start + 1e-6


def test_merging_joins_turns_of_the_same_speaker(engine):
    samples, _ = af.demo_recording("two-speakers")
    merged = engine.diarize_samples(samples, DiarizationOptions(merge_adjacent=True)).segments
    raw = engine.diarize_samples(samples, DiarizationOptions(merge_adjacent=False)).segments
    assert len(merged) <= len(raw)
    by_speaker = {}
    for s in merged:
        by_speaker.setdefault(s.speaker_id, []).append(s)
    gap = engine.config.merge_gap
    for turns in by_speaker.values():
        assert all(b.start - a.end >= gap - 1e-6 for a, b in zip(turns, turns[1:]))


def test_progress_is_reported(engine):
    samples, _ = af.demo_recording("two-speakers")
    seen = []
    engine.diarize_samples(samples, progress=seen.append)
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)


def test_distinct_seconds_counts_a_moment_once_however_many_windows_hear_it():
    from diarizer.pipeline import WindowResults, distinct_seconds
    from diarizer.segmentation import POWERSET, SAMPLE_RATE, frames_in, window_starts

    # 20 s of audio, 10 s windows every 5 s: 0-10, 5-15, 10-20. Local speaker 0 of the first window talks
    # in 0-5 s, which no other window hears; local speaker 0 of the middle window talks in 7-13 s,
    # which two windows hear.
    starts = np.array(window_starts(20 * SAMPLE_RATE, 5.0))
    frames = frames_in(10 * SAMPLE_RATE)
    silent, speaker0 = POWERSET.tolist().index([0, 0, 0]), POWERSET.tolist().index([1, 0, 0])
    probs = np.zeros((len(starts), frames, len(POWERSET)), np.float32)
    probs[..., silent] = 1.0
    times = np.arange(frames) * 10.0 / frames
    for w, (a, b) in [(0, (0.0, 5.0)), (1, (2.0, 8.0))]:
        talking = (times >= a) & (times < b)
        probs[w, talking, silent], probs[w, talking, speaker0] = 0.0, 1.0
    seconds = np.zeros((len(starts), 3), np.float32)
    seconds[0, 0], seconds[1, 0] = 5.0, 6.0
    windows = WindowResults(starts, probs, np.zeros((len(starts), 3, 192), np.float32), seconds)
    distinct = distinct_seconds(windows)
    assert distinct[0, 0] == pytest.approx(5.0, abs=0.1)  # heard by one window only: all of it counts
    assert distinct[1, 0] == pytest.approx(3.0, abs=0.1)  # heard by two windows: half in each
    assert not distinct[2].any()


def test_a_quiet_recording_gets_the_answer_of_the_same_recording_at_a_normal_level(engine):
    """Both models drift far below full scale (segmentation-3.0's input normalisation floor, CAM++'s log-mel
    floor): without the working level, 28 % of this recording 60 dB quieter comes out otherwise than at full level."""
    samples, _ = af.demo_recording("three-speakers")
    normal = engine.diarize(af.encode(samples, 16000, "WAV", "FLOAT"))
    faint = samples * np.float32(10 ** (-60 / 20))
    reference = [(s.start, s.end, s.speaker_id) for s in normal.segments]
    for quiet in (engine.diarize(af.encode(faint, 16000, "WAV", "FLOAT")), engine.diarize_samples(faint)):
        assert quiet.num_speakers == normal.num_speakers == 3
        assert der(reference, quiet.segments, quiet.duration) < 0.01


def test_digital_silence_inside_a_turn_is_never_given_to_a_speaker(engine):
    """Half a second of digital silence in the middle of each longer turn (an edit, a muted line): the
    segmentation model alone carries 4 of these 6 turns across their gap."""
    samples, reference = af.demo_recording("three-speakers")
    gaps = [((a + b) / 2 - 0.25, (a + b) / 2 + 0.25) for a, b, _ in reference if b - a >= 2]
    assert len(gaps) >= 5
    for a, b in gaps:
        samples[int(a * 16000) : int(b * 16000)] = 0.0
    result = engine.diarize_samples(samples)
    assert result.num_speakers == 3
    for a, b in gaps:
        covered = sum(max(0.0, min(s.end, b) - max(s.start, a)) for s in result.segments)
        assert covered < 0.1, (a, b, covered)  # a frame's reach at each edge (62 ms), no more
