"""template.yaml keeps its security and reliability promises (parsed, not deployed).

Least-privilege IAM, encrypted TLS-only private bucket with expiry, encrypted queues with a DLQ and a
visibility timeout above the worker's, encrypted DynamoDB with TTL, API throttling, no secrets, and the
environment variables the service code actually reads.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (a cfn-lint dependency) is needed to parse template.yaml")

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that understands CloudFormation short tags: !Ref X -> {"Ref": X}, !Sub s -> {"Fn::Sub": s}."""


def _tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node):
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def tpl() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def _resources(tpl: dict, rtype: str) -> dict:
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == rtype}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _function_statements(fn: dict) -> list[dict]:
    out = []
    for policy in fn["Properties"].get("Policies", []):
        if isinstance(policy, dict) and "Statement" in policy:
            out += policy["Statement"]
    return out


def _all_allow_statements(tpl: dict) -> list[tuple[str, dict]]:
    found = []
    for name, res in tpl["Resources"].items():
        if res["Type"] == "AWS::Serverless::Function":
            found += [(name, s) for s in _function_statements(res)]
        elif res["Type"] in ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            props = res["Properties"]
            docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
            if "PolicyDocument" in props:
                docs.append(props["PolicyDocument"])
            for doc in docs:
                found += [(name, s) for s in doc["Statement"]]
    return [(n, s) for n, s in found if s.get("Effect") == "Allow"]


