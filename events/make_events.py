"""Regenerate the sample events in this folder: ``python events/make_events.py``.

API events use the API Gateway REST proxy (v1) shape of ``sam local generate-event apigateway aws-proxy``;
SQS events the shape of ``sam local generate-event sqs receive-message``. They carry the example key
EXAMPLE_API_KEY: for ``sam local invoke`` against real tables, create a key
(``python -m diarizer_service.keys create``) and put it in place of that value, and use your bucket name.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import struct
import wave
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE_API_KEY = "dk_samlocal_EXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPL"
EXAMPLE_KEY_ID = "samlocal"
EXAMPLE_BUCKET = "diarizer-audio-example"
WEBHOOK = "https://example.com/diarize-webhook"
REQUEST_ID = "sam-local-1"
VOICEPRINT_ID = "vp_0123456789abcdef"
BATCH_KEY = "incoming/sam local/sample.wav"
DEMO = HERE.parent / "demo"


def one_second_wav() -> bytes:
    """1 s of a 220 Hz tone, 16 kHz mono 16-bit: small, real audio."""
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 220 * n / 16000))) for n in range(16000))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(frames)
    return buffer.getvalue()


def one_voice_ogg() -> bytes:
    """The demo's voice "A" alone (its turns of demo/two-speakers.flac that nobody overlaps): enrolment audio,
    as Ogg Vorbis to keep the event small."""
    import numpy as np
    import soundfile as sf

    samples, rate = sf.read(DEMO / "two-speakers.flac", dtype="float32")
    turns = [(float(f[3]), float(f[3]) + float(f[4]), f[7]) for f in
             (line.split() for line in (DEMO / "two-speakers.rttm").read_text().splitlines())]
    alone = [(a, b) for a, b, who in turns if who == "A" and not any(o != "A" and s < b and e > a for s, e, o in turns)]
    audio = np.concatenate([samples[int(a * rate) : int(b * rate)] for a, b in alone])
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="OGG", subtype="VORBIS")
    return buffer.getvalue()


def api_event(method: str, path: str, resource: str, query: dict, body: dict | None = None,
              path_parameters: dict | None = None) -> dict:
    headers = {"Accept": "application/json", "Content-Type": "application/json", "Host": "127.0.0.1:3000",
               "User-Agent": "Swagger-Codegen/1.0.0/python", "X-Forwarded-Port": "3000", "X-Forwarded-Proto": "http"}
    return {
        "body": json.dumps(body) if body is not None else None,
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "isBase64Encoded": False,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()},
        "pathParameters": path_parameters,
        "stageVariables": None,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": {
            "accountId": "123456789012", "resourceId": "123456", "stage": "Prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "requestTime": "09/Apr/2015:12:34:56 +0000",
            "requestTimeEpoch": 1428582896000, "path": f"/Prod{path}", "resourcePath": resource,
            "httpMethod": method, "apiId": "1234567890", "protocol": "HTTP/1.1",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "Swagger-Codegen/1.0.0/python", "apiKey": None,
                         "accessKey": None, "accountId": None, "caller": None, "cognitoIdentityId": None,
                         "cognitoIdentityPoolId": None, "user": None, "userArn": None},
        },
    }


def sqs_event(body: str, message_id: str, queue: str = "diarizer-jobs") -> dict:
    return {"Records": [{
        "messageId": message_id, "receiptHandle": "MessageReceiptHandle", "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1523232000000",
                       "SenderId": "123456789012", "ApproximateFirstReceiveTimestamp": "1523232000001"},
        "messageAttributes": {}, "md5OfBody": "7b270e59b47ff90a553787216d55d91d", "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}", "awsRegion": "us-east-1",
    }]}


def s3_notification(key: str) -> dict:
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "EXAMPLE123456789", "x-amz-id-2": "EXAMPLE123/abcdefghijklmn"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "incoming-audio",
               "bucket": {"name": EXAMPLE_BUCKET, "ownerIdentity": {"principalId": "EXAMPLE"},
                          "arn": f"arn:aws:s3:::{EXAMPLE_BUCKET}"},
               "object": {"key": key.replace(" ", "+"), "size": 32044, "eTag": "0123456789abcdef0123456789abcdef",
                          "sequencer": "0A1B2C3D4E5F678901"}},
    }]}


def main() -> None:
    audio = base64.b64encode(one_second_wav()).decode()
    body = {"content": audio, "sampleRate": 16000, "encoding": "Wave", "languageCode": "en-US", "speakers": -1,
            "audioType": "default", "vad": True}
    key_only = {"apikey": EXAMPLE_API_KEY}
    async_query = {**key_only, "webhook": WEBHOOK, "request_id": REQUEST_ID}
    status_path = f"/audio/generic/api/v2/async/diarize/{REQUEST_ID}"
    events = {
        "api-v2-async-diarize.json": api_event("POST", "/audio/generic/api/v2/async/diarize",
                                               "/audio/generic/api/v2/async/diarize", async_query, body),
        "api-v1-async-diarize.json": api_event("POST", "/audio/generic/api/v1/async/diarize",
                                               "/audio/generic/api/v1/async/diarize",
                                               {**async_query, "request_id": "sam-local-v1"}, body),
        "api-v2-sync-diarize.json": api_event("POST", "/audio/generic/api/v2/sync/diarize",
                                              "/audio/generic/api/v2/sync/diarize", key_only, body),
        "api-v1-sync-diarize.json": api_event("POST", "/audio/generic/api/v1/sync/diarize",
                                              "/audio/generic/api/v1/sync/diarize", key_only, body),
        "api-v2-job-status.json": api_event("GET", status_path, "/audio/generic/api/v2/async/diarize/{request_id}",
                                            key_only, None, {"request_id": REQUEST_ID}),
        "api-v2-uploads.json": api_event("POST", "/audio/generic/api/v2/uploads", "/audio/generic/api/v2/uploads",
                                         key_only, {}),
        "api-v2-voiceprints-enroll.json": api_event(
            "POST", "/audio/generic/api/v2/voiceprints", "/audio/generic/api/v2/voiceprints", key_only,
            {"name": "alice", "content": base64.b64encode(one_voice_ogg()).decode()}),
        "api-v2-voiceprints-list.json": api_event("GET", "/audio/generic/api/v2/voiceprints",
                                                  "/audio/generic/api/v2/voiceprints", key_only),
        "api-v2-voiceprints-delete.json": api_event(
            "DELETE", f"/audio/generic/api/v2/voiceprints/{VOICEPRINT_ID}",
            "/audio/generic/api/v2/voiceprints/{voiceprint_id}", key_only, None, {"voiceprint_id": VOICEPRINT_ID}),
        "sqs-job.json": sqs_event(json.dumps({"job_id": f"{EXAMPLE_KEY_ID}#{REQUEST_ID}"}),
                                  "059f36b4-87a3-44ab-83d2-661975830a7d"),
        "sqs-s3-incoming.json": sqs_event(json.dumps(s3_notification(BATCH_KEY)),
                                          "2e1424d4-f796-459a-8184-9c92662be6da"),
        # TranscodeFunction's two messages, as the worker forwards them: an API job, and a batch object's version
        # (its ETag: the MD5 of the bytes one_second_wav() gives, put in one request). Any audio PyAV reads will
        # do for trying the function; on AWS only M4A/MP4/WebM/AMR/WMA/CAF and the like come this way.
        "sqs-transcode-job.json": sqs_event(json.dumps({"job_id": f"{EXAMPLE_KEY_ID}#{REQUEST_ID}"}),
                                            "5b1f0e52-0c0e-4d3f-9a55-3f8a0e3b4c11", "diarizer-transcode"),
        "sqs-transcode-batch-object.json": sqs_event(
            json.dumps({"batch_object": {"key": BATCH_KEY, "etag": hashlib.md5(one_second_wav()).hexdigest()}}),
            "8d6c2a7e-41b9-4f0e-b1f3-2a9c5d7e6f20", "diarizer-transcode"),
    }
    for name, event in events.items():
        (HERE / name).write_text(json.dumps(event, indent=2) + "\n")


if __name__ == "__main__":
    main()
