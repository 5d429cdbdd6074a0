"""Route logic, framework-free: each function takes the runtime, the caller's key and the parsed request.

`functions/api/app.py` only maps HTTP routes onto these functions and ApiError onto JSON answers.

Replies: async submit -> 200 ``{"request_id", "api": "diarize"}`` (the same reply, 200, when the same key
repeats a request_id: no second job); v2 sync -> the Diarized object; v1 sync -> a list of segments with
integer speaker ids (the v1 SDK model types them as int).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Mapping

from diarizer.transcode import TranscoderUnavailable
from diarizer.types import AudioDecodeError, AudioTooLongError, EmptyAudioError, InvalidOptionsError

from diarizer_service import voiceprints
from diarizer_service.auth import ApiKey
from diarizer_service.backends import BackendError, BlobNotFound
from diarizer_service.errors import ApiError, invalid_field, service_unavailable
from diarizer_service.jobs import Job, JobStatus, job_prefix, make_job_id
from diarizer_service.observability import MetricUnit, logger, metrics, tracer
from diarizer_service.runtime import AudioInfo, Runtime
from diarizer_service.validation import (
    JobRequest,
    engine_options,
    parse_job_request,
    parse_json_body,
    validate_request_id,
)

API_NAME = "diarize"  # the "api" field of async replies: the requested API, whatever its version
ASYNC_ROUTE = "/audio/generic/api/v2/async/diarize"
UPLOADS_ROUTE = "/audio/generic/api/v2/uploads"
UPLOAD_URL_TTL_SECONDS = 3600


def upload_key(key_id: str, upload_id: str) -> str:
    return f"uploads/{key_id}/{upload_id}"


def probe_or_reject(runtime: Runtime, audio: bytes, max_seconds: float, too_long: ApiError, *,
                    whole: bool = False) -> AudioInfo | None:
    """Detect the real format from the bytes: non-audio (or absurd header claims) -> 400, longer than
    `max_seconds` -> `too_long`. `whole`: then decode every frame too, so a truncated or corrupt body is refused
    now rather than failing in the worker (the async route: nobody would see the error until the webhook).
    Where the header's length is only a claim (an M4A/WebM's metadata, a FLAC written to a pipe), the audio is
    decoded up to `max_seconds` either way: the limit holds for what decodes, not for what a header says.

    None: audio this function cannot decode without PyAV (M4A, MP4, WebM; a FLAC or MP3 libsndfile would cut
    short), accepted because the deployment transcodes it (TranscodeFunction checks it and its length)."""
    try:
        info = runtime.probe(audio)
        if not info.length_known or (whole and 0 < info.duration <= max_seconds):
            info = runtime.verify(audio, max_seconds)
    except TranscoderUnavailable as exc:
        if runtime.backends.transcode_queue is not None:
            return None
        raise ApiError(400, "unsupported_audio", f"`content` is not decodable audio here: {exc}",
                       field="content") from exc
    except AudioDecodeError as exc:
        raise audio_error(exc, too_long) from exc
    if not info.duration or info.duration <= 0:
        raise _empty_audio()
    if info.duration > max_seconds:
        raise too_long
    return info


def audio_error(exc: AudioDecodeError, too_long: ApiError) -> ApiError:
    """The answer to `content` the engine refused: too long, empty, or not decodable."""
    if isinstance(exc, AudioTooLongError):
        return too_long
    if isinstance(exc, EmptyAudioError):
        return _empty_audio()
    return ApiError(400, "unsupported_audio", f"`content` is not decodable audio: {exc}", field="content")


def _empty_audio() -> ApiError:
    return ApiError(400, "empty_audio", "The audio contains no samples.", field="content")


def _parse(runtime: Runtime, raw_body: str | bytes | None, is_base64: bool, query: Mapping[str, str] | None,
           *, require_webhook: bool) -> JobRequest:
    body = parse_json_body(raw_body, is_base64)
    return parse_job_request(body, query, require_webhook=require_webhook,
                             allow_local_webhooks=runtime.settings.allow_local_webhooks,
                             new_request_id=lambda: str(uuid.uuid4()))


@tracer.capture_method(capture_response=False)
def submit_async(runtime: Runtime, key: ApiKey, raw_body: str | bytes | None, is_base64: bool,
                 query: Mapping[str, str] | None) -> dict:
    """Validate, then audio -> blob store, job -> table, message -> queue; undo on failure (503)."""
    request = _parse(runtime, raw_body, is_base64, query, require_webhook=True)
    logger.append_keys(request_id=request.request_id)
    voiceprints.check_exist(runtime, key, request.options.to_dict())
    settings = runtime.settings
    reply = {"request_id": request.request_id, "api": API_NAME}
    info = None
    if request.audio is not None:
        too_long = ApiError(413, "audio_too_long", f"The audio is longer than {settings.max_audio_seconds:g} s.",
                            field="content")
        info = probe_or_reject(runtime, request.audio, settings.max_audio_seconds, too_long, whole=True)

    job_id = make_job_id(key.key_id, request.request_id)
    fingerprint = request_fingerprint(request)
    # Concurrent attempts of one request_id (a client retry while the first is in flight) must not touch each
    # other's state: each stores its own audio object and undoes only what is still its own (`_withdraw`).
    attempt_id = uuid.uuid4().hex
    jobs, blobs = runtime.jobs, runtime.backends.blobs
    try:
        existing = jobs.get(job_id)
        if existing is not None:
            _resume(runtime, key, existing, attempt_id, fingerprint)
            return reply
        if request.upload_id is not None:
            audio_key = _checked_upload(runtime, key, request.upload_id)
        else:
            audio_key = attempt_audio_key(key.key_id, request.request_id, attempt_id)
            blobs.put(audio_key, request.audio, metadata={"format": info.format} if info else None)
    except BackendError as exc:
        logger.warning("submit failed before the job existed", extra={"reason": str(exc)})
        raise service_unavailable() from exc

    own_audio = request.upload_id is None
    job = Job.new(key_id=key.key_id, key_hash=key.key_hash, request_id=request.request_id, api=API_NAME,
                  audio_key=audio_key, options=request.options.to_dict(), webhook=request.webhook,
                  retention_days=settings.retention_days, sweep_after_seconds=settings.sweep_after_seconds,
                  audio_format=info.format if info else None,
                  audio_seconds=info.duration if info else None, attempt_id=attempt_id, fingerprint=fingerprint)
    try:
        created = jobs.create(job)
    except BackendError as exc:
        # The write may have happened with only its reply lost (a timeout): withdraw it if it is still ours.
        _withdraw(runtime, job, own_audio=own_audio)
        raise service_unavailable() from exc
    if not created:
        # An identical request created the job first: its record points at its own audio, not ours. Its
        # attempt may still withdraw it (its send failing), so take it over like any retry before answering 200.
        if own_audio:
            _delete_audio(runtime, audio_key)
        try:
            existing = jobs.get(job_id)
            if existing is None:  # withdrawn meanwhile: nothing to answer 200 about
                raise service_unavailable()
            _resume(runtime, key, existing, attempt_id, fingerprint)
        except BackendError as exc:
            raise service_unavailable() from exc
        return reply
    try:
        runtime.backends.queue.send({"job_id": job_id})
    except BackendError as exc:
        _withdraw(runtime, job, own_audio=own_audio)
        raise service_unavailable() from exc
    _mark_enqueued(runtime, job_id)
    metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
    if info is not None:
        metrics.add_metric(name="SubmittedAudioSeconds", unit=MetricUnit.Seconds, value=info.duration)
    logger.info("job queued", extra={"audio_seconds": info.duration if info else None})
    return reply


def attempt_audio_key(key_id: str, request_id: str, attempt_id: str) -> str:
    """jobs/<key_id>/<request_id>/audio-<attempt_id>: one object per submit attempt, so that an attempt that
    fails deletes only its own (the job record's audio_key names the one its job uses)."""
    return job_prefix(key_id, request_id) + f"audio-{attempt_id}"


def request_fingerprint(request: JobRequest) -> str:
    """A hash of what the request asks for: its audio (or upload), speaker options and webhook."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(request.audio).digest() if request.audio is not None
                  else f"upload:{request.upload_id}".encode())
    digest.update(json.dumps([request.options.to_dict(), request.webhook], sort_keys=True).encode())
    return digest.hexdigest()


def _resume(runtime: Runtime, key: ApiKey, job: Job, attempt_id: str, fingerprint: str) -> None:
    """A repeated request_id. Still `queued` and in the outbox: the attempt that created it may still be in
    flight or have died between writing the job and sending its message. Claim it first (its creator can then
    no longer withdraw it), then send the message (a duplicate is harmless: every job transition is
    conditional). Raises ApiError 503 when the job was withdrawn before the claim."""
    if not hmac.compare_digest(job.key_hash, key.key_hash):  # a key_id shared by two keys (older 32-bit ids)
        raise ApiError(409, "request_id_conflict", "This request_id cannot be used with this key; choose another.",
                       field="request_id")
    if job.fingerprint is not None and not hmac.compare_digest(job.fingerprint, fingerprint):
        raise ApiError(409, "request_id_conflict", "This request_id was already used for another request (other "
                       "audio, options or webhook); choose another, or leave it out to get a new one.",
                       field="request_id")
    if not job.awaiting_message:
        logger.info("repeated request_id: returning the existing job", extra={"status": job.status})
        return
    if not runtime.jobs.claim(job.job_id, attempt_id):
        if runtime.jobs.get(job.job_id) is None:
            logger.info("repeated request_id of a job its first attempt withdrew")
            raise service_unavailable()
        logger.info("repeated request_id of a job that started meanwhile: nothing to send")
        return
    logger.info("repeated request_id of a queued job whose message was never confirmed sent: sending it")
    runtime.backends.queue.send({"job_id": job.job_id})
    _mark_enqueued(runtime, job.job_id)


def _mark_enqueued(runtime: Runtime, job_id: str) -> None:
    try:
        runtime.jobs.mark_enqueued(job_id)
    except BackendError as exc:  # the job will run; the sweeper merely sends one harmless duplicate later
        logger.warning("could not record that the message was sent", extra={"reason": str(exc)})


def _checked_upload(runtime: Runtime, key: ApiKey, upload_id: str) -> str:
    audio_key = upload_key(key.key_id, upload_id)
    head = runtime.backends.blobs.head(audio_key)
    if head is None:
        raise ApiError(400, "upload_not_found", "No uploaded file for this `upload_id` (expired, or not PUT yet).",
                       field="upload_id")
    if head.size == 0:
        raise ApiError(400, "empty_audio", "The uploaded file is empty.", field="upload_id")
    if head.size > runtime.settings.max_upload_bytes:
        raise ApiError(413, "upload_too_large",
                       f"The uploaded file is over {runtime.settings.max_upload_bytes} bytes.", field="upload_id")
    return audio_key


def _withdraw(runtime: Runtime, job: Job, *, own_audio: bool) -> None:
    """Undo a failed attempt, touching only what is still its own: its record while nobody can have been told
    about it (JobStore.withdraw), its audio object once no record points at it. Whatever cannot be undone
    stays: a record left queued in the outbox gets its message from the sweeper (or a retry) and runs."""
    try:
        if not runtime.jobs.withdraw(job):
            stored = runtime.jobs.get(job.job_id)
            if stored is not None and stored.webhook_id == job.webhook_id:  # the record this attempt wrote
                logger.info("the job was taken over by a retry (or started): left to run")
                return
    except BackendError:
        logger.warning("could not withdraw a job that was never queued: the sweeper will send its message")
        return
    if own_audio:
        _delete_audio(runtime, job.audio_key)


def _delete_audio(runtime: Runtime, audio_key: str) -> None:
    try:
        runtime.backends.blobs.delete(audio_key)
    except BackendError:  # under jobs/: the bucket's lifecycle rule removes it after the retention days
        logger.warning("could not delete the audio of a job that was never queued")


@tracer.capture_method(capture_response=False)
def diarize_sync(runtime: Runtime, key: ApiKey, raw_body: str | bytes | None, is_base64: bool,
                 query: Mapping[str, str] | None) -> dict:
    """Diarize in this request (short clips only) and return the Diarized object."""
    request = _parse(runtime, raw_body, is_base64, query, require_webhook=False)
    if request.upload_id is not None:
        raise invalid_field("upload_id", "Uploaded files are diarized asynchronously: use " + ASYNC_ROUTE + ".")
    logger.append_keys(request_id=request.request_id)
    limit = runtime.settings.sync_max_seconds
    too_long = ApiError(413, "audio_too_long_for_sync",
                        f"Synchronous requests take audio up to {limit:g} s; use POST {ASYNC_ROUTE} with a webhook "
                        "for longer audio.", field="content")
    info = probe_or_reject(runtime, request.audio, limit, too_long)
    if info is None:
        raise ApiError(400, "unsupported_audio", "M4A, MP4/MOV, WebM, AMR, WMA and CAF audio is diarized asynchronously here: use "
                       "POST " + ASYNC_ROUTE + ".", field="content")
    options = request.options.to_dict()
    voiceprints.check_exist(runtime, key, options)
    try:
        known = voiceprints.load(runtime.backends, key.key_id, key.key_hash, options)
    except BackendError as exc:
        raise service_unavailable() from exc
    try:
        result = runtime.diarize(request.audio, engine_options(options, known), max_seconds=limit)
    except AudioDecodeError as exc:
        raise audio_error(exc, too_long) from exc
    except InvalidOptionsError as exc:
        raise invalid_field("speakers", str(exc)) from exc
    metrics.add_metric(name="SyncRequests", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="AudioSeconds", unit=MetricUnit.Seconds, value=info.duration)
    return result.to_dict()


def v1_segments(diarized: dict) -> list[dict]:
    """v1 sync answer: the segment list, speaker ids as integers ("speaker2" -> 2)."""
    return [{**segment, "speaker_id": int(str(segment["speaker_id"]).removeprefix("speaker"))}
            for segment in diarized["segments"]]


def job_status(runtime: Runtime, key: ApiKey, request_id: str) -> dict:
    """Status of one of the caller's jobs; another key's job is reported as not found (404, no leak)."""
    try:
        request_id = validate_request_id(request_id)
    except ApiError as exc:
        raise ApiError(404, "job_not_found", "No job with this request_id.") from exc
    logger.append_keys(request_id=request_id)
    try:
        job = runtime.jobs.get(make_job_id(key.key_id, request_id))
        if job is None or not hmac.compare_digest(job.key_hash, key.key_hash):  # never another key's job
            raise ApiError(404, "job_not_found", "No job with this request_id.")
        answer: dict = {"request_id": job.request_id, "api": job.api, "status": job.status,
                        "created_at": job.created_at, "updated_at": job.updated_at}
        if job.status == JobStatus.DONE.value:
            answer["response"] = job.result if job.result is not None else _stored_result(runtime, job)
        if job.error:
            answer["error"] = job.error
        if job.webhook_state:  # before the first round: pending, no attempt yet
            answer["webhook"] = {"state": job.webhook_state, "delivered": False, "attempts": 0, "rounds": 0,
                                 **(job.webhook_delivery or {})}
        return answer
    except BackendError as exc:
        raise service_unavailable() from exc


def _stored_result(runtime: Runtime, job: Job) -> dict | None:
    """A result too big for the job record, from the blob store (None once retention removed it)."""
    try:
        return json.loads(runtime.backends.blobs.get(job.result_key))
    except BlobNotFound:
        return None


def create_upload(runtime: Runtime, key: ApiKey) -> dict:
    """A presigned PUT URL (S3's, or in local mode the server's own) for audio too big for a request body;
    then submit with `upload_id`."""
    upload_id = uuid.uuid4().hex
    try:
        url = runtime.backends.blobs.presign_put(upload_key(key.key_id, upload_id), UPLOAD_URL_TTL_SECONDS)
    except NotImplementedError as exc:
        raise ApiError(501, "uploads_not_supported", "This server cannot receive uploads (run `diarize serve`); "
                       "send the audio inline as `content`.") from exc
    return {"upload_id": upload_id, "upload_url": url, "method": "PUT", "expires_in": UPLOAD_URL_TTL_SECONDS,
            "max_bytes": runtime.settings.max_upload_bytes}
