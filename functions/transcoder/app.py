"""Transcode Lambda (SQS, ReportBatchItemFailures): container audio -> 16 kHz mono FLAC, then back to the worker.

Deployed with BaseLayer + TranscodeLayer (PyAV) only: no engine, no models. See diarizer_service/transcoder.py.
"""
from __future__ import annotations

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from diarizer_service.observability import logger, metrics, tracer
from diarizer_service.runtime import get_runtime
from diarizer_service.transcoder import Transcoder
from diarizer_service.worker import Worker

processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def record_handler(record: SQSRecord) -> None:
    logger.remove_keys(["request_id", "key_id"])
    logger.append_keys(message_id=record.message_id)
    runtime = get_runtime()
    Transcoder(runtime).handle_message(record.body, fail=Worker(runtime).fail_job)


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: object) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
