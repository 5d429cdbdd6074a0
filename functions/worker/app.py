"""Worker Lambda (SQS, ReportBatchItemFailures): each record is an API job or an S3 batch event.

The engine is created once per container (lazily, on the first record) and reused for every message.
`dead_letter_handler` is the DeadLetterFunction (same code, no engine): it reads the dead-letter queue
and fails the jobs whose worker died on every attempt, so no client waits on a job stuck in "running".
`sweep_handler` is the SweeperFunction (a schedule, no engine): it re-sends the messages of jobs left queued
and re-drives pending webhooks (diarizer_service.sweeper).
"""
from __future__ import annotations

import time

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from diarizer_service.observability import MetricUnit, logger, metrics, tracer
from diarizer_service.runtime import get_runtime
from diarizer_service.sweeper import sweep
from diarizer_service.webhooks import delivery_margin
from diarizer_service.worker import Worker

processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
dead_letter_processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
_worker: Worker | None = None
_deadline: float | None = None  # time.monotonic() when this invocation times out (set per invocation)


def get_worker() -> Worker:
    global _worker
    if _worker is None or _worker.runtime is not get_runtime():
        _worker = Worker(get_runtime())
    return _worker


def _set_deadline(context: object) -> None:
    global _deadline
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    _deadline = time.monotonic() + remaining_ms() / 1000 if callable(remaining_ms) else None


def record_handler(record: SQSRecord) -> None:
    logger.remove_keys(["request_id", "key_id", "object_key"])  # keys of the previous record
    logger.append_keys(message_id=record.message_id)
    receive_count = int(record.attributes.approximate_receive_count or 1)
    try:
        get_worker().handle_message(record.body, receive_count, deadline=_deadline)
    except Exception:
        logger.exception("record failed; SQS will redeliver it", extra={"receive_count": receive_count})
        raise


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: object) -> dict:
    _set_deadline(context)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)


def margin_now() -> float:
    """Stop starting work that may deliver a webhook this long before the invocation's timeout
    (`webhooks.delivery_margin` at the configured webhook timeout): a dead-letter batch cut by the timeout returns no
    partial answer, so every record in it (the finished ones too) would come back."""
    return delivery_margin(get_runtime().settings.webhook_timeout_seconds)


class NotStarted(Exception):
    """A dead letter left for a later receive: too little time left in this invocation to handle it."""


def dead_letter_record_handler(record: SQSRecord) -> None:
    logger.remove_keys(["request_id", "key_id", "object_key"])
    logger.append_keys(message_id=record.message_id)
    if _deadline is not None and time.monotonic() > _deadline - margin_now():
        raise NotStarted("too little time left for a webhook delivery; SQS shows this dead letter again")
    receive_count = int(record.attributes.approximate_receive_count or 1)
    if get_worker().fail_dead_letter(record.body, receive_count):
        metrics.add_metric(name="DeadLettersFailed", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def dead_letter_handler(event: dict, context: object) -> dict:
    _set_deadline(context)
    return process_partial_response(
        event=event, record_handler=dead_letter_record_handler, processor=dead_letter_processor, context=context
    )


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def sweep_handler(event: dict, context: object) -> dict:
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    budget = remaining_ms() / 1000 - margin_now() if callable(remaining_ms) else 60.0
    report = sweep(get_worker(), budget_seconds=max(budget, 1.0))
    return {"resent": len(report.resent), "redelivered": len(report.redelivered), "errors": report.errors}