def _sub_text(value) -> str:
    """The string of a !Sub (either form) or a plain string."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub[0] if isinstance(sub, list) else sub
    return value if isinstance(value, str) else repr(value)


# ------------------------------------------------------------------------------------------- IAM
WILDCARD_RESOURCE_OK = ("xray:", "cloudwatch:PutMetricData")


def test_no_wildcard_actions(tpl):
    statements = _all_allow_statements(tpl)
    assert statements, "expected inline IAM statements on the functions"
    for name, st in statements:
        for action in _as_list(st["Action"]):
            assert action != "*", (name, st)
            assert not action.endswith(":*"), f"{name}: service-wide wildcard {action}"
            assert "*" not in action.split(":", 1)[1], f"{name}: wildcard action {action}"


def test_no_wildcard_resources_except_xray_and_metrics(tpl):
    for name, st in _all_allow_statements(tpl):
        resources = _as_list(st.get("Resource", []))
        if "*" in resources:
            assert all(a.startswith(WILDCARD_RESOURCE_OK) for a in _as_list(st["Action"])), (name, st)
        for r in resources:
            text = _sub_text(r)
            assert text != "arn:aws:s3:::*" and not text.endswith(":*"), (name, r)


def test_functions_use_no_broad_managed_policies(tpl):
    """Only inline statements; SAM adds the X-Ray and SQS-poller policies itself (Tracing, SQS event)."""
    for name, fn in _resources(tpl, "AWS::Serverless::Function").items():
        for policy in fn["Properties"].get("Policies", []):
            assert isinstance(policy, dict) and "Statement" in policy, f"{name}: managed/template policy {policy!r}"


def _s3_actions(statements: list[dict]) -> dict[str, set[str]]:
    """{action: {object prefixes}} for object ARNs written as !Sub "${Bucket.Arn}/<prefix>*"."""
    out: dict[str, set[str]] = {}
    for st in statements:
        for action in _as_list(st["Action"]):
            if not action.startswith("s3:"):
                continue
            for r in _as_list(st["Resource"]):
                text = _sub_text(r)
                m = re.fullmatch(r"\$\{Bucket\.Arn\}/(.*)", text)
                out.setdefault(action, set()).add(m.group(1) if m else text)
    return out


def test_api_function_least_privilege(tpl):
    fn = tpl["Resources"]["ApiFunction"]
    st = _function_statements(fn)
    s3 = _s3_actions(st)
    for action in ("s3:GetObject", "s3:PutObject"):
        assert s3[action] == {"jobs/*", "uploads/*"}, (action, s3[action])
    assert s3["s3:DeleteObject"] == {"jobs/*"}, "it deletes only the audio its own submit wrote; uploads expire"
    actions = {a for s in st for a in _as_list(s["Action"])}
    assert actions <= {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                       "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "sqs:SendMessage"}
    keys = [s for s in st if s["Resource"] == {"Fn::GetAtt": ["KeysTable", "Arn"]}]
    assert keys and all(_as_list(s["Action"]) == ["dynamodb:GetItem"] for s in keys), "keys table: read only"
    assert _table_actions(st, "VoiceprintsTable") == {"dynamodb:GetItem"}, "voiceprints: only checks ids exist"


def _table_actions(statements: list, table: str) -> set:
    return {a for s in statements if s["Resource"] == {"Fn::GetAtt": [table, "Arn"]} for a in _as_list(s["Action"])}


def test_sync_function_reads_keys_and_manages_voiceprints_only(tpl):
    st = _function_statements(tpl["Resources"]["SyncApiFunction"])
    assert {str(s["Resource"]) for s in st} == {str({"Fn::GetAtt": [t, "Arn"]}) for t in ("KeysTable", "VoiceprintsTable")}
    assert _table_actions(st, "KeysTable") == {"dynamodb:GetItem"}
    # Enrol, list, delete, and read for identification: no Scan (one key's prints are one Query), no Update.
    assert _table_actions(st, "VoiceprintsTable") == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem",
                                                      "dynamodb:Query"}


def test_worker_least_privilege(tpl):
    st = _function_statements(tpl["Resources"]["WorkerFunction"])
    s3 = _s3_actions(st)
    assert s3["s3:GetObject"] <= {"jobs/*", "uploads/*", "incoming/*", "results/*"}
    assert {"jobs/*", "uploads/*", "incoming/*"} <= s3["s3:GetObject"]
    assert s3["s3:PutObject"] == {"jobs/*", "results/*"}
    # stale batch records, and a losing duplicate run's own result objects -- never audio or another's result
    assert s3.get("s3:DeleteObject", set()) <= {"results/*", "jobs/*/result-*"}
    assert _table_actions(st, "JobsTable") == {"dynamodb:GetItem", "dynamodb:UpdateItem"}, "only the API creates jobs"
    sqs = [s for s in st if any(a.startswith("sqs:") for a in _as_list(s["Action"]))]
    # SQS consume permissions come from the event source; the only SQS call: forward container audio.
    assert [(_as_list(s["Action"]), s["Resource"]) for s in sqs] == [
        (["sqs:SendMessage"], {"Fn::GetAtt": ["TranscodeQueue", "Arn"]})]
    assert _table_actions(st, "VoiceprintsTable") == {"dynamodb:GetItem", "dynamodb:Query"}, "voiceprints: read only"


def test_transcoder_least_privilege(tpl):
    function = tpl["Resources"]["TranscodeFunction"]
    assert function["Properties"]["Layers"] == [{"Ref": "BaseLayer"}, {"Ref": "TranscodeLayer"}]  # no engine
    st = _function_statements(function)
    s3 = _s3_actions(st)
    assert s3["s3:GetObject"] == {"jobs/*", "uploads/*", "incoming/*"} and s3["s3:PutObject"] == {"jobs/*"}
    assert s3["s3:DeleteObject"] == {"jobs/*"}  # only its own FLAC of a batch version replaced meanwhile
    actions = {a for s in st for a in _as_list(s["Action"])}
    assert actions == {"dynamodb:GetItem", "dynamodb:UpdateItem", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                       "s3:ListBucket", "sqs:SendMessage"}
    [send] = [s for s in st if "sqs:SendMessage" in _as_list(s["Action"])]
    assert send["Resource"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    keys = [s for s in st if s["Resource"] == {"Fn::GetAtt": ["KeysTable", "Arn"]}]
    assert keys and all(_as_list(s["Action"]) == ["dynamodb:GetItem"] for s in keys)


# -------------------------------------------------------------------------------------------- S3
def test_bucket_encrypted_private_and_expiring(tpl):
    (bucket,) = _resources(tpl, "AWS::S3::Bucket").values()
    props = bucket["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("aws:kms", "AES256")
    assert rule["BucketKeyEnabled"] is True
    pab = props["PublicAccessBlockConfiguration"]
    assert all(pab[k] is True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls",
                                         "RestrictPublicBuckets"))
    expiring = {r["Prefix"]: r for r in props["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in r}
    for prefix in ("jobs/", "uploads/", "incoming/"):
        assert expiring[prefix]["Status"] == "Enabled"
        assert expiring[prefix]["ExpirationInDays"] == {"Ref": "RetentionDays"}


def test_bucket_policy_denies_plain_http(tpl):
    (policy,) = _resources(tpl, "AWS::S3::BucketPolicy").values()
    deny = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(s["Condition"]["Bool"]["aws:SecureTransport"] in ("false", False)
               and s["Principal"] == "*"
               and len(_as_list(s["Resource"])) == 2 for s in deny), deny


def test_incoming_objects_notify_the_jobs_queue_from_this_bucket_only(tpl):
    bucket = tpl["Resources"]["Bucket"]
    (conf,) = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert conf["Queue"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    assert conf["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": "incoming/"}]
    (qp,) = _resources(tpl, "AWS::SQS::QueuePolicy").values()
    (st,) = [s for s in qp["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert st["Principal"] == {"Service": "s3.amazonaws.com"} and st["Action"] == "sqs:SendMessage"
    assert "aws:SourceArn" in st["Condition"]["ArnEquals"]
    assert st["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    # The fixed bucket name and the policy's SourceArn are built the same way.
    name = bucket["Properties"]["BucketName"]["Fn::Sub"]
    arn = st["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    assert arn[0] == "arn:${AWS::Partition}:s3:::" + name[0] and arn[1] == name[1]


# ------------------------------------------------------------------------------------------- SQS
def test_queues_encrypted(tpl):
    for name, q in _resources(tpl, "AWS::SQS::Queue").items():
        props = q["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, name


def test_jobs_queue_redrive_and_visibility(tpl):
    props = tpl["Resources"]["JobsQueue"]["Properties"]
    assert props["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    assert props["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]}
    assert tpl["Parameters"]["MaxReceiveCount"]["Default"] == 3
    worker_timeout = tpl["Resources"]["WorkerFunction"]["Properties"]["Timeout"]
    assert props["VisibilityTimeout"] > worker_timeout
    assert props["VisibilityTimeout"] >= 6 * worker_timeout  # AWS guidance for Lambda event sources


def test_worker_event_source(tpl):
    ev = tpl["Resources"]["WorkerFunction"]["Properties"]["Events"]["Jobs"]
    assert ev["Type"] == "SQS"
    assert ev["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= ev["Properties"]["BatchSize"] <= 2


def test_dead_letter_alarm(tpl):
    alarms = [a["Properties"] for a in _resources(tpl, "AWS::CloudWatch::Alarm").values()]
    assert any(a["MetricName"] == "ApproximateNumberOfMessagesVisible" and a["Threshold"] == 0
               and a["ComparisonOperator"] == "GreaterThanThreshold"
               and a["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["JobsDeadLetterQueue", "QueueName"]}
               for a in alarms)


# -------------------------------------------------------------------------------------- DynamoDB
def test_tables_encrypted_with_recovery(tpl):
    tables = _resources(tpl, "AWS::DynamoDB::Table")
    assert set(tables) == {"JobsTable", "KeysTable", "VoiceprintsTable"}
    for name, t in tables.items():
        if name == "VoiceprintsTable":  # no recovery on purpose: see the next test
            continue
        props = t["Properties"]
        assert props["SSESpecification"]["SSEEnabled"] is True, name
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name
        assert props["BillingMode"] == "PAY_PER_REQUEST", name
    jobs = tables["JobsTable"]["Properties"]
    assert jobs["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    assert jobs["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert tables["KeysTable"]["Properties"]["KeySchema"] == [{"AttributeName": "key_hash", "KeyType": "HASH"}]


def test_voiceprints_table_is_kms_encrypted_and_keeps_no_restorable_copies(tpl):
    """Biometric data: KMS at rest; no point-in-time recovery, so a deleted voiceprint is gone (docs/security.md)."""
    props = _resources(tpl, "AWS::DynamoDB::Table")["VoiceprintsTable"]["Properties"]
    assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS"}
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is False
    assert props["KeySchema"] == [{"AttributeName": "key_id", "KeyType": "HASH"},
                                  {"AttributeName": "voiceprint_id", "KeyType": "RANGE"}]
    assert "TimeToLiveSpecification" not in props and props["BillingMode"] == "PAY_PER_REQUEST"


# ------------------------------------------------------------------------------------------- API
def test_api_throttled_and_its_stage_not_traced(tpl):
    """X-Ray segments of an API Gateway stage hold the full request URL: with DeepAffects' `?apikey=` that is the
    key in clear in every sampled trace. The functions behind it are traced (Globals), without the query."""
    (api,) = _resources(tpl, "AWS::Serverless::Api").values()
    props = api["Properties"]
    assert props.get("TracingEnabled") in (None, False)
    (ms,) = props["MethodSettings"]
    assert ms["ResourcePath"] == "/*" and ms["HttpMethod"] == "*"
    assert "ThrottlingRateLimit" in ms and "ThrottlingBurstLimit" in ms


def test_routes(tpl):
    routes = {}
    for name, fn in _resources(tpl, "AWS::Serverless::Function").items():
        for ev in fn["Properties"].get("Events", {}).values():
            if ev["Type"] == "Api":
                routes[(ev["Properties"]["Method"].upper(), ev["Properties"]["Path"])] = name
    assert routes == {
        ("POST", "/audio/generic/api/v2/async/diarize"): "ApiFunction",
        ("POST", "/audio/generic/api/v1/async/diarize"): "ApiFunction",
        ("GET", "/audio/generic/api/v2/async/diarize/{request_id}"): "ApiFunction",
        ("POST", "/audio/generic/api/v2/uploads"): "ApiFunction",
        ("GET", "/"): "ApiFunction",  # the timeline page and its files
        ("GET", "/ui/{name}"): "ApiFunction",
        ("POST", "/audio/generic/api/v2/sync/diarize"): "SyncApiFunction",
        ("POST", "/audio/generic/api/v1/sync/diarize"): "SyncApiFunction",
        ("POST", "/audio/generic/api/v2/voiceprints"): "SyncApiFunction",  # enrolment runs the engine
        ("GET", "/audio/generic/api/v2/voiceprints"): "SyncApiFunction",
        ("DELETE", "/audio/generic/api/v2/voiceprints/{voiceprint_id}"): "SyncApiFunction",
    }


# ------------------------------------------------------------------------------ functions, env
def test_functions_layers_and_tracing(tpl):
    fns = tpl["Resources"]
    assert tpl["Globals"]["Function"]["Tracing"] == "Active"
    assert fns["ApiFunction"]["Properties"]["Layers"] == [{"Ref": "BaseLayer"}], "the API function stays light"
    for name in ("SyncApiFunction", "WorkerFunction"):
        assert {"Ref": "ModelsLayer"} in fns[name]["Properties"]["Layers"]
        assert {"Ref": "RuntimeLayer"} in fns[name]["Properties"]["Layers"]
    assert fns["SyncApiFunction"]["Properties"]["Timeout"] <= 29
    assert fns["WorkerFunction"]["Properties"]["MemorySize"] == {"Ref": "WorkerMemorySize"}


def test_worker_tmp_holds_the_longest_decoded_audio(tpl):
    """The engine spills decoded 16 kHz float32 audio to /tmp (src/diarizer/audio.py)."""
    longest = tpl["Parameters"]["MaxAudioSeconds"]["Default"]
    size_mb = tpl["Resources"]["WorkerFunction"]["Properties"]["EphemeralStorage"]["Size"]
    assert size_mb * 1024 * 1024 >= longest * 16000 * 4 * 1.5


def test_environment_matches_what_the_code_reads(tpl):
    env = tpl["Globals"]["Function"]["Environment"]["Variables"]
    assert env["DIARIZER_BACKEND"] == "aws"
    assert env["DIARIZER_MODEL_DIR"] == "/opt/models"
    assert env["DIARIZER_ALLOW_LOCAL_WEBHOOKS"] == "false"
    code = (REPO / "src" / "diarizer_service" / "settings.py").read_text()
    read = set(re.findall(r"""["'](DIARIZER_[A-Z_]+)["']""", code)) - {"DIARIZER_DATA_DIR", "DIARIZER_PUBLIC_URL"}  # local mode only
    assert read, "expected the settings module to read DIARIZER_* variables"
    assert read <= set(env), f"missing in template Globals: {sorted(read - set(env))}"
    for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "LOG_LEVEL"):
        assert name in env


