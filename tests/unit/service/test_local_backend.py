import time

import pytest

from diarizer_service.backends import BlobNotFound
from diarizer_service.backends.local import to_sqs_event
from diarizer_service.jobs import Job, JobStatus


def make_job(**overrides):
    values = dict(key_id="k1", key_hash="h", request_id="r1", api="diarize", audio_key="jobs/k1/r1/audio",
                  options={"speakers": -1}, webhook=None, retention_days=7)
    values.update(overrides)
    return Job.new(**values)


def test_blobs_round_trip_metadata_and_refuse_traversal(runtime):
    blobs = runtime.backends.blobs
    blobs.put("incoming/a b/c.flac", b"data", metadata={"Speakers": "2"})
    assert blobs.get("incoming/a b/c.flac") == b"data"
    info = blobs.head("incoming/a b/c.flac")
    assert info.size == 4 and info.metadata == {"speakers": "2"} and info.etag
    assert blobs.head("missing") is None
    with pytest.raises(BlobNotFound):
        blobs.get("missing")
    with pytest.raises(ValueError):
        blobs.put("../escape", b"x")
    blobs.delete("incoming/a b/c.flac")
    blobs.delete("incoming/a b/c.flac")  # idempotent, like S3
    assert blobs.head("incoming/a b/c.flac") is None


def test_queue_visibility_timeout_receive_count_and_dead_letters(runtime):
    queue = runtime.backends.queue  # max_receive_count = 3
    queue.send({"job_id": "k1#r1"})
    [first] = queue.receive(visibility_timeout=0.5)
    assert first.receive_count == 1 and queue.receive() == []  # invisible while a worker holds it
    time.sleep(0.55)  # the worker "died": the message comes back
    [second] = queue.receive(visibility_timeout=0.5)
    assert second.message_id == first.message_id and second.receive_count == 2
    event = to_sqs_event([second])
    assert event["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    time.sleep(0.55)
    [third] = queue.receive(visibility_timeout=0.5)
    assert third.receive_count == 3
    time.sleep(0.55)
    assert queue.receive() == []  # moved to the dead letters
    assert [d["message_id"] for d in queue.dead_letters()] == [first.message_id]


def test_deleted_message_does_not_come_back(runtime):
    queue = runtime.backends.queue
    queue.send({"n": 1})
    [message] = queue.receive(visibility_timeout=0.01)
    queue.delete(message.receipt_handle)
    time.sleep(0.02)
    assert queue.receive() == []


def test_job_transitions_are_conditional(runtime):
    jobs = runtime.jobs
    job = make_job()
    assert jobs.create(job) and not jobs.create(job)
    assert jobs.start(jobs.get(job.job_id))
    assert jobs.start(jobs.get(job.job_id))  # a redelivery after a crash may take it again
    assert jobs.get(job.job_id).attempts == 2
    assert jobs.finish(job, result={"num_speakers": 0, "segments": []}, result_key="r", rttm_key="t",
                       audio_seconds=1.5, result_size=10, webhook_due_at=0)
    assert not jobs.finish(job, result={}, result_key="r", rttm_key="t", audio_seconds=1, result_size=1,
                           webhook_due_at=0)
    assert not jobs.fail(job, "x", "y", webhook_due_at=0)
    assert not jobs.start(jobs.get(job.job_id))
    done = jobs.get(job.job_id)
    assert done.status == JobStatus.DONE.value and done.result == {"num_speakers": 0, "segments": []}
    assert done.expires_at >= done.created_at + 7 * 86400


def test_large_results_are_not_stored_inline(runtime):
    jobs = runtime.jobs
    job = make_job(request_id="big")
    jobs.create(job)
    jobs.start(job)
    assert jobs.finish(job, result={"segments": []}, result_key="r", rttm_key="t", audio_seconds=1,
                       result_size=10**6, webhook_due_at=0)
    assert jobs.get(job.job_id).result is None and jobs.get(job.job_id).result_key == "r"


def test_update_of_missing_job_is_false(runtime):
    assert not runtime.backends.jobs.update("nope", {"status": "done"}, expected_status=("running",))


def test_bounded_reads_refuse_bigger_blobs(runtime):
    from diarizer_service.backends import BlobTooLarge

    blobs = runtime.backends.blobs
    blobs.put("jobs/k/r/audio", b"x" * 10)
    assert blobs.get("jobs/k/r/audio", max_bytes=10) == b"x" * 10
    with pytest.raises(BlobTooLarge):
        blobs.get("jobs/k/r/audio", max_bytes=9)
