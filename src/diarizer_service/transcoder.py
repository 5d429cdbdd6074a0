"""The transcode step on AWS: container audio (M4A/AAC, MP4/MOV, WebM, AMR, WMA, CAF, AVI, MPEG-TS/PS, and WAVs of
codecs libsndfile lacks) -> 16 kHz mono FLAC.

PyAV does not fit in the worker beside the engine (Lambda's 250 MB), so the worker forwards such a job to the
transcode queue (`forward`) and TranscodeFunction (`Transcoder.handle_message`) converts it, points the job at
the FLAC and queues it for the worker again. Local mode and the CLI decode these formats in-process instead.

Batch objects (incoming/<path>) take the same way: the worker forwards {"batch_object": {key, etag}}, the FLAC
goes under jobs/batch/ (expiring with the jobs' audio), and the worker gets {"batch_object": {key, etag,
"transcoded"}} back, or {..., "error"} for audio that cannot be decoded, and writes the results or the error
record itself (this function may not write under results/).

Redelivery is safe at every step: the FLAC's key is fixed per job (per object version), so a second delivery finds
it and only repeats the job update and the (idempotent) worker message. Audio that can never become a FLAC fails the
job with the code the worker would give it (`unsupported_audio`, `empty_audio`, `audio_too_long`, ...) and its
webhook; anything else raises, so SQS retries and the dead-letter path ends it.
"""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass

from diarizer.audio import needs_transcoder, open_source
from diarizer.types import AudioDecodeError

from diarizer_service import messages
from diarizer_service.backends import BlobNotFound, BlobTooLarge
from diarizer_service.jobs import FINISHED, Job, PermanentJobError, job_prefix
from diarizer_service.observability import MetricUnit, logger, metrics
from diarizer_service.runtime import Runtime

TRANSCODED_NAME = "audio.transcoded.flac"


def needs_transcoding(audio: bytes) -> bool:
    """True for audio only PyAV decodes whole: M4A/MP4/WebM, and FLAC or MP3 files libsndfile would fail on
    or cut short (`diarizer.audio.needs_transcoder`). Unknown bytes are left to the engine's own clear error."""
    try:
        return needs_transcoder(audio)
    except AudioDecodeError:
        return False


def transcoded_key(job: Job) -> str:
    return job_prefix(job.key_id, job.request_id) + TRANSCODED_NAME


def transcoded_object_key(key: str, etag: str) -> str:
    """Where a batch object's version goes as FLAC: under jobs/ (its lifecycle rule expires it with the jobs' audio;
    "batch" is no API key id), named by a hash of the key, since a key may be up to 1,024 bytes."""
    return f"jobs/batch/{hashlib.sha256(key.encode()).hexdigest()[:32]}-{etag}.flac"


@dataclass
class Transcoder:
    runtime: Runtime

    def handle_message(self, body: str, fail) -> None:
        """`fail(job, code, message)`: the worker's failure path (job -> failed, signed webhook)."""
        message = messages.parse(body)
        if message is None or not ("job_id" in message or "batch_object" in message):
            logger.error("dropping a message of no shape the service writes")
            return
        if "batch_object" in message:
            self._handle_batch_object(message["batch_object"])
            return
        job = self.runtime.jobs.get(message["job_id"])
        if job is None or job.status in FINISHED:
            logger.info("no job to transcode (gone or finished): message ignored")
            return
        logger.append_keys(request_id=job.request_id, key_id=job.key_id)
        blobs, target = self.runtime.backends.blobs, transcoded_key(job)
        if job.audio_key != target and blobs.head(target) is None:
            try:
                seconds = self._transcode(job, target)
            except PermanentJobError as exc:
                fail(job, exc.code, exc.message)
                return
            metrics.add_metric(name="TranscodedAudioSeconds", unit=MetricUnit.Seconds, value=seconds)
        self.runtime.backends.jobs.update(job.job_id, {"audio_key": target, "source_audio_key": job.audio_key
                                                       if job.audio_key != target else None})
        self.runtime.backends.queue.send({"job_id": job.job_id})
        logger.info("transcoded audio queued for the worker")

    def _handle_batch_object(self, message: dict) -> None:
        key, etag = str(message.get("key", "")), str(message.get("etag", ""))
        blobs = self.runtime.backends.blobs
        head = blobs.head(key)
        if head is None or head.etag != etag:
            logger.info("batch object replaced or deleted: its newer version's event takes it")
            return
        target, answer = transcoded_object_key(key, etag), {"key": key, "etag": etag}
        if blobs.head(target) is None:
            try:
                self._convert(key, target, "The object")
            except BlobNotFound:
                logger.info("batch object deleted while being transcoded")
                return
            except PermanentJobError as exc:
                answer["error"] = {"code": exc.code, "message": exc.message}
            # The get cannot say which version it read; a newer one's FLAC must not be diarized as this one.
            current = blobs.head(key)
            if current is None or current.etag != etag:
                blobs.delete(target)
                logger.info("batch object replaced while being transcoded: its newer version's event takes it")
                return
        if "error" not in answer:
            answer["transcoded"] = target
        self.runtime.backends.queue.send({"batch_object": answer})
        logger.info("transcoded batch object queued for the worker")

    def _transcode(self, job: Job, target: str) -> float:
        try:
            return self._convert(job.audio_key, target, "The job's audio")
        except BlobNotFound as exc:
            raise PermanentJobError("audio_missing", "The job's audio is gone (expired upload?).") from exc

    def _convert(self, source_key: str, target: str, what: str) -> float:
        """source_key's audio -> 16 kHz mono FLAC at target; the seconds written. Raises BlobNotFound, or
        PermanentJobError with the code the worker gives the same failure (too large, too long, empty, corrupt)."""
        from diarizer.transcode import transcode

        settings = self.runtime.settings
        try:
            audio = self.runtime.backends.blobs.get(source_key, max_bytes=settings.max_upload_bytes)
        except BlobTooLarge as exc:
            raise PermanentJobError("audio_too_large", f"{what} is over {settings.max_upload_bytes} bytes.") from exc
        with tempfile.TemporaryFile(prefix="diarizer-transcoded-") as out:
            try:
                stream, fmt = open_source(audio)
                seconds = transcode(stream, fmt, out, out_format="FLAC", max_seconds=settings.max_audio_seconds)
            except AudioDecodeError as exc:
                raise PermanentJobError.for_audio(exc, settings.max_audio_seconds) from exc
            out.seek(0)
            self.runtime.backends.blobs.put(target, out.read(), content_type="audio/flac",
                                            metadata={"format": "FLAC", "source-format": fmt})
        return seconds


def forward(runtime: Runtime, job: Job) -> None:
    """Worker side: send the job to the transcode queue (the message is the same {"job_id"} shape)."""
    runtime.backends.transcode_queue.send({"job_id": job.job_id})
    logger.info("container audio: job forwarded to the transcoder")