# ------------------------------------------------------------------------------------- secrets
def test_no_secrets_in_template(tpl):
    text = TEMPLATE.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "AWS access key id"
    assert not re.search(r"(?i)aws_secret_access_key|-----BEGIN [A-Z ]*PRIVATE KEY", text)
    assert not re.search(r"\b\d{12}\b", text), "hard-coded account id (use ${AWS::AccountId})"
    for name, p in tpl.get("Parameters", {}).items():
        if re.search(r"(?i)secret|password|token|apikey", name):
            assert p.get("NoEcho") is True, name
    env = dict(tpl["Globals"]["Function"]["Environment"]["Variables"])
    for fn in _resources(tpl, "AWS::Serverless::Function").values():
        env.update(fn["Properties"].get("Environment", {}).get("Variables", {}))
    for name, value in env.items():
        assert not re.search(r"(?i)secret|password|token|api_?key", name), f"secret-like variable {name}"


def test_api_gateway_own_answers_use_the_api_error_shape(tpl):
    """An unknown route and a body over API Gateway's limit never reach the function: their answers are the API
    Gateway's, so they are given the API's JSON error body (openapi.json) and the handler's own message."""
    import json

    from diarizer_service.settings import BODY_TOO_LARGE_MESSAGE

    answers = {res["Properties"]["ResponseType"]: res["Properties"]
               for res in _resources(tpl, "AWS::ApiGateway::GatewayResponse").values()}
    expected = {"MISSING_AUTHENTICATION_TOKEN": ("404", "route_not_found"), "REQUEST_TOO_LARGE": ("413", "body_too_large")}
    assert set(answers) == set(expected)
    for kind, (status, code) in expected.items():
        answer = answers[kind]
        assert answer["RestApiId"] == {"Ref": "DiarizerApi"} and answer["StatusCode"] == status
        assert answer["ResponseParameters"]["gatewayresponse.header.Content-Type"] == "'application/json'"
        body = json.loads(answer["ResponseTemplates"]["application/json"])
        assert body["error"]["code"] == code
    assert json.loads(answers["REQUEST_TOO_LARGE"]["ResponseTemplates"]["application/json"])["error"]["message"] \
        == BODY_TOO_LARGE_MESSAGE


def test_dead_letter_function_deletes_only_under_results(tpl):
    """It may remove a replaced version's result (which would still read as done next to the new version's error
    record), nothing else: audio, jobs and uploads stay out of its reach."""
    s3 = _s3_actions(_function_statements(tpl["Resources"]["DeadLetterFunction"]))
    assert s3["s3:DeleteObject"] == {"results/*"} and s3["s3:PutObject"] == {"results/*"}
