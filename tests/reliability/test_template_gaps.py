"""template.yaml checks that tests/unit/test_template_security.py does not make yet: nothing in the API logs
that could hold a key or audio, ACLs off and stale multipart uploads aborted, a DLQ that outlives its source
queue's retention, bounded throttling parameters, batch results that expire and function logs with a
retention (two gaps these tests found, since fixed in template.yaml)."""
from __future__ import annotations

import re

import pytest

from unit.test_template_security import TEMPLATE, _CfnLoader, _resources, yaml


@pytest.fixture(scope="module")
def tpl() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def test_api_logs_never_record_bodies_query_strings_or_keys(tpl):
    (api,) = _resources(tpl, "AWS::Serverless::Api").values()
    props = api["Properties"]
    for settings in props["MethodSettings"]:
        assert settings.get("DataTraceEnabled") in (None, False), "data trace logs full requests: keys and audio"
    access = props.get("AccessLogSetting", {})
    if isinstance(access, dict) and "Fn::If" in access:
        access = access["Fn::If"][1]
    log_format = access.get("Format", "")
    assert log_format, "expected an access log format"
    variables = set(re.findall(r"\$context\.[\w.]+|\$input\.[\w.]+", log_format))
    forbidden = [v for v in variables if re.search(r"(?i)querystring|header|apikey|api_key|\$input|authorizer", v)]
    assert forbidden == [], forbidden
    assert "$context.path" in variables  # the path (request_id) is fine: never the query with `apikey`


def test_bucket_acls_disabled_and_stale_multipart_uploads_aborted(tpl):
    props = tpl["Resources"]["Bucket"]["Properties"]
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    aborts = [r for r in props["LifecycleConfiguration"]["Rules"] if "AbortIncompleteMultipartUpload" in r]
    assert aborts and all(r["Status"] == "Enabled" and "Prefix" not in r for r in aborts)
    assert all(r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] <= 7 for r in aborts)
    versioning = props.get("VersioningConfiguration", {}).get("Status")
    if versioning == "Enabled":  # old versions of audio would outlive the expiry rules
        assert any("NoncurrentVersionExpiration" in r or "NoncurrentVersionExpirationInDays" in r
                   for r in props["LifecycleConfiguration"]["Rules"])


