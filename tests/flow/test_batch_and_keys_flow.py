"""S3 batch failures and the keys CLI against the AWS backend (moto)."""
import dataclasses
import json

from diarizer_service import keys as keys_cli
from diarizer_service.auth import hash_api_key


def s3_event_message(bucket: str, key: str) -> str:
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": bucket}, "object": {"key": key.replace(" ", "+")}}}]})


def test_batch_failure_writes_an_error_file_and_other_buckets_are_ignored(stack, worker_handler, fake_engine):
    bucket = stack.runtime.settings.bucket
    stack.s3.put_object(Bucket=bucket, Key="incoming/broken.mp3", Body=b"ID3 but no audio frames at all")
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=s3_event_message(bucket, "incoming/broken.mp3"))
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=s3_event_message("someone-elses-bucket",
                                                                                   "incoming/broken.mp3"))
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}))
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}
    error = json.loads(stack.s3.get_object(Bucket=bucket, Key="results/broken.mp3.error.json")["Body"].read())
    assert error["source"] == "incoming/broken.mp3" and error["error"]["code"] == "unsupported_audio"
    listed = stack.s3.list_objects_v2(Bucket=bucket, Prefix="results/")["Contents"]
    assert [o["Key"] for o in listed] == ["results/broken.mp3.error.json"] and fake_engine.calls == 0


def test_oversized_upload_is_413(stack, api_handler, webhook_receiver, wav_bytes):
    stack.runtime.settings = dataclasses.replace(stack.runtime.settings, max_upload_bytes=1000)
    _, upload = stack.call_api("POST", "/audio/generic/api/v2/uploads", handler=api_handler)
    stack.s3.put_object(Bucket=stack.runtime.settings.bucket, Body=wav_bytes(1.0),
                        Key=f"uploads/{stack.key.record.key_id}/{upload['upload_id']}")
    status, answer = stack.call_api("POST", "/audio/generic/api/v2/async/diarize", handler=api_handler,
                                    query={"webhook": webhook_receiver.url}, body={"upload_id": upload["upload_id"]})
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (413, "upload_too_large", "upload_id")


def test_keys_cli_against_dynamodb(stack, capsys):
    assert keys_cli.main(["--json", "create", "--name", "customer-a"]) == 0
    created = json.loads(capsys.readouterr().out)
    item = stack.dynamodb.Table("diarizer-test-keys").get_item(Key={"key_hash": hash_api_key(created["api_key"])})["Item"]
    assert item["key_id"] == created["key_id"] and created["api_key"] not in json.dumps(item, default=str)
    assert keys_cli.main(["revoke", created["key_id"]]) == 0
    capsys.readouterr()
    assert keys_cli.main(["--json", "list"]) == 0
    listed = {k["key_id"]: k["status"] for k in json.loads(capsys.readouterr().out)}
    assert listed == {stack.key.record.key_id: "active", created["key_id"]: "revoked"}


def test_objects_with_keys_at_s3s_limit_get_their_results(stack, worker_handler, fake_engine, wav_bytes):
    """An incoming/ key may be 1,024 bytes, all S3 allows; results/<path>.error.json would be 10 bytes more and
    S3 would refuse the put every time (moto does not check the length: the keys written are checked here)."""
    bucket = stack.runtime.settings.bucket
    stem = "incoming/" + "réunion-" * 112 + "xx"  # 1,019 bytes of UTF-8, two-byte characters all along
    good, broken = stem + "a.wav", stem + "b.mp3"
    assert len(good.encode()) == len(broken.encode()) == 1024
    stack.s3.put_object(Bucket=bucket, Key=good, Body=wav_bytes(2.0))
    stack.s3.put_object(Bucket=bucket, Key=broken, Body=b"ID3 but no audio frames at all")
    for key in (good, broken):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=s3_event_message(bucket, key))
    assert stack.run_worker(worker_handler) == {"batchItemFailures": []}

    written = [o["Key"] for o in stack.s3.list_objects_v2(Bucket=bucket, Prefix="results/")["Contents"]]
    assert len(written) == 3 and all(len(k.encode()) <= 1024 for k in written)
    [error_key] = [k for k in written if k.endswith(".error.json")]
    error = json.loads(stack.s3.get_object(Bucket=bucket, Key=error_key)["Body"].read())
    assert error["source"] == broken and error["error"]["code"] == "unsupported_audio"
    [result_key] = [k for k in written if k.endswith(".json") and k != error_key]
    assert result_key.startswith("results/réunion-") and result_key[:-5] + ".rttm" in written
    assert json.loads(stack.s3.get_object(Bucket=bucket, Key=result_key)["Body"].read())["segments"]
    assert fake_engine.calls == 1
