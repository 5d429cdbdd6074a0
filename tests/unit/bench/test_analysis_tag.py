"""The cache key of an analysis (bench/accuracy.py): settings that change `analyse`, and the models."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "bench"))

import accuracy  # noqa: E402
from diarizer.pipeline import PipelineConfig  # noqa: E402


def test_a_new_export_of_a_model_is_a_new_analysis(monkeypatch):
    before = accuracy.analysis_tag(PipelineConfig())
    assert before == accuracy.analysis_tag(PipelineConfig(onset=0.7))  # acts after the analysis
    assert before != accuracy.analysis_tag(PipelineConfig(step_seconds=2.5))
    shipped = accuracy.model_hashes()
    assert len(shipped) == 3 and all(len(h) == 64 for h in shipped)
    monkeypatch.setattr(accuracy, "model_hashes", lambda: sorted(shipped[:2] + ["0" * 64]))
    assert accuracy.analysis_tag(PipelineConfig()) != before


def test_stored_results_are_keyed_by_every_setting(monkeypatch):
    """Identification and confidence store the engine's results, which a clustering setting changes too."""
    import dataclasses

    config = PipelineConfig()
    before = accuracy.config_tag(config)
    clustering = dataclasses.replace(config, clustering=dataclasses.replace(config.clustering, cut_spread=0.0))
    assert accuracy.analysis_tag(clustering) == accuracy.analysis_tag(config)  # the analysis can be reused
    assert accuracy.config_tag(clustering) != before  # its results cannot
    assert accuracy.config_tag(PipelineConfig(onset=0.7)) != before
    assert accuracy.config_tag(PipelineConfig()) == before
    monkeypatch.setattr(accuracy, "model_hashes", lambda: ["0" * 64] * 3)
    assert accuracy.config_tag(PipelineConfig()) != before


def test_a_new_working_level_is_a_new_analysis(monkeypatch):
    """Decoding raises quiet recordings to a working level before the models see them: another level is
    other samples, so neither cached analyses nor stored results may be reused across it."""
    from diarizer import audio

    analysis, results = accuracy.analysis_tag(PipelineConfig()), accuracy.config_tag(PipelineConfig())
    monkeypatch.setattr(audio, "WORKING_LEVEL_DB", audio.WORKING_LEVEL_DB - 5)
    assert accuracy.analysis_tag(PipelineConfig()) != analysis
    assert accuracy.config_tag(PipelineConfig()) != results


def test_overrides_reach_nested_settings_and_can_switch_one_off():
    config = accuracy.with_overrides(
        PipelineConfig(), ["clustering.min_similarity=0.5", "silence_peak_db=null", "refine_turns=false", "onset=0.7"]
    )
    assert config.clustering.min_similarity == 0.5 and config.clustering.same_voice == PipelineConfig().clustering.same_voice
    assert config.silence_peak_db is None and config.refine_turns is False and config.onset == 0.7
    assert accuracy.with_overrides(PipelineConfig(), ["silence_peak_db=-90"]).silence_peak_db == -90.0
    # the stored results of a run with the rule off are not those of the default
    assert accuracy.config_tag(config) != accuracy.config_tag(PipelineConfig())
