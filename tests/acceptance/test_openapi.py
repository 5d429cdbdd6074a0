"""The OpenAPI document matches what is really deployed and served: routes, error codes, webhook callback."""
from __future__ import annotations

import json
import re

import pytest
from serve_helpers import REPO_ROOT

from diarizer_service.local_server.handlers import load_handler_module
from diarizer_service.local_server.openapi import load_openapi

OPENAPI_FILE = REPO_ROOT / "src" / "diarizer_service" / "openapi.json"
HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}
# Error codes produced by the local HTTP front itself (gateway.py), not by the API handler.
GATEWAY_CODES = {"length_required", "invalid_content_length", "body_too_large", "request_timeout",
                 "too_many_connections", "engine_busy", "invalid_signature", "method_not_allowed", "upload_too_large",
                 "bad_request", "http_version_not_supported", "uri_too_long", "headers_too_large"}


@pytest.fixture(scope="module")
def document() -> dict:
    return load_openapi()


def document_routes(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item
            if method in HTTP_METHODS}


def resolver_routes() -> set[tuple[str, str]]:
    """The routes registered on functions/api/app.py's powertools resolver (`<name>` written as `{name}`)."""
    app = load_handler_module("api").app
    routes = set()
    for route in [*app._static_routes, *app._dynamic_routes]:  # no public listing in powertools 3
        routes.add((route.method.upper(), re.sub(r"<(\w+)>", r"{\1}", route.path)))
    return routes


def template_routes() -> set[tuple[str, str]] | None:
    """The `Type: Api` events in template.yaml, or None without a template."""
    template_file = REPO_ROOT / "template.yaml"
    if not template_file.exists():
        return None
    yaml = pytest.importorskip("yaml")

    class CfnLoader(yaml.SafeLoader):
        pass

    CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !Ref, !GetAtt...: not needed here
    template = yaml.load(template_file.read_text(), Loader=CfnLoader)
    routes = set()
    for resource in template["Resources"].values():
        for event in ((resource.get("Properties") or {}).get("Events") or {}).values():
            if event.get("Type") == "Api":
                routes.add((event["Properties"]["Method"].upper(), event["Properties"]["Path"]))
    return routes


def test_the_document_is_valid_openapi_3(document):
    validator = pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator is not installed")
    validator.validate(json.loads(OPENAPI_FILE.read_text()))
    assert document["openapi"].startswith("3.")


def test_paths_and_methods_match_the_api_handler(document):
    assert document_routes(document) == resolver_routes()


def test_paths_and_methods_match_the_sam_template(document):
    routes = template_routes()
    if routes is None:
        pytest.skip("no template.yaml")
    assert document_routes(document) == routes


def service_error_codes() -> set[str]:
    """Every error code the service source can answer: ApiError(status, "code", ...) and the helpers."""
    source = "\n".join(path.read_text() for path in [*(REPO_ROOT / "src" / "diarizer_service").glob("*.py"),
                                                       REPO_ROOT / "functions" / "api" / "app.py"])
    codes = set(re.findall(r"ApiError\(\s*\d{3},\s*\"(\w+)\"", source))
    codes |= set(re.findall(r"\"code\":\s*\"(\w+)\"", source))
    helpers = {"invalid_field(": "invalid_field", "missing_field(": "missing_field",
               "service_unavailable(": "service_unavailable"}
    codes |= {code for call, code in helpers.items() if call in source}
    return codes


def test_every_error_code_is_documented(document):
    codes = service_error_codes() | GATEWAY_CODES
    assert {"invalid_api_key", "missing_api_key", "job_not_found", "audio_too_long_for_sync"} <= codes  # sanity
    documented = json.dumps(document["components"]["responses"])
    assert sorted(code for code in codes if f"`{code}`" not in documented) == []


def test_every_operation_documents_auth_errors_and_a_success(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            needed = {"200"} if operation.get("security") == [] else {"200", "401", "403", "503"}  # the page: no key
            assert needed <= set(operation["responses"]), (method, path)


def test_async_routes_document_the_signed_webhook(document):
    for path in ("/audio/generic/api/v2/async/diarize", "/audio/generic/api/v1/async/diarize"):
        operation = document["paths"][path]["post"]
        names = {p.get("name") or p["$ref"].rsplit("/", 1)[1] for p in operation["parameters"]}
        assert {"webhook", "request_id"} <= names
        callback = operation["callbacks"]["diarizationResult"]["{$request.query.webhook}"]["post"]
        assert {p["name"] for p in callback["parameters"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}
        assert callback["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/WebhookPayload")


def test_the_body_schema_has_every_field_the_sdk_sends(document):
    deepaffects = pytest.importorskip("deepaffects")

    sent = set(deepaffects.DiarizeAudio(encoding="FLAC", sample_rate=16000, content="AA==").attribute_map.values())
    properties = document["components"]["schemas"]["DiarizeAudio"]["properties"]
    assert sent <= set(properties)
    assert {"upload_id", "min_speakers", "max_speakers"} <= set(properties)


def test_auth_schemes_cover_query_and_header_keys(document):
    schemes = document["components"]["securitySchemes"]
    assert {(s["in"], s["name"]) for s in schemes.values()} == {("query", "apikey"), ("query", "api_key"),
                                                                 ("header", "x-api-key")}


def test_the_server_serves_it_with_its_own_url_first(shared_server):
    status, served = shared_server.request("GET", "/openapi.json", with_key=False)
    assert status == 200
    assert served["servers"][0]["url"] == shared_server.url
    assert served["paths"] == json.loads(OPENAPI_FILE.read_text())["paths"]
