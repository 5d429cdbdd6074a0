"""Settings from the environment: a bad value is a clear ValueError naming the variable, never a limit
silently switched off (nan compares false with everything) nor an uncaught OverflowError (int(inf))."""
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
