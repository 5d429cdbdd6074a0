"""Process one queue message: an API job (``{"job_id"}``) or an S3 event for a batch object under `incoming/`.

Errors are sorted in two kinds. Permanent (the audio or the options are bad): the job ends `failed` with a
readable reason and the message is consumed. Transient (anything else: storage, engine crash): the exception
propagates so SQS redelivers; on the last allowed receive the job is first marked `failed`, then the exception
still propagates so the message lands in the DLQ for inspection.

Batch naming: ``incoming/<path>`` -> ``results/<path>.json`` (the Diarized object), ``results/<path>.rttm``,
or on failure ``results/<path>.error.json`` (``{"source", "error": {"code", "message"}}``); a path too long for
S3's key limit with those suffixes is cut and a hash of the whole key appended (`result_stem`). Optional object
metadata `speakers`, `min-speakers`/`min_speakers`, `max-speakers`/`max_speakers`, `vad`.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

from diarizer.types import AudioDecodeError, InvalidOptionsError, Voiceprint

from diarizer_service import messages, voiceprints
from diarizer_service.auth import ApiKey
from diarizer_service.backends import BackendError, BlobNotFound, BlobTooLarge
from diarizer_service.errors import ApiError
from diarizer_service.jobs import FINISHED, Job, JobStatus, PermanentJobError, WebhookState, job_prefix
from diarizer_service.observability import MetricUnit, logger, metrics, tracer
from diarizer_service.runtime import Runtime
from diarizer_service.transcoder import forward, needs_transcoding, transcoded_key
from diarizer_service.validation import engine_options, parse_speaker_options
from diarizer_service.webhooks import DeliveryResult, deliver, delivery_margin

INCOMING_PREFIX = "incoming/"
RESULTS_PREFIX = "results/"
# S3 keys are at most 1,024 bytes of UTF-8, and incoming/<path> may use all of them: results/<path>.error.json is
# 10 bytes longer. Such a path is cut to fit and a hash of the whole key appended (the records name the source).
MAX_KEY_BYTES = 1024
_LONGEST_RESULT_SUFFIX = ".error.json"
# A webhook not delivered for a retryable reason (receiver down, 5xx, timeout) is tried again by the sweeper,
# sweep_after_seconds x 1, 2, 4 ... later (at most 4 h apart), for MAX_WEBHOOK_ROUNDS rounds (about 13 h with
# the 5-minute default), then its state becomes `failed`; the result stays readable from the status route.
MAX_WEBHOOK_ROUNDS = 8
MAX_WEBHOOK_BACKOFF_SECONDS = 4 * 3600
# Error records are small; a bigger results/<path>.error.json is another object's result (incoming/<path>.error).
MAX_ERROR_RECORD_BYTES = 64 * 1024


def result_stem(key: str) -> str:
    """results/<path> for incoming/<path>, the stem of its .json, .rttm and .error.json; where the longest of them
    would pass S3's key limit, results/<path cut at a character>~<hash of the key> (never two objects' stem)."""
    base = RESULTS_PREFIX + key[len(INCOMING_PREFIX):]
    if len((base + _LONGEST_RESULT_SUFFIX).encode()) <= MAX_KEY_BYTES:
        return base
    digest = "~" + hashlib.sha256(key.encode()).hexdigest()[:32]
    room = MAX_KEY_BYTES - len(_LONGEST_RESULT_SUFFIX) - len(digest)
    return base.encode()[:room].decode(errors="ignore") + digest


Deliver = Callable[..., DeliveryResult]


@dataclass
class Worker:
    runtime: Runtime
    deliver: Deliver = deliver

    # ---- entry point -------------------------------------------------------------------------------------
    def handle_message(self, body: str, receive_count: int, deadline: float | None = None) -> None:
        """`deadline`: time.monotonic() at which this invocation is killed (Lambda timeout), if known."""
        message = messages.parse(body)
        if message is None:
            logger.error("dropping a message of no shape the service writes")
            return
        if message.get("Event") == "s3:TestEvent":
            logger.info("ignoring s3:TestEvent")
            return
        if "Records" in message:
            # Every record is tried even when one fails: raising at the first would leave the later ones unprocessed
            # and, after the last receive, failed by the dead-letter handler. The retry skips the finished ones.
            first_error: Exception | None = None
            for created in messages.created_objects(message):
                try:
                    self.process_object(created.bucket, created.key, receive_count)
                except Exception as exc:
                    logger.exception("batch record failed; the message will be redelivered")
                    if first_error is None:
                        first_error = exc
            if first_error is not None:
                raise first_error
            return
        if "job_id" in message:
            self.process_job(message["job_id"], receive_count, deadline)
            return
        if isinstance(message.get("batch_object"), dict):  # a batch object back from TranscodeFunction
            self.process_transcoded_object(message["batch_object"], receive_count)
            return
        logger.error("dropping a message of unknown shape")

    # ---- dead letters ------------------------------------------------------------------------------------
    def fail_dead_letter(self, body: str, receive_count: int) -> bool:
        """A message that exhausted its receives (the worker died each time: out of memory, killed, ...):
        fail its job with a readable reason and tell the webhook, or write the batch object's error record.
        Returns True when something was failed here; finished jobs and results are left alone."""
        message = messages.parse(body)
        if message is None:
            logger.error("dropping a dead letter of no shape the service writes")
            return False
        reason = (f"Gave up after {receive_count} attempts: the worker stopped or crashed while processing "
                  "it each time (out of memory or killed).")
        if "job_id" in message:
            job = self.runtime.jobs.get(message["job_id"])
            if job is not None and job.status in FINISHED:
                self.deliver_pending(job)  # a worker died between finishing it and its webhook
            if job is None or job.status in FINISHED:
                return False
            logger.append_keys(request_id=job.request_id, key_id=job.key_id)
            self._fail(job, "processing_failed", reason)
            return True
        objects = [(created.key, created.etag) for created in messages.created_objects(message)]
        if isinstance(message.get("batch_object"), dict):  # on its way through (or back from) TranscodeFunction
            objects.append((str(message["batch_object"].get("key", "")), str(message["batch_object"].get("etag", ""))))
        failed = False
        for key, event_etag in objects:
            if key.startswith(INCOMING_PREFIX) and not key.endswith("/"):
                results_base = result_stem(key)
                current = self._dead_letter_version(key, event_etag)
                if not self._batch_result_current(results_base, current):
                    # current_etag: a previous version's result goes, or it would still read as done
                    self._write_batch_error(key, results_base, "processing_failed", reason, current_etag=current)
                    failed = True
        return failed

    # ---- API jobs ----------------------------------------------------------------------------------------
    @tracer.capture_method(capture_response=False)
    def process_job(self, job_id: str, receive_count: int, deadline: float | None = None) -> None:
        jobs = self.runtime.jobs
        job = jobs.get(job_id)
        if job is None:
            logger.warning("no job record for this message (expired or cleaned up)")
            return
        logger.append_keys(request_id=job.request_id, key_id=job.key_id)
        if job.status in FINISHED:
            if job.webhook_pending:  # the process that finished it died before the webhook was acknowledged
                self.deliver_pending(job)
            else:
                logger.info("job already finished: duplicate delivery ignored", extra={"status": job.status})
            return
        if not jobs.start(job):
            logger.info("job finished meanwhile: duplicate delivery ignored")
            return
        started = time.monotonic()
        watchdog = None
        # On the last allowed attempt, fail the job before the invocation's deadline if it is still running: a Lambda
        # timeout kills the process, and the next receive moves the message to the DLQ without any worker seeing it,
        # so the job would stay `running` forever. The margin leaves the failure webhook its whole delivery.
        margin = delivery_margin(self.runtime.settings.webhook_timeout_seconds)
        if deadline is not None and receive_count >= self.runtime.settings.max_receive_count:
            watchdog = threading.Timer(max(0.0, deadline - started - margin), self._fail,
                                       args=(job, "processing_failed", f"Gave up after {receive_count} attempts: "
                                             "the job did not finish within the worker's time limit."))
            watchdog.daemon = True
            watchdog.start()
        try:
            self._run_job(job, receive_count, started)
        finally:
            if watchdog is not None:
                watchdog.cancel()
                watchdog.join(margin)  # if it fired, let its failure webhook go out first

    def _run_job(self, job: Job, receive_count: int, started: float) -> None:
        try:
            limit = self.runtime.settings.max_upload_bytes
            try:
                audio = self.runtime.backends.blobs.get(job.audio_key, max_bytes=limit)
            except BlobNotFound as exc:
                raise PermanentJobError("audio_missing", "The job's audio is gone (expired upload?).") from exc
            except BlobTooLarge as exc:  # an upload URL used again after the submit, with a bigger file
                raise PermanentJobError("audio_too_large", f"The job's audio is over {limit} bytes.") from exc
            if self.runtime.backends.transcode_queue is not None and needs_transcoding(audio):
                if job.audio_key == transcoded_key(job):  # never back and forth between the two functions
                    raise PermanentJobError("unsupported_audio", "The transcoded audio could not be decoded.")
                forward(self.runtime, job)  # M4A/MP4/WebM: TranscodeFunction brings it back as FLAC
                return
            known = voiceprints.load(self.runtime.backends, job.key_id, job.key_hash, job.options)
            result = self._run_engine(audio, job.options, known)
        except PermanentJobError as exc:
            self._fail(job, exc.code, exc.message)
            return
        except Exception as exc:
            if receive_count >= self.runtime.settings.max_receive_count:
                self._fail(job, "processing_failed",
                           f"Gave up after {receive_count} attempts; last error: {type(exc).__name__}.")
            raise
        self._complete(job, result, time.monotonic() - started)

    @tracer.capture_method(capture_response=False)
    def _run_engine(self, audio: bytes, options: dict, known: Sequence[Voiceprint] = ()):
        max_seconds = self.runtime.settings.max_audio_seconds
        try:
            info = self.runtime.probe(audio)
            if info.length_known and info.duration > max_seconds:
                raise PermanentJobError.too_long(max_seconds)
            # Where the header's length is only a claim (M4A/WebM metadata, a FLAC written to a pipe), the
            # engine's own decoding stops at the limit: decoding once, not once to count and again to diarize.
            return self.runtime.diarize(audio, engine_options(options, known), max_seconds=max_seconds)
        except AudioDecodeError as exc:
            raise PermanentJobError.for_audio(exc, max_seconds) from exc
        except InvalidOptionsError as exc:
            raise PermanentJobError("invalid_options", str(exc)) from exc

    def _complete(self, job: Job, result, elapsed: float) -> None:
        diarized = result.to_dict()
        result_json = json.dumps(diarized).encode()
        # Keys unique to this attempt: a duplicate worker that loses the finish below must not overwrite the
        # blobs the winner's record points at (its webhook is re-driven from them, the status route reads them).
        base = job_prefix(job.key_id, job.request_id) + f"result-{uuid.uuid4().hex[:16]}"
        result_key, rttm_key = base + ".json", base + ".rttm"
        blobs = self.runtime.backends.blobs
        blobs.put(rttm_key, result.to_rttm(_rttm_file_id(job.request_id)).encode(), content_type="text/plain")
        blobs.put(result_key, result_json, content_type="application/json")
        if not self.runtime.jobs.finish(job, result=diarized, result_key=result_key, rttm_key=rttm_key,
                                        audio_seconds=float(result.duration), result_size=len(result_json),
                                        webhook_due_at=self._webhook_due_at()):
            logger.info("another delivery finished this job first: no webhook from here")
            self._delete_unreferenced(result_key, rttm_key)
            return
        metrics.add_metric(name="JobsCompleted", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="AudioSeconds", unit=MetricUnit.Seconds, value=float(result.duration))
        metrics.add_metric(name="ProcessingSeconds", unit=MetricUnit.Seconds, value=elapsed)
        logger.info("job done", extra={"num_speakers": diarized["num_speakers"], "audio_seconds": result.duration,
                                       "processing_seconds": round(elapsed, 3)})
        if job.webhook:
            self._notify(job, {"request_id": job.request_id, "response": json.loads(result_json)})

    def _delete_unreferenced(self, *keys: str) -> None:
        """Best effort: a crash here (or no delete permission) leaves orphans under the job prefix, which expire
        with it."""
        for key in keys:
            try:
                self.runtime.backends.blobs.delete(key)
            except BackendError as exc:
                logger.warning("could not delete a losing attempt's result blob", extra={"reason": str(exc)})
                return

    def fail_job(self, job: Job, code: str, message: str) -> None:
        """Fail a job that is not finished, and tell its webhook (used by the transcode step too)."""
        self._fail(job, code, message)

    def _fail(self, job: Job, code: str, message: str) -> None:
        if not self.runtime.jobs.fail(job, code, message, webhook_due_at=self._webhook_due_at()):
            logger.info("job already finished elsewhere: not failing it")
            return
        metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
        logger.warning("job failed", extra={"error_code": code, "reason": message})
        if job.webhook:
            self._notify(job, {"request_id": job.request_id, "error": _error_body(code, message)})

    def _webhook_due_at(self) -> int:
        """When the sweeper takes over a pending delivery if this process dies before recording it."""
        return int(time.time()) + self.runtime.settings.sweep_after_seconds

    # ---- webhooks ----------------------------------------------------------------------------------------
    def deliver_pending(self, job: Job) -> None:
        """Deliver the webhook of a finished job whose delivery is still pending (the process that finished it
        died before the POST was acknowledged, or the receiver was down): the same body, the same webhook-id."""
        if not job.webhook_pending:
            return
        try:
            payload = self._webhook_payload(job)
        except BlobNotFound:
            self._record_delivery(job, DeliveryResult(False, 0, None, "the result expired before delivery"),
                                  WebhookState.FAILED)
            return
        logger.info("delivering a pending webhook", extra={"status": job.status})
        self._notify(job, payload)

    def _webhook_payload(self, job: Job) -> dict:
        """The body the first delivery sent, byte for byte: the result from its stored JSON (the record's copy
        went through DynamoDB, which keeps neither key order nor number types)."""
        if job.status == JobStatus.DONE.value:
            return {"request_id": job.request_id,
                    "response": json.loads(self.runtime.backends.blobs.get(job.result_key))}
        return {"request_id": job.request_id, "error": _error_body(job.error["code"], job.error["message"])}

    @tracer.capture_method(capture_response=False)
    def _notify(self, job: Job, payload: dict) -> None:
        """One delivery round: signed POST (a few quick retries) to the job's webhook. The outcome is recorded on
        the job, never raised: the job stays done/failed and its result stays retrievable from the status route.
        Not delivered for a retryable reason: the delivery stays pending and the sweeper tries again later."""
        settings = self.runtime.settings
        try:
            key_item = self.runtime.backends.keys.get(job.key_hash)
        except BackendError as exc:
            logger.warning("could not read the signing secret; the sweeper retries", extra={"reason": str(exc)})
            return  # still pending, still in the outbox
        if key_item is None:
            outcome = DeliveryResult(False, 0, None, "the API key that created the job no longer exists")
            retryable = False
        else:
            outcome = self.deliver(job.webhook, payload, secret=ApiKey.from_item(key_item).webhook_secret,
                                   msg_id=job.webhook_id, timeout=settings.webhook_timeout_seconds,
                                   allow_local=settings.allow_local_webhooks)
            retryable = outcome.retryable
        rounds = int((job.webhook_delivery or {}).get("rounds", 0)) + 1
        if outcome.delivered:
            state = WebhookState.DELIVERED
        elif retryable and rounds < MAX_WEBHOOK_ROUNDS:
            state = WebhookState.PENDING
        else:
            state = WebhookState.FAILED
        if not outcome.delivered:
            metrics.add_metric(name="WebhookDeliveryFailures", unit=MetricUnit.Count, value=1)
            logger.warning("webhook delivery failed", extra={"attempts": outcome.attempts, "reason": outcome.error,
                                                             "rounds": rounds, "webhook_state": state.value})
        self._record_delivery(job, outcome, state, rounds)

    def _record_delivery(self, job: Job, outcome: DeliveryResult, state: WebhookState, rounds: int = 1) -> None:
        retry_at = None
        if state is WebhookState.PENDING:
            backoff = self.runtime.settings.sweep_after_seconds * 2 ** (rounds - 1)
            retry_at = int(time.time()) + min(backoff, MAX_WEBHOOK_BACKOFF_SECONDS)
        try:
            self.runtime.jobs.record_delivery(job.job_id, {**outcome.to_dict(), "rounds": rounds}, state, retry_at)
        except BackendError:
            logger.exception("could not record the webhook delivery outcome (the sweeper delivers it again)")

    # ---- S3 batch objects --------------------------------------------------------------------------------
    @tracer.capture_method(capture_response=False)
    def process_object(self, bucket: str, key: str, receive_count: int) -> None:
        settings, blobs = self.runtime.settings, self.runtime.backends.blobs
        if settings.bucket and bucket != settings.bucket:
            logger.warning("ignoring an event from another bucket", extra={"bucket": bucket})
            return
        if not key.startswith(INCOMING_PREFIX) or key.endswith("/"):
            logger.info("ignoring an object outside incoming/", extra={"object_key": key})
            return
        logger.append_keys(object_key=key)
        results_base = result_stem(key)
        head = blobs.head(key)
        if head is None:
            logger.info("object deleted before processing")
            return
        if self._batch_result_current(results_base, head.etag):
            logger.info("results already written for this version: duplicate event ignored")
            return

        def load() -> bytes | None:
            if head.size > settings.max_upload_bytes:
                raise PermanentJobError("audio_too_large", f"The object is over {settings.max_upload_bytes} bytes.")
            try:
                audio = blobs.get(key, max_bytes=settings.max_upload_bytes)
            except BlobTooLarge as exc:  # replaced by a bigger object since the head
                raise PermanentJobError("audio_too_large",
                                        f"The object is over {settings.max_upload_bytes} bytes.") from exc
            # The get cannot say which version it read: a body that may be a newer version than the head's etag
            # must not be diarized under that etag.
            if self._superseded(key, head.etag):
                return None
            transcode_queue = self.runtime.backends.transcode_queue
            if transcode_queue is not None and needs_transcoding(audio):
                # M4A, AMR, WMA...: TranscodeFunction brings it back as FLAC (process_transcoded_object)
                transcode_queue.send({"batch_object": {"key": key, "etag": head.etag}})
                logger.info("container audio: batch object forwarded to the transcoder")
                return None
            return audio

        self._diarize_batch_object(key, head.etag, head.metadata, load, receive_count)

    def process_transcoded_object(self, message: dict, receive_count: int) -> None:
        """A batch object TranscodeFunction has converted (`transcoded`: its FLAC under jobs/) or could not decode
        (`error`), for version `etag` of incoming/<path>: the same checks and results as process_object."""
        key, etag = str(message.get("key", "")), str(message.get("etag", ""))
        if not key.startswith(INCOMING_PREFIX) or key.endswith("/") or not etag:
            logger.error("dropping a batch message without an object")
            return
        logger.append_keys(object_key=key)
        blobs, results_base = self.runtime.backends.blobs, result_stem(key)
        head = blobs.head(key)
        if head is None or head.etag != etag:
            logger.info("object replaced or deleted while being transcoded: its newer version's event takes it")
            return
        if self._batch_result_current(results_base, etag):
            logger.info("results already written for this version: duplicate message ignored")
            return
        error = message.get("error")
        if isinstance(error, dict):
            self._write_batch_error(key, results_base, str(error.get("code", "unsupported_audio")),
                                    str(error.get("message", "The audio could not be decoded.")), current_etag=etag)
            return

        def load() -> bytes:
            try:
                return blobs.get(str(message.get("transcoded", "")), max_bytes=self.runtime.settings.max_upload_bytes)
            except (BlobNotFound, BlobTooLarge) as exc:  # expired with jobs/ before a (long delayed) retry read it
                raise PermanentJobError("audio_missing", "The transcoded audio is gone; upload the object again.") \
                    from exc

        self._diarize_batch_object(key, etag, head.metadata, load, receive_count)

    def _diarize_batch_object(self, key: str, etag: str, metadata: dict, load: Callable[[], bytes | None],
                              receive_count: int) -> None:
        """Diarize the audio `load()` gives (None: nothing to do here) as version `etag` of incoming/<path> and
        write its results, or its error record; a run whose object was replaced meanwhile writes nothing."""
        settings, blobs = self.runtime.settings, self.runtime.backends.blobs
        results_base = result_stem(key)
        started = time.monotonic()
        try:
            options = _options_from_metadata(metadata)
            audio = load()
            if audio is None:
                return
            result = self._run_engine(audio, options)
        except PermanentJobError as exc:
            if not self._superseded(key, etag):
                self._write_batch_error(key, results_base, exc.code, exc.message, current_etag=etag)
            return
        except Exception as exc:
            if receive_count >= settings.max_receive_count and not self._superseded(key, etag):
                self._write_batch_error(key, results_base, "processing_failed",
                                        f"Gave up after {receive_count} attempts; last error: {type(exc).__name__}.",
                                        current_etag=etag)
            raise
        # A newer version may have been uploaded (and even finished by another worker) while the engine ran.
        if self._superseded(key, etag):
            return
        file_id = _rttm_file_id(key[len(INCOMING_PREFIX):])
        blobs.put(results_base + ".rttm", result.to_rttm(file_id).encode(), content_type="text/plain")
        # A stale failure from an earlier version goes before the .json: once the .json is there a redelivery
        # stops at "already written", so a crash between the two would leave both forever.
        self._delete_own_error_record(key, results_base)
        blobs.put(results_base + ".json", json.dumps(result.to_dict()).encode(), content_type="application/json",
                  metadata={"source-etag": etag})  # written last: its presence means "done"
        metrics.add_metric(name="BatchObjectsCompleted", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="AudioSeconds", unit=MetricUnit.Seconds, value=float(result.duration))
        metrics.add_metric(name="ProcessingSeconds", unit=MetricUnit.Seconds, value=time.monotonic() - started)
        logger.info("batch object done")

    def _dead_letter_version(self, key: str, event_etag: str) -> str | None:
        """The version of incoming/<path> a dead letter is judged against: the object's current etag (None once
        deleted), from the bucket's listing, which the DeadLetterFunction may read where it may not read the
        audio. Not the event's: a newer version may have been uploaded and finished since, and its result is
        not stale. The event's only when the listing fails."""
        try:
            return self.runtime.backends.blobs.current_etag(key)
        except BackendError:
            return event_etag or None

    def _batch_result_current(self, results_base: str, current: str | None) -> bool:
        """True when results/<path>.json is for version `current` of the object (a previous version's result
        does not count, as in process_object); an object deleted since (None): any result counts."""
        result = self.runtime.backends.blobs.head(results_base + ".json")
        if result is None:
            return False
        return current is None or result.metadata.get("source-etag") == current

    def _superseded(self, key: str, etag: str) -> bool:
        """True when incoming/<path> is no longer the version this run started from (replaced or deleted): its
        results are left alone, the newer version's own event writes them."""
        head = self.runtime.backends.blobs.head(key)
        if head is not None and head.etag == etag:
            return False
        logger.info("object replaced or deleted while being processed: nothing written for the old version",
                    extra={"started_etag": etag, "current_etag": head.etag if head is not None else None})
        return True

    def _delete_own_error_record(self, key: str, results_base: str) -> None:
        """Deletes results/<path>.error.json only if it is this object's: it is also the result of
        incoming/<path>.error."""
        blobs = self.runtime.backends.blobs
        try:
            record = json.loads(blobs.get(results_base + ".error.json", max_bytes=MAX_ERROR_RECORD_BYTES))
        except (BlobNotFound, BlobTooLarge, ValueError):
            return
        if isinstance(record, dict) and record.get("source") == key:
            blobs.delete(results_base + ".error.json")

    def _write_batch_error(self, key: str, results_base: str, code: str, message: str,
                           current_etag: str | None = None) -> None:
        """`current_etag`: the version that failed; a result of another version is deleted first, or its .json
        would still read as "done". Without it (an object deleted since) results stay."""
        blobs = self.runtime.backends.blobs
        if current_etag is not None:
            previous = blobs.head(results_base + ".json")
            # No source-etag: not a result but incoming/<path minus .error>'s error record; leave it.
            stale = previous.metadata.get("source-etag") if previous is not None else None
            if stale and stale != current_etag:
                blobs.delete(results_base + ".json")  # first: a crash before the error record leaves "pending"
            if previous is None or (stale and stale != current_etag):
                # With its .json, or an orphan without one (a crash after the delete above, or between a run's
                # two puts): the next try finds no .json, so nothing else would ever remove it.
                blobs.delete(results_base + ".rttm")
        body = {"source": key, "error": {"code": code, "message": message}}
        blobs.put(results_base + ".error.json", json.dumps(body).encode(), content_type="application/json")
        metrics.add_metric(name="BatchObjectsFailed", unit=MetricUnit.Count, value=1)
        logger.warning("batch object failed", extra={"error_code": code, "reason": message})


def _error_body(code: str, message: str) -> dict:
    return {"code": code, "message": message}


def _rttm_file_id(name: str) -> str:
    """RTTM fields are space separated: keep the id one token."""
    return re.sub(r"[\s/]+", "_", name) or "audio"


def _options_from_metadata(metadata: dict) -> dict:
    """S3 user metadata (strings) -> speaker options; bad values are a permanent failure."""
    values: dict = {}
    for name in ("speakers", "min_speakers", "max_speakers"):
        raw = metadata.get(name, metadata.get(name.replace("_", "-")))
        if raw is not None:
            values[name] = raw
    vad = metadata.get("vad")
    if vad is not None:
        values["vad"] = {"true": True, "false": False}.get(vad.strip().lower(), vad)
    try:
        return parse_speaker_options(values).to_dict()
    except ApiError as exc:
        raise PermanentJobError("invalid_options", f"object metadata: {exc.message}") from exc
