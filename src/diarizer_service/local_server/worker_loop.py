"""The local stand-in for the SQS -> worker Lambda event source mapping: a thread that receives from the local
queue, calls the worker's `lambda_handler` with an SQS-shaped event, deletes what succeeded and lets the rest
come back (`batchItemFailures`), like SQS with ReportBatchItemFailures.

Messages received too often move to the dead letters inside `receive`; their jobs are then marked failed here
(in AWS the last attempt does that itself, but a process killed during it cannot) and the dead letter is
deleted, as the DeadLetterFunction consumes the dead-letter queue. The table is read only when `receive` moved
something there (or once at start-up, or again after a handling that failed), never on every poll.

Between messages the loop runs the outbox sweeper (sweeper.py) at start-up and every `sweep_interval` seconds,
as the deployed SweeperFunction's schedule does.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from diarizer_service.backends.local import QueueMessage, SqliteJobQueue, to_sqs_event
from diarizer_service.local_server.handlers import LocalWorkerContext

Say = Callable[[str], None]


class WorkerLoop:
    def __init__(self, queue: SqliteJobQueue, handler: Callable[[dict, object], dict], *,
                 on_dead_letter: Callable[[dict], None] | None = None, warm_up: Callable[[], object] | None = None,
                 engine_gate: threading.Lock | None = None, visibility_timeout: float = 900.0,
                 retry_delay: float = 5.0, poll_interval: float = 0.5, say: Say = print,
                 sweep: Callable[[bool], object] | None = None, sweep_interval: float = 60.0):
        self.queue = queue
        self.handler = handler
        self.on_dead_letter = on_dead_letter
        self.warm_up = warm_up
        self.engine_gate = engine_gate  # held while a job runs: sync requests wait for it (see Gateway)
        self.visibility_timeout = visibility_timeout  # the worker Lambda's timeout: longer than any job
        self.retry_delay = retry_delay  # a failed message is retried after this long
        self.poll_interval = poll_interval
        self.say = say
        self.sweep = sweep  # sweep(startup) -> report; startup=True: everything in the outbox is due
        self.sweep_interval = sweep_interval
        self._stop = threading.Event()
        self._current: QueueMessage | None = None
        self._dead_letters_seen = -1  # queue.dead_lettered at the last check (-1: check once at start-up)
        self._next_sweep = 0.0
        self._thread = threading.Thread(target=self._run, name="diarizer-worker", daemon=True)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Take no new message (the one in hand goes on)."""
        self._stop.set()

    def stop(self, grace_seconds: float) -> bool:
        """Stop taking messages; wait up to `grace_seconds` for the one in hand. Returns True when the loop
        ended; otherwise that message is made visible again so the next start runs it at once."""
        self.request_stop()
        if self.busy:
            self.say(f"stopping: letting the running job finish (up to {grace_seconds:g} s)")
        self._thread.join(grace_seconds)
        if not self._thread.is_alive():
            return True
        current = self._current
        if current is not None:
            self.queue.give_back(current.receipt_handle)
            self.say("stopping: the running job did not finish in time; it runs again after the next start")
        return False

    # ---- the loop ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.warm_up is not None:
            try:
                self.warm_up()  # load the engine now, not on the first job
            except Exception as exc:  # the jobs themselves will fail and say why
                self.say(f"worker: could not load the engine: {type(exc).__name__}: {exc}")
        while not self._stop.is_set():
            self._sweep_if_due()
            try:
                worked = self.run_once()
            except Exception as exc:  # e.g. the data dir vanished: keep the loop alive, slow down
                self.say(f"worker: queue error: {type(exc).__name__}: {exc}")
                worked = False
            if not worked:
                self._stop.wait(self.poll_interval)

    def run_once(self) -> bool:
        """Receive and handle at most one message; False when the queue had nothing visible."""
        messages = self.queue.receive(max_messages=1, visibility_timeout=self.visibility_timeout)
        self._check_dead_letters()
        if not messages:
            return False
        self._current = messages[0]
        try:
            failed = self._invoke(messages)
        finally:
            self._current = None
        for message in messages:
            if message.message_id in failed:
                self.queue.change_visibility(message.receipt_handle, self.retry_delay)
            else:
                self.queue.delete(message.receipt_handle)
        return True

    def _invoke(self, messages: list[QueueMessage]) -> set[str]:
        """Message ids that failed (all of them when the handler itself raised)."""
        started = time.monotonic()
        try:
            if self.engine_gate is not None:
                with self.engine_gate:
                    answer = self.handler(to_sqs_event(messages), LocalWorkerContext("diarizer-worker"))
            else:
                answer = self.handler(to_sqs_event(messages), LocalWorkerContext("diarizer-worker"))
        except Exception as exc:
            self.say(f"worker: handler raised {type(exc).__name__}: {exc}; retrying in {self.retry_delay:g} s")
            return {m.message_id for m in messages}
        failed = {item["itemIdentifier"] for item in (answer or {}).get("batchItemFailures", [])}
        for message in messages:
            outcome = f"failed, retrying in {self.retry_delay:g} s" if message.message_id in failed else "handled"
            self.say(f"worker: message {message.message_id} (attempt {message.receive_count}) {outcome} "
                     f"in {time.monotonic() - started:.1f} s")
        return failed

    def _sweep_if_due(self) -> None:
        if self.sweep is None or time.monotonic() < self._next_sweep:
            return
        startup = self._next_sweep == 0.0
        self._next_sweep = time.monotonic() + self.sweep_interval
        try:
            self.sweep(startup)
        except Exception as exc:  # the next sweep tries again
            self.say(f"worker: sweep failed: {type(exc).__name__}: {exc}")

    def _check_dead_letters(self) -> None:
        if self.on_dead_letter is None or self.queue.dead_lettered == self._dead_letters_seen:
            return
        seen = self.queue.dead_lettered
        try:
            for dead in self.queue.dead_letters():
                self.on_dead_letter(dead)
                self.queue.delete_dead_letter(dead["message_id"])
        except Exception as exc:  # e.g. database locked: the letter stays, and so does the reason to look again
            self.say(f"worker: dead letter not handled yet: {type(exc).__name__}: {exc}; retrying on the next poll")
            return  # not raised: the message received with it must still run now, not after its visibility
        self._dead_letters_seen = seen


def fail_dead_letter_job(worker, dead_letter: dict) -> bool:
    """Fail the job (or batch object) of a dead-lettered message unless it already finished, as the deployed
    stack's DeadLetterFunction does. `worker` is the worker handler's `Worker`."""
    return worker.fail_dead_letter(dead_letter["body"], dead_letter["receive_count"])
