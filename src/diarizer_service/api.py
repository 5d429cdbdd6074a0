"""Route logic, framework-free: each function takes the runtime, the caller's key and the parsed request.

`functions/api/app.py` only maps HTTP routes onto these functions and ApiError onto JSON answers.

Replies: async submit -> 200 ``{"request_id", "api": "diarize"}`` (the same reply, 200, when the same key
repeats a request_id: no second job); v2 sync -> the Diarized object; v1 sync -> a list of segments with
integer speaker ids (the v1 SDK model types them as int).
"""
from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Mapping

from diarizer.transcode import TranscoderUnavailable
from diarizer.types import AudioDecodeError, AudioTooLongError, InvalidOptionsError

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
    except AudioTooLongError as exc:
        raise too_long from exc
    except TranscoderUnavailable as exc:
        if runtime.backends.transcode_queue is not None:
            return None
        raise ApiError(400, "unsupported_audio", f"`content` is not decodable audio here: {exc}",
                       field="content") from exc
    except AudioDecodeError as exc:
        raise ApiError(400, "unsupported_audio", f"`content` is not decodable audio: {exc}", field="content") from exc
    if not info.duration or info.duration <= 0:
        raise ApiError(400, "empty_audio", "The audio contains no samples.", field="content")
    if info.duration > max_seconds:
        raise too_long
    return info


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
    jobs, blobs = runtime.jobs, runtime.backends.blobs
    try:
        existing = jobs.get(job_id)
        if existing is not None:
            _resume(runtime, key, existing)
            return reply
        if request.upload_id is not None:
            audio_key = _checked_upload(runtime, key, request.upload_id)
        else:
            audio_key = job_prefix(key.key_id, request.request_id) + "audio"
            blobs.put(audio_key, request.audio, metadata={"format": info.format} if info else None)
    except BackendError as exc:
        logger.warning("submit failed before the job existed", extra={"reason": str(exc)})
        raise service_unavailable() from exc

    job = Job.new(key_id=key.key_id, key_hash=key.key_hash, request_id=request.request_id, api=API_NAME,
                  audio_key=audio_key, options=request.options.to_dict(), webhook=request.webhook,
                  retention_days=settings.retention_days, sweep_after_seconds=settings.sweep_after_seconds,
                  audio_format=info.format if info else None,
                  audio_seconds=info.duration if info else None)
    try:
        created = jobs.create(job)
    except BackendError as exc:
        # The write may have happened with only its reply lost (a timeout): a record left `queued` with no
        # message would never run, and the client's retry with this request_id would be told 200. Remove it
        # if it is ours (its webhook_id is unique to this attempt); leave another request's job and audio alone.
        owner = _stored_owner(runtime, job)
        _cleanup(runtime, job, delete_record=owner == "ours",
                 delete_audio=request.upload_id is None and owner in ("ours", "absent"))
        raise service_unavailable() from exc
    if not created:  # an identical request won the race: same reply, its audio is the same object
        return reply
    try:
        runtime.backends.queue.send({"job_id": job_id})
    except BackendError as exc:
        _cleanup(runtime, job, delete_record=True, delete_audio=request.upload_id is None)
        raise service_unavailable() from exc
    _mark_enqueued(runtime, job_id)
    metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
    if info is not None:
        metrics.add_metric(name="SubmittedAudioSeconds", unit=MetricUnit.Seconds, value=info.duration)
    logger.info("job queued", extra={"audio_seconds": info.duration if info else None})
    return reply


def _resume(runtime: Runtime, key: ApiKey, job: Job) -> None:
    """A repeated request_id. Still `queued` and in the outbox: the first attempt may have died between writing
    the job and sending its message, so send it (a duplicate is harmless: every job transition is conditional)."""
    if not hmac.compare_digest(job.key_hash, key.key_hash):  # a key_id shared by two keys (older 32-bit ids)
        raise ApiError(409, "request_id_conflict", "This request_id cannot be used with this key; choose another.",
                       field="request_id")
    if not job.awaiting_message:
        logger.info("repeated request_id: returning the existing job", extra={"status": job.status})
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


def _stored_owner(runtime: Runtime, job: Job) -> str:
    """After a failed create, whose record is stored under the job id: "ours" (same webhook_id, so this very
    attempt wrote it), "other" (an identical request that may be queued), "absent", or "unknown"."""
    try:
        stored = runtime.jobs.get(job.job_id)
    except BackendError:
        logger.warning("could not check whether a failed job write happened")
        return "unknown"
    if stored is None:
        return "absent"
    return "ours" if stored.webhook_id == job.webhook_id else "other"


def _cleanup(runtime: Runtime, job: Job, *, delete_record: bool, delete_audio: bool) -> None:
    """Leave nothing half-made: no record without a message, no audio without a record."""
    if delete_record:
        try:
            runtime.jobs.delete(job.job_id)
        except BackendError:
            # Cannot delete: at least make sure nobody waits for it (a retry with the same id then sees `failed`).
            try:
                runtime.jobs.fail(job, "enqueue_failed", "The job could not be queued; submit it again "
                                  "with a new request_id.", webhook_due_at=int(time.time()))
            except BackendError:
                logger.exception("could not clean up a job that was never queued")
    if delete_audio:
        try:
            runtime.backends.blobs.delete(job.audio_key)
        except BackendError:
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
        raise ApiError(400, "unsupported_audio", "M4A, MP4/MOV and WebM audio is diarized asynchronously here: use "
                       "POST " + ASYNC_ROUTE + ".", field="content")
    options = request.options.to_dict()
    voiceprints.check_exist(runtime, key, options)
    try:
        known = voiceprints.load(runtime.backends, key.key_id, options)
    except BackendError as exc:
        raise service_unavailable() from exc
    try:
        result = runtime.diarize(request.audio, engine_options(options, known))
    except AudioDecodeError as exc:
        raise ApiError(400, "unsupported_audio", f"`content` is not decodable audio: {exc}", field="content") from exc
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
