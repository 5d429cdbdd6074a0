"""`bench/suite.py counts`: speaker counts from cached analyses, for a grid of clustering settings.

Runs the real script on a one-file suite made from the bundled demo recording (its analysis cached
the way `suite.py run --cache` caches it). suite.py refuses to run without ../shared/eval, so these
tests need it too (CI has it; a user's clone skips them, saying why).
"""
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import audio_factory as af

REPO = Path(__file__).resolve().parents[3]
SUITE = REPO / "bench" / "suite.py"


@pytest.fixture(scope="module")
def cached_suite(tmp_path_factory, libri_pool):
    sys.path.insert(0, str(REPO / "bench"))
    from accuracy import analysis_tag
    from diarizer import audio as audio_io
    from diarizer.pipeline import Diarizer

    root, cache = tmp_path_factory.mktemp("suite"), tmp_path_factory.mktemp("cache")
    folder = root / "tune" / "clean"
    folder.mkdir(parents=True)
    shutil.copy(af.DEMO_DIR / "three-speakers.rttm", folder / "reference.rttm")
    engine = Diarizer()
    windows = engine.analyse(audio_io.decode(af.DEMO_DIR / "three-speakers.flac"))
    (cache / "tune").mkdir()
    (cache / "tune" / f"clean-three-speakers-{analysis_tag(engine.config)}.pkl").write_bytes(pickle.dumps(windows))
    return root, cache


def counts(root, cache, *args):
    return subprocess.run(
        [sys.executable, str(SUITE), "counts", "--part", "tune", "--root", str(root), "--cache", str(cache),
         "--condition", "clean", *args],
        capture_output=True, text=True, timeout=300,
    )


def test_one_row_per_combination_with_the_count_per_condition(cached_suite):
    done = counts(*cached_suite, "--grid", "clustering.min_similarity=0.6,0.9", "--grid", "clustering.same_voice=0.75")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2
    default, strict = rows
    # The engine's settings find the demo's three speakers; a cut that hardly merges anything splits
    # them (the count is really re-computed per combination, not read from anywhere).
    assert default.split("|")[3:5] == [" 1/1 ", " 1/1 (0−, 0+) "]
    assert strict.split("|")[3:5] == [" 0/1 ", " 0/1 (0−, 1+) "]


def test_settings_that_change_the_analysis_are_refused(cached_suite):
    done = counts(*cached_suite, "--grid", "step_seconds=2.5,5.0")
    assert done.returncode != 0
    assert "only vary settings that act after the analysis" in done.stderr


def test_a_missing_analysis_says_how_to_make_it(cached_suite, tmp_path):
    root, _ = cached_suite
    done = counts(root, tmp_path, "--grid", "clustering.min_similarity=0.6")
    assert done.returncode != 0
    assert "is missing: run `python bench/suite.py run --part tune --condition clean" in done.stderr
