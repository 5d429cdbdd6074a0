"""`bench/suite.py counts`: speaker counts from cached analyses, for a grid of clustering settings.

Runs the real script on a one-file suite made from the bundled demo recording (its analysis cached
the way `suite.py run --cache` caches it). suite.py refuses to run without ../shared/eval, so these
tests need it too (CI has it; a user's clone skips them, saying why).
"""
import dataclasses
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import audio_factory as af

REPO = Path(__file__).resolve().parents[3]
SUITE = REPO / "bench" / "suite.py"


@pytest.fixture(scope="module")
def cached_suite(tmp_path_factory, libri_pool):
    sys.path.insert(0, str(REPO / "bench"))
    from accuracy import analysis_tag
    from diarizer import audio as audio_io
    from diarizer.pipeline import Diarizer, PipelineConfig

    root, cache = tmp_path_factory.mktemp("suite"), tmp_path_factory.mktemp("cache")
    folder = root / "tune" / "clean"
    folder.mkdir(parents=True)
    shutil.copy(af.DEMO_DIR / "three-speakers.rttm", folder / "reference.rttm")
    samples = audio_io.decode(af.DEMO_DIR / "three-speakers.flac")
    (cache / "tune").mkdir()
    for config in (PipelineConfig(), dataclasses.replace(PipelineConfig(), shared_trunk=False)):  # + the re-prints' source
        windows = Diarizer(config=config).analyse(samples)
        (cache / "tune" / f"clean-three-speakers-{analysis_tag(config)}.pkl").write_bytes(pickle.dumps(windows))
    return root, cache


def counts(root, cache, *args):
    return subprocess.run(
        [sys.executable, str(SUITE), "counts", "--part", "tune", "--root", str(root), "--cache", str(cache),
         "--condition", "clean", *args],
        capture_output=True, text=True, timeout=300,
    )


def test_one_row_per_combination_with_the_count_per_condition(cached_suite):
    done = counts(*cached_suite, "--grid", "clustering.min_similarity=0.6,0.9", "--grid", "clustering.cut_spread=0")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2
    default, strict = rows
    # One cut at the engine's 0.6 finds the demo's three speakers; one cut that hardly merges anything
    # splits them (the count is really re-computed per combination, not read from anywhere).
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


def test_a_missing_whole_clip_analysis_says_how_to_make_it(cached_suite, tmp_path):
    root, cache = cached_suite
    shutil.copytree(cache, tmp_path / "cache")
    for path in (tmp_path / "cache" / "tune").glob("*.pkl"):
        if pickle.loads(path.read_bytes()).trunk is None:  # the whole-clip analysis keeps no shared trunk
            path.unlink()
    done = counts(root, tmp_path / "cache", "--grid", "clustering.min_similarity=0.6")
    assert done.returncode != 0
    assert "--param shared_trunk=false` first" in done.stderr


def test_counts_re_print_the_close_calls_as_the_engine_does(cached_suite):
    """The re-prints taken from the cached whole-clip analysis are the engine's own re-prints."""
    sys.path.insert(0, str(REPO / "bench"))
    from accuracy import analysis_tag
    from suite import reprinted

    from diarizer import DiarizationOptions
    from diarizer import audio as audio_io
    from diarizer.pipeline import Diarizer, PipelineConfig, cluster_with_reprints

    _, cache = cached_suite
    config = dataclasses.replace(PipelineConfig(), reprint_margin=0.5)  # many close calls on a demo this clear
    shared, whole = (pickle.loads((cache / "tune" / f"clean-three-speakers-{analysis_tag(c)}.pkl").read_bytes())
                     for c in (config, dataclasses.replace(config, shared_trunk=False)))
    engine = Diarizer(config=config)
    samples = audio_io.decode(af.DEMO_DIR / "three-speakers.flac")
    asked = []

    def from_audio(which):
        asked.append(which)
        return engine._reprinted_whole(shared, samples, which)

    by_engine, engine_labels = cluster_with_reprints(shared, config, DiarizationOptions(), from_audio)
    by_cache, cache_labels = cluster_with_reprints(shared, config, DiarizationOptions(),
                                                   lambda which: reprinted(shared, whole, which))
    assert asked and asked[0].any()  # the re-print path really ran
    assert np.array_equal(engine_labels, cache_labels)
    assert np.allclose(by_engine.embeddings, by_cache.embeddings, equal_nan=True, atol=1e-5)
    assert np.array_equal(by_engine.seconds, by_cache.seconds)
