"""All configuration from the environment, read once into one frozen dataclass."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

_TRUE = {"1", "true", "yes", "on"}

# API Gateway takes bodies up to 10 MB, but hands them to Lambda inside an event that a synchronous invocation caps
# at 6 MiB (6,291,456 bytes): a bigger body fails before the handler runs, with API Gateway's own error instead of
# ours. 6,000,000 bytes leaves room for the event's headers and context. The local server applies the same limit.
MAX_REQUEST_BODY_BYTES = 6_000_000
BODY_TOO_LARGE_MESSAGE = ("The request body is over 6 MB: use POST /audio/generic/api/v2/uploads and send "
                          "`upload_id` instead of `content`.")
DEFAULT_WEBHOOK_TIMEOUT_SECONDS = 10.0  # one webhook POST (the template's WebhookTimeoutSeconds default)
# The template's WebhookTimeoutSeconds MaxValue: the dead-letter function's 300 s timeout holds one delivery at
# this (3 x 60 s + 3 s) and slack; a larger value set by hand would leave dead letters no time to fail their jobs.
MAX_WEBHOOK_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Settings:
    backend: str = "local"  # "aws" | "local"
    bucket: str = ""
    queue_url: str = ""
    transcode_queue_url: str = ""  # AWS: where the worker forwards container audio (TranscodeFunction)
    jobs_table: str = ""
    keys_table: str = ""
    voiceprints_table: str = ""
    data_dir: str = "./data"
    max_audio_seconds: float = 10800.0
    max_upload_bytes: int = 500 * 1024 * 1024
    sync_max_seconds: float = 60.0
    retention_days: int = 7
    max_receive_count: int = 3
    webhook_timeout_seconds: float = DEFAULT_WEBHOOK_TIMEOUT_SECONDS
    allow_local_webhooks: bool = False
    # A queued job still queued this long after submit (its message may never have been sent), or a webhook
    # still pending this long after the job finished, is picked up by the sweeper.
    sweep_after_seconds: int = 300
    public_url: str = ""  # local mode: the server's own URL, for presigned upload URLs

    @property
    def is_local(self) -> bool:
        return self.backend == "local"


def _number(env: Mapping[str, str], name: str, default: float, cast: type = float, maximum: float | None = None):
    raw = env.get(name, "").strip()
    if not raw:
        return cast(default)
    try:
        number = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(number):  # nan compares false with everything: it would switch the limit off
        raise ValueError(f"{name} must be a finite number, got {raw!r}")
    value = cast(number)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {raw!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    backend = env.get("DIARIZER_BACKEND", "local").strip().lower() or "local"
    if backend not in ("aws", "local"):
        raise ValueError(f"DIARIZER_BACKEND must be 'aws' or 'local', got {backend!r}")
    allow_local_default = "true" if backend == "local" else "false"
    return Settings(
        backend=backend,
        bucket=env.get("DIARIZER_BUCKET", ""),
        queue_url=env.get("DIARIZER_QUEUE_URL", ""),
        transcode_queue_url=env.get("DIARIZER_TRANSCODE_QUEUE_URL", ""),
        jobs_table=env.get("DIARIZER_JOBS_TABLE", ""),
        keys_table=env.get("DIARIZER_KEYS_TABLE", ""),
        voiceprints_table=env.get("DIARIZER_VOICEPRINTS_TABLE", ""),
        data_dir=env.get("DIARIZER_DATA_DIR", "") or "./data",
        max_audio_seconds=_number(env, "DIARIZER_MAX_AUDIO_SECONDS", 10800.0),
        max_upload_bytes=_number(env, "DIARIZER_MAX_UPLOAD_BYTES", 500 * 1024 * 1024, int),
        sync_max_seconds=_number(env, "DIARIZER_SYNC_MAX_SECONDS", 60.0),
        retention_days=_number(env, "DIARIZER_RETENTION_DAYS", 7, int),
        max_receive_count=_number(env, "DIARIZER_MAX_RECEIVE_COUNT", 3, int),
        webhook_timeout_seconds=_number(env, "DIARIZER_WEBHOOK_TIMEOUT_SECONDS", DEFAULT_WEBHOOK_TIMEOUT_SECONDS,
                                        maximum=MAX_WEBHOOK_TIMEOUT_SECONDS),
        sweep_after_seconds=_number(env, "DIARIZER_SWEEP_AFTER_SECONDS", 300, int),
        allow_local_webhooks=env.get("DIARIZER_ALLOW_LOCAL_WEBHOOKS", allow_local_default).strip().lower() in _TRUE,
        public_url=env.get("DIARIZER_PUBLIC_URL", "").strip(),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests call `get_settings.cache_clear()` after changing the environment)."""
    return load_settings()
