"""Settings from the environment: a bad value is a clear ValueError naming the variable, never a limit
silently switched off (nan compares false with everything) nor an uncaught OverflowError (int(inf))."""
import re
from pathlib import Path

import pytest

from diarizer_service.settings import load_settings


@pytest.mark.parametrize("name", ["DIARIZER_MAX_AUDIO_SECONDS", "DIARIZER_SYNC_MAX_SECONDS",
                                  "DIARIZER_MAX_UPLOAD_BYTES", "DIARIZER_MAX_RECEIVE_COUNT",
                                  "DIARIZER_WEBHOOK_TIMEOUT_SECONDS", "DIARIZER_SWEEP_AFTER_SECONDS"])
@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_non_finite_numbers_are_refused_by_name(name, raw):
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        load_settings({name: raw})


@pytest.mark.parametrize("raw,message", [("abc", "must be a number"), ("0", "must be positive"),
                                         ("-5", "must be positive")])
def test_other_bad_numbers(raw, message):
    with pytest.raises(ValueError, match=message):
        load_settings({"DIARIZER_MAX_AUDIO_SECONDS": raw})


def test_good_values_and_defaults():
    settings = load_settings({"DIARIZER_MAX_AUDIO_SECONDS": " 60 ", "DIARIZER_MAX_UPLOAD_BYTES": "1e6"})
    assert settings.max_audio_seconds == 60.0 and settings.max_upload_bytes == 1_000_000
    assert load_settings({}).sweep_after_seconds == 300


def test_the_webhook_timeout_is_bounded_as_the_template_bounds_it():
    """Set by hand past the template's MaxValue (a local run, an edited stack), one delivery would outlast the
    dead-letter function's timeout, and dead letters would never fail their jobs: refused at start instead."""
    template = (Path(__file__).resolve().parents[3] / "template.yaml").read_text()
    top = float(re.search(r"WebhookTimeoutSeconds:\n(?:    .*\n)*?    MaxValue: (\d+)", template).group(1))
    assert load_settings({"DIARIZER_WEBHOOK_TIMEOUT_SECONDS": f"{top:g}"}).webhook_timeout_seconds == top
    with pytest.raises(ValueError, match=f"DIARIZER_WEBHOOK_TIMEOUT_SECONDS must be at most {top:g}"):
        load_settings({"DIARIZER_WEBHOOK_TIMEOUT_SECONDS": f"{top + 1:g}"})
