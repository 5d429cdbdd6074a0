"""From frame decisions to segments: timing, overlap, merging and speaker names."""
import numpy as np

from diarizer.reconstruction import (
    digital_silence,
    label_by_first_appearance,
    merge_same_speaker,
    select_speakers,
    speaker_count,
    to_segments,
)
from diarizer.segmentation import FRAME_DURATION, FRAME_STEP, SAMPLE_RATE, frames_in, window_starts, WINDOW_SAMPLES


def test_window_layout_covers_the_audio_and_ends_at_its_end():
    n = 16000 * 37
    starts = window_starts(n, 5.0)
    assert starts[0] == 0 and starts[-1] + WINDOW_SAMPLES == n
    assert all(b - a <= 5 * 16000 for a, b in zip(starts, starts[1:]))
    assert window_starts(16000 * 4, 5.0) == [0]


def test_frames_per_window_match_the_model():
    assert frames_in(160000) == 589


def test_speaker_count_thresholds():
    card = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
    assert list(speaker_count(card, onset=0.5, overlap=0.5)) == [0, 1, 2]


def test_select_keeps_the_best_supported_speakers():
    scores = np.array([[0.9, 0.2, 0.0], [0.6, 0.7, 0.1], [0.0, 0.0, 0.0]])
    count = np.array([1, 2, 1])
    active = select_speakers(count, scores, exclusive=False)
    assert active.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert select_speakers(count, scores, exclusive=True).sum(axis=1).max() == 1


def test_runs_of_frames_become_segments_in_seconds():
    active = np.zeros((100, 2), np.int8)
    active[10:20, 0] = 1
    active[50:60, 1] = 1
    turns = to_segments(active, duration=100 * FRAME_STEP)
    assert [t[0] for t in turns] == [0, 1]
    (_, s0, e0), (_, s1, e1) = turns
    assert abs((e0 - s0) - 10 * FRAME_STEP) < 1e-6 and abs((e1 - s1) - 10 * FRAME_STEP) < 1e-6
    assert s0 < s1


def test_merge_joins_close_turns_of_one_speaker_only():
    turns = [(0, 0.0, 1.0), (0, 1.2, 2.0), (1, 2.1, 3.0), (0, 5.0, 6.0)]
    merged = sorted(merge_same_speaker(turns, max_gap=0.5), key=lambda t: t[1])
    assert merged == [(0, 0.0, 2.0), (1, 2.1, 3.0), (0, 5.0, 6.0)]


def test_speakers_are_named_by_first_appearance():
    segments = label_by_first_appearance([(7, 3.0, 4.0), (2, 0.5, 1.0), (7, 1.5, 2.0)])
    assert [(s.speaker_id, s.start) for s in segments] == [("speaker1", 0.5), ("speaker2", 1.5), ("speaker2", 3.0)]


def test_segments_hold_plain_floats_not_numpy_scalars():
    """Frame arithmetic yields numpy scalars; a library user's repr and JSON must show plain numbers."""
    segments = label_by_first_appearance([(0, np.float64(0.25), np.float64(1.5))])
    assert type(segments[0].start) is float and type(segments[0].end) is float
    assert repr(segments[0]).startswith("Segment(speaker_id='speaker1', start=0.25, end=1.5")
    assert all(type(v) is float for v in (segments[0].to_dict()["start"], segments[0].to_dict()["end"]))


def test_merge_never_bridges_a_gap_where_someone_else_talks():
    turns = [(0, 0.0, 1.0), (1, 1.05, 1.15), (0, 1.2, 2.0), (0, 1.9, 2.5)]
    merged = sorted(merge_same_speaker(turns, max_gap=0.5), key=lambda t: (t[1], t[0]))
    assert merged == [(0, 0.0, 1.0), (1, 1.05, 1.15), (0, 1.2, 2.5)]  # overlapping runs still join


def test_digital_silence_is_found_only_where_a_whole_frame_stays_under_the_peak(tmp_path):
    rng = np.random.default_rng(0)
    samples = (0.05 * rng.standard_normal(SAMPLE_RATE * 4)).astype(np.float32)  # 4 s of sound
    samples[SAMPLE_RATE : 2 * SAMPLE_RATE] = 0.0  # 1 s of digital silence
    samples[int(2.5 * SAMPLE_RATE) : 3 * SAMPLE_RATE] = 1e-5 * rng.standard_normal(SAMPLE_RATE // 2)  # -100 dBFS dither
    samples[int(2.75 * SAMPLE_RATE)] = 0.01  # one click: the frames around it are not silent
    frames = int(4 / FRAME_STEP) + 20  # more frames than the audio: those past its end are never silent
    silent = digital_silence(samples, frames, peak_db=-80.0)
    start = np.arange(frames) * FRAME_STEP
    inside = lambda a, b: (start >= a) & (start + FRAME_DURATION <= b)  # noqa: E731
    assert silent[inside(1.0 + FRAME_STEP, 2.0 - 2 * FRAME_STEP)].all()
    assert not silent[~inside(1.0, 2.0) & ~inside(2.5, 3.0)].any()
    click = 2.75
    assert not silent[(start <= click) & (start + FRAME_DURATION >= click)].any()
    assert silent[inside(2.5 + FRAME_STEP, click - 2 * FRAME_DURATION)].all()
    strict = digital_silence(samples, frames, peak_db=-110.0)  # the dither is above -110 dBFS, zeros are not
    assert strict[inside(1.0 + FRAME_STEP, 2.0 - 2 * FRAME_STEP)].all() and not strict[start >= 2.0].any()
    # Read in chunks from a memory map, the answer is the same.
    path = tmp_path / "samples.f32"
    samples.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    assert np.array_equal(digital_silence(mapped, frames, peak_db=-80.0, chunk_frames=7), silent)
