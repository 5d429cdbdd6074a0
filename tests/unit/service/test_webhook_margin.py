"""The one margin that every function which may deliver a webhook keeps before its invocation's deadline."""
from diarizer_service.settings import DEFAULT_WEBHOOK_TIMEOUT_SECONDS
from diarizer_service.webhooks import delivery_margin


def test_at_the_default_timeout_the_margin_is_one_whole_delivery_and_twelve_seconds():
    # 3 attempts of at most 10 s, 1 + 2 s of backoff between them, and the slack for the record's own writes
    assert delivery_margin(DEFAULT_WEBHOOK_TIMEOUT_SECONDS) == 3 * 10 + 3 + 12


def test_the_margin_grows_with_the_webhook_timeout_by_three_attempts_worth():
    assert delivery_margin(11.0) - delivery_margin(10.0) == 3.0
    assert delivery_margin(60.0) == 3 * 60 + 3 + 12
