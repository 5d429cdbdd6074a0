"""The evaluation suite's make-up (bench/suite.py): parts kept apart by seed and speakers, and the quiet condition."""
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audio_factory as af

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "bench"))

import suite  # noqa: E402


def test_no_seed_is_shared_between_parts_or_conditions():
    seeds = [suite.SEED_BASE[part] + 10 * index
             for part in suite.PARTS for index, c in enumerate(suite.CONDITIONS) if c.count.get(part)]
    assert len(seeds) == len(set(seeds))
    # and the parts' ranges of seeds never meet, so conditions added later cannot make one part reuse another's
    ranges = {part: [suite.SEED_BASE[part], suite.SEED_BASE[part] + 10 * len(suite.CONDITIONS)] for part in suite.PARTS}
    bounds = sorted(ranges.values())
    assert all(a[1] < b[0] for a, b in zip(bounds, bounds[1:]))


def test_the_second_parts_use_their_first_parts_speakers_only():
    assert suite.POOL_OF == {"tune": "tune", "held": "held", "tune2": "tune", "held2": "held"}
    for second in ("tune2", "held2"):
        assert suite.AMI_SPLIT[second] == ()  # every AMI meeting is already in one part
        assert "ami" not in suite.condition_names(second, [])


def test_conditions_keep_their_places_so_their_files_keep_their_seeds():
    """A condition's seed follows its place in the list: a new one inserted in the middle would silently make
    every later condition's files (and every figure measured on them) different on a fresh build."""
    first = ["clean", "noisy", "tel8k", "mp3", "many", "dominant", "short_turns", "monologue", "long", "long60_6",
             "long60_10", "quiet", "uneven"]
    assert [c.name for c in suite.CONDITIONS][: len(first)] == first


def test_the_quiet_condition_rewrites_each_file_quieter_as_16_bit(tmp_path):
    speech = af.demo_recording()[0][: 16000 * 3]
    for i in range(3):
        sf.write(tmp_path / f"q{i}.flac", speech, 16000, format="FLAC")
    suite.make_quieter(tmp_path, 20.0, 40.0, seed=7)
    for i in range(3):
        quiet, rate = sf.read(tmp_path / f"q{i}.flac", dtype="float32")
        assert rate == 16000 and sf.info(tmp_path / f"q{i}.flac").subtype == "PCM_16"
        down = 20 * np.log10(np.std(speech) / np.std(quiet))
        assert 20.0 - 0.1 <= down <= 40.0 + 0.1
    again = tmp_path / "again"
    again.mkdir()
    sf.write(again / "q0.flac", speech, 16000, format="FLAC")
    suite.make_quieter(again, 20.0, 40.0, seed=7)
    assert np.array_equal(sf.read(again / "q0.flac")[0], sf.read(tmp_path / "q0.flac")[0])  # the same seed, the same file


@af.requires_shared_eval
def test_the_uneven_condition_makes_the_median_talker_quieter_and_nobody_else():
    """bench/uneven_conversations.py wraps make_conversations.py's conversation step (../shared/eval)."""
    import uneven_conversations as uneven
    from make_conversations import Turn

    loud, quiet, middle = np.ones(1600, np.float32), np.ones(800, np.float32), np.ones(1200, np.float32)
    turns = [Turn("a", 0.0, loud), Turn("b", 1.0, quiet), Turn("c", 2.0, middle), Turn("a", 3.0, loud)]
    wrapped = uneven.quieter_participant(lambda rng, pool, cache, args: (turns, 4.0), 15.0, 25.0)
    out, length = wrapped(np.random.default_rng(0), None, None, None)
    assert length == 4.0
    assert [t.speaker for t in out] == ["a", "b", "c", "a"]
    down = -20 * np.log10(out[2].audio.max())
    assert 15.0 <= down <= 25.0  # "c" talks the median amount: 15-25 dB down
    assert all(np.array_equal(o.audio, t.audio) for o, t in zip(out, turns) if t.speaker != "c")
    two = uneven.quieter_participant(lambda *a: ([Turn("a", 0.0, loud), Turn("b", 1.0, quiet)], 2.0), 15.0, 25.0)
    first, second = two(np.random.default_rng(1), None, None, None)[0]
    assert np.array_equal(first.audio, loud) and second.audio.max() < 0.2  # of two, the one who talks less


def test_the_mp3_condition_moves_its_reference_by_the_lag_every_decoder_plays(tmp_path):
    """24 kbit/s LAME carries no Xing/Info frame: decoders play 1105 samples (69 ms) of codec delay first. The
    reference moves by the lag measured against the WAV, so a turn is where the MP3 really has it."""
    speech = af.demo_recording("two-speakers")[0][: 16000 * 12]
    sf.write(tmp_path / "a.wav", speech, 16000)
    (tmp_path / "reference.rttm").write_text("SPEAKER a 1 1.000 2.000 <NA> <NA> alice <NA> <NA>\n"
                                             "SPEAKER a 1 4.500 1.250 <NA> <NA> bob <NA> <NA>\n")
    suite.reencode_mp3(tmp_path)
    assert not (tmp_path / "a.wav").exists() and (tmp_path / "a.mp3").is_file()
    decoded, rate = sf.read(tmp_path / "a.mp3", dtype="float32")
    assert af.lag_behind(speech, decoded) == 1105  # the lag itself, as every decoder plays it
    starts = [float(line.split()[3]) for line in (tmp_path / "reference.rttm").read_text().splitlines()]
    assert starts == pytest.approx([1.0 + 1105 / 16000, 4.5 + 1105 / 16000], abs=1e-3)
    assert [line.split()[4] for line in (tmp_path / "reference.rttm").read_text().splitlines()] == ["2.000", "1.250"]


def test_a_build_stopped_half_way_is_made_again_not_taken_as_finished(tmp_path, monkeypatch):
    """The generator has written the WAVs and the WAV-timeline reference, then the re-encoding dies: a re-run
    must redo the condition, not score MP3s against a reference on the wrong timeline."""
    speech = af.demo_recording("two-speakers")[0][: 16000 * 6]

    def generator(command, **_):
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        sf.write(out / "c-000.wav", speech, 16000)
        (out / "reference.rttm").write_text("SPEAKER c-000 1 1.000 2.000 <NA> <NA> alice <NA> <NA>\n")

    monkeypatch.setattr(suite, "split_pools", lambda root: {"tune": root, "held": root})
    monkeypatch.setattr(suite, "CONDITIONS", [c for c in suite.CONDITIONS if c.name == "mp3"])
    monkeypatch.setattr(suite, "PARTS", ("tune",))
    monkeypatch.setattr(suite, "AMI_SPLIT", {"tune": ()})
    monkeypatch.setattr(suite.subprocess, "run", generator)
    real_reencode = suite.reencode_mp3
    monkeypatch.setattr(suite, "reencode_mp3", lambda folder: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        suite.build(tmp_path)
    assert not (tmp_path / "tune" / "mp3").exists()

    monkeypatch.setattr(suite, "reencode_mp3", real_reencode)
    suite.build(tmp_path)
    folder = tmp_path / "tune" / "mp3"
    assert sorted(p.name for p in folder.iterdir()) == ["c-000.mp3", "reference.rttm", "timeline-shift.json"]
    assert float((folder / "reference.rttm").read_text().split()[3]) == pytest.approx(1.0 + 1105 / 16000, abs=1e-3)
    assert not (tmp_path / "tune" / "mp3.partial").exists()
