"""The outbox sweeper: what a process that died after a side effect left undone, done again.

Two kinds of records sit in the outbox index past their due time (see jobs.py):

* a `queued` job whose message was never confirmed sent: its submit died between writing the record and
  sending the message (or recording that it did). The message is sent and the record leaves the outbox; a
  duplicate message is harmless because every job transition is conditional.
* a finished job whose webhook is `pending`: the worker died before the POST was acknowledged, or the
  receiver was down. The delivery is re-driven with the same body and the same `webhook-id`.

Deployed as the SweeperFunction (a schedule, no engine); `diarize serve` runs it at start-up and every
minute. Each run is bounded by a time budget, so a backlog of slow receivers cannot outlive the invocation.
A record whose handling raises something unexpected is logged and pushed back (its `outbox_at` moved later):
it must not stay the oldest due record, in front of every other one, at every run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from diarizer_service.backends import BackendError
from diarizer_service.jobs import FINISHED
from diarizer_service.observability import MetricUnit, logger, metrics
from diarizer_service.worker import Worker

BATCH = 25  # records read per query


@dataclass
class SweepReport:
    resent: list[str] = field(default_factory=list)  # job ids whose message was sent again
    redelivered: list[str] = field(default_factory=list)  # job ids whose pending webhook was re-driven
    errors: int = 0


def sweep(worker: Worker, *, now: float | None = None, budget_seconds: float = 60.0) -> SweepReport:
    """One pass over the overdue outbox records. `now`: the time the due times are compared with (tests move
    it forward instead of waiting). Stops starting new work once `budget_seconds` have passed."""
    runtime = worker.runtime
    report = SweepReport()
    started = time.monotonic()
    seen: set[str] = set()
    while time.monotonic() - started < budget_seconds:
        clock = time.time() if now is None else now
        due = [job for job in runtime.jobs.list_due(clock, BATCH) if job.job_id not in seen]
        if not due:
            break
        for job in due:
            if time.monotonic() - started >= budget_seconds:
                break
            seen.add(job.job_id)
            logger.append_keys(request_id=job.request_id, key_id=job.key_id)
            try:
                if job.awaiting_message:
                    runtime.backends.queue.send({"job_id": job.job_id})
                    runtime.jobs.mark_enqueued(job.job_id)
                    report.resent.append(job.job_id)
                    logger.info("sweeper: sent the message of a job left queued without one")
                elif job.status in FINISHED and job.webhook_pending:
                    worker.deliver_pending(job)
                    report.redelivered.append(job.job_id)
                else:  # nothing left to do (e.g. running: SQS owns it): out of the index
                    runtime.jobs.leave_outbox(job.job_id)
            except BackendError as exc:  # the next run tries again: the record is still due
                report.errors += 1
                logger.warning("sweeper: could not handle a due record", extra={"reason": str(exc)})
            except Exception as exc:  # noqa: BLE001 (a bug or a corrupt record: the other records still run)
                report.errors += 1
                # The type only: a message could quote the webhook URL, whose query string may hold a token.
                logger.warning("sweeper: a due record raised unexpectedly; pushed back",
                               extra={"error_type": type(exc).__name__})
                _push_back(runtime, job.job_id, clock)
    logger.remove_keys(["request_id", "key_id"])
    if report.resent:
        metrics.add_metric(name="SweptQueuedJobs", unit=MetricUnit.Count, value=len(report.resent))
    if report.redelivered:
        metrics.add_metric(name="SweptWebhooks", unit=MetricUnit.Count, value=len(report.redelivered))
    return report


def _push_back(runtime, job_id: str, clock: float) -> None:
    """Move the record's due time later (never off the outbox: a bug fixed later still finds it). Only
    `outbox_at`: on a record that left the outbox meanwhile it is inert (the index needs `outbox`)."""
    delay = max(runtime.settings.sweep_after_seconds, 1)
    try:
        runtime.jobs.postpone(job_id, int(clock) + delay)
    except Exception:  # noqa: BLE001 (the record stays due; `seen` skips it for the rest of this run)
        logger.warning("sweeper: could not push back a record that raised")