def test_dead_letters_outlive_the_source_queue_retention(tpl):
    """SQS keeps a dead-lettered message only until its *original* enqueue time + the DLQ's retention."""
    resources = tpl["Resources"]
    source = resources["JobsQueue"]["Properties"]["MessageRetentionPeriod"]
    dlq = resources["JobsDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]
    assert dlq > source and dlq == 1209600  # the 14-day maximum: time to inspect and redrive


def test_throttling_parameters_are_bounded_numbers(tpl):
    params = tpl["Parameters"]
    for name in ("ApiRateLimit", "ApiBurstLimit"):
        assert params[name]["Type"] == "Number" and params[name]["MinValue"] >= 1, name
        assert 1 <= params[name]["Default"] <= 10_000, name
    assert params["ApiBurstLimit"]["Default"] >= params["ApiRateLimit"]["Default"]


def test_batch_results_expire_like_the_audio(tpl):
    rules = tpl["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(r.get("Prefix") == "results/" and "ExpirationInDays" in r for r in rules)


def test_function_logs_have_a_retention(tpl):
    functions = _resources(tpl, "AWS::Serverless::Function")
    groups = _resources(tpl, "AWS::Logs::LogGroup")
    for name, fn in functions.items():
        logging = fn["Properties"].get("LoggingConfig", {})
        assert logging.get("LogGroup") or any(name in str(g["Properties"].get("LogGroupName", ""))
                                              for g in groups.values()), name
    assert all("RetentionInDays" in g["Properties"] for g in groups.values())


def test_the_sweeper_runs_on_a_schedule_with_least_privilege(tpl):
    """The outbox sweeper (src/diarizer_service/sweeper.py): no engine, a schedule, and only what it needs:
    query the outbox index, read/update jobs, read keys (webhook secrets) and results, send job messages."""
    resources = tpl["Resources"]
    props = resources["SweeperFunction"]["Properties"]
    assert props["Handler"] == "app.sweep_handler" and props["Layers"] == [{"Ref": "BaseLayer"}]
    [event] = props["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"].startswith("rate(")
    statements = {s["Sid"]: s for s in props["Policies"][0]["Statement"]}
    actions = sorted(a for s in statements.values() for a in s["Action"])
    assert actions == sorted(["dynamodb:GetItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query",
                              "s3:GetObject", "s3:ListBucket", "sqs:SendMessage"])
    assert statements["OutboxQuery"]["Resource"] == {"Fn::Sub": "${JobsTable.Arn}/index/outbox"}
    assert statements["ResendJobs"]["Resource"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    [index] = resources["JobsTable"]["Properties"]["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "outbox"
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["outbox", "outbox_at"]


def test_a_job_waiting_too_long_raises_an_alarm_as_a_dead_letter_does(tpl):
    """The dead-letter alarm says a job gave up; this one says jobs wait (no concurrency left, a worker crashing
    and its message hidden for the visibility timeout), on both queues a job passes through."""
    alarm = tpl["Resources"]["JobsBacklogAlarm"]["Properties"]
    queues = {m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
              for m in alarm["Metrics"] if "MetricStat" in m}
    assert queues == {"JobsQueue", "TranscodeQueue"}
    assert all(m["MetricStat"]["Metric"]["MetricName"] == "ApproximateAgeOfOldestMessage"
               for m in alarm["Metrics"] if "MetricStat" in m)
    assert alarm["Threshold"] == {"Ref": "BacklogAlarmSeconds"} and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    default = tpl["Parameters"]["BacklogAlarmSeconds"]["Default"]
    # above the processing time of the longest accepted recording, below the visibility timeout a crash costs
    assert 900 <= int(default) < int(tpl["Resources"]["JobsQueue"]["Properties"]["VisibilityTimeout"])
    assert alarm["AlarmActions"] == tpl["Resources"]["DeadLetterAlarm"]["Properties"]["AlarmActions"]


def test_every_queue_a_function_reads_hides_a_message_longer_than_the_function_may_run(tpl):
    """Lambda refuses to create an SQS event source whose queue's visibility timeout is shorter than the
    function's timeout (the stack would not deploy), and a shorter one would show a message to a second reader
    while the first still works on it. AWS's guidance is six times the function's timeout. The dead-letter queue
    had SQS's default of 30 s against DeadLetterFunction's 120 s (found by the fourteenth session's fuzzing)."""
    resources = tpl["Resources"]
    default_timeout = tpl["Globals"]["Function"].get("Timeout", 3)
    checked = []
    for name, fn in _resources(tpl, "AWS::Serverless::Function").items():
        timeout = fn["Properties"].get("Timeout", default_timeout)
        for event in fn["Properties"].get("Events", {}).values():
            if event["Type"] != "SQS":
                continue
            queue = event["Properties"]["Queue"]["Fn::GetAtt"][0]
            visibility = resources[queue]["Properties"].get("VisibilityTimeout", 30)  # SQS's default
            assert visibility >= 6 * timeout, (name, queue, visibility, timeout)
            checked.append(queue)
    assert sorted(checked) == ["JobsDeadLetterQueue", "JobsQueue", "TranscodeQueue"]


def test_functions_that_deliver_webhooks_outlast_one_delivery_at_the_longest_webhook_timeout(tpl):
    """DeadLetterFunction and SweeperFunction stop starting a record when less than one delivery's time is left
    (`webhooks.delivery_margin`). With a timeout shorter than that, at WebhookTimeoutSeconds' top
    value no record would ever start: the dead letters would go round for 14 days."""
    from diarizer_service.webhooks import delivery_margin

    margin = delivery_margin(tpl["Parameters"]["WebhookTimeoutSeconds"]["MaxValue"])
    for name in ("DeadLetterFunction", "SweeperFunction"):
        timeout = tpl["Resources"][name]["Properties"]["Timeout"]
        assert timeout >= margin + 30, (name, timeout, margin)
