"""API Lambda (API Gateway REST proxy): routes -> diarizer_service.api, ApiError -> JSON error answers.

Deployed twice by the template: the async API (light: no engine import on its path) and the sync API
(with the engine layers; the engine is imported lazily on the first sync request).
"""
from __future__ import annotations

import json
import re
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths

from diarizer_service import api, page, voiceprints
from diarizer_service.auth import ApiKey, authenticate
from diarizer_service.errors import ApiError, BackendError, service_unavailable
from diarizer_service.observability import logger, metrics, tracer
from diarizer_service.runtime import Runtime, get_runtime

V2_ASYNC = api.ASYNC_ROUTE
V1_ASYNC = "/audio/generic/api/v1/async/diarize"
V1_SYNC = "/audio/generic/api/v1/sync/diarize"
V2_SYNC = "/audio/generic/api/v2/sync/diarize"
V2_STATUS = V2_ASYNC + "/<request_id>"

app = APIGatewayRestResolver()


def _json(status: int, body: object, headers: dict | None = None) -> Response:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body), headers=headers)


def _path_value(raw: str) -> str:
    """A path parameter as the client meant it. REST APIs pass `path` (what the routes match) on still
    percent-encoded, unlike HTTP APIs, and clients encode what they put in a path: JavaScript's
    encodeURIComponent, and urllib's quote with no safe characters, send a request_id `a:b` as `a%3Ab`."""
    return unquote(raw)


def _caller() -> tuple[Runtime, ApiKey]:
    runtime = get_runtime()
    event = app.current_event
    try:
        key = authenticate(runtime.backends.keys, event.query_string_parameters, event.headers)
    except BackendError as exc:
        raise service_unavailable() from exc
    logger.append_keys(key_id=key.key_id)
    return runtime, key


def _body_args() -> tuple:
    event = app.current_event
    return event.body, bool(event.is_base64_encoded), event.query_string_parameters


@app.post(V2_ASYNC)
@app.post(V1_ASYNC)
def submit_async() -> Response:
    runtime, key = _caller()
    return _json(200, api.submit_async(runtime, key, *_body_args()))


@app.post(V2_SYNC)
def diarize_sync_v2() -> Response:
    runtime, key = _caller()
    return _json(200, api.diarize_sync(runtime, key, *_body_args()))


@app.post(V1_SYNC)
def diarize_sync_v1() -> Response:
    runtime, key = _caller()
    return _json(200, api.v1_segments(api.diarize_sync(runtime, key, *_body_args())))


@app.get(V2_STATUS)
def job_status(request_id: str) -> Response:
    runtime, key = _caller()
    return _json(200, api.job_status(runtime, key, _path_value(request_id)))


@app.post(api.UPLOADS_ROUTE)
def create_upload() -> Response:
    runtime, key = _caller()
    return _json(200, api.create_upload(runtime, key))


# A path as browsers send it: segments of URL characters, never "//" (a Location of "//host/" leaves the site).
_VISIBLE_PATH = re.compile(r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)+")


@app.get("/")
def timeline_page() -> Response:
    """The timeline page: no key needed to load it, the user types one (sent with each API call).

    Its files are linked relative to it (ui/app.js), so it must be loaded from a URL ending in "/". The stage URL
    that `sam deploy` prints (https://ID.execute-api.REGION.amazonaws.com/Prod) and a custom domain's base path
    (https://api.example.com/diarizer) both reach this route without one, and the page would load unstyled and
    dead: those are redirected to the same URL with the "/". `requestContext.path` is the path as the browser
    sent it, stage or base path included (`path` has neither the stage nor, on the stage URL, the difference)."""
    context = app.current_event.raw_event.get("requestContext")
    visible = context.get("path") if isinstance(context, dict) else None
    if isinstance(visible, str) and _VISIBLE_PATH.fullmatch(visible):
        return Response(status_code=308, headers={"Location": visible + "/", "Cache-Control": "no-cache"},
                        content_type="text/plain", body="")
    return Response(status_code=200, content_type=page.ASSETS[page.PAGE], body=page.web_file(page.PAGE).decode(),
                    headers=page.HEADERS)


@app.get("/ui/<name>")
def page_asset(name: str) -> Response:
    name = _path_value(name)
    try:
        body = page.web_file(name).decode()
    except KeyError:
        return _json(404, {"error": {"code": "route_not_found", "message": "No such file."}})
    return Response(status_code=200, content_type=page.ASSETS[name], body=body, headers=page.HEADERS)


@app.post(voiceprints.ROUTE)
def enroll_voiceprint() -> Response:
    runtime, key = _caller()
    event = app.current_event
    return _json(200, voiceprints.enroll(runtime, key, event.body, bool(event.is_base64_encoded)))


@app.get(voiceprints.ROUTE)
def list_voiceprints() -> Response:
    runtime, key = _caller()
    return _json(200, voiceprints.list_voiceprints(runtime, key))


@app.delete(voiceprints.ROUTE + "/<voiceprint_id>")
def delete_voiceprint(voiceprint_id: str) -> Response:
    runtime, key = _caller()
    return _json(200, voiceprints.delete(runtime, key, _path_value(voiceprint_id)))


@app.exception_handler(ApiError)
def handle_api_error(error: ApiError) -> Response:
    if error.status >= 500:
        logger.warning("request failed", extra={"error_code": error.code})
    headers = {"Retry-After": "5"} if error.retryable else None
    return _json(error.status, error.to_body(), headers)


@app.exception_handler(BackendError)
def handle_backend_error(error: BackendError) -> Response:
    logger.warning("backend unavailable", extra={"reason": str(error)})
    return handle_api_error(service_unavailable())


@app.not_found
def handle_not_found(_: NotFoundError) -> Response:
    return _json(404, {"error": {"code": "route_not_found", "message": "No such route."}})


@app.exception_handler(Exception)
def handle_unexpected(_: Exception) -> Response:
    logger.exception("unexpected error")
    return _json(500, {"error": {"code": "internal_error", "message": "Internal error; retry later."}})


def _without_base_path(event: dict) -> dict:
    """The event with `path` as the API's own route. Behind a custom domain whose base path mapping is not the root
    (https://api.example.com/diarizer -> the stage), API Gateway puts the base path in `path` but not in
    `resource`, the route it matched: the routes here would all answer 404. No route has a parameter spanning
    segments, so the route is the path's last segments, as many as the resource has."""
    resource, path = event.get("resource"), event.get("path")
    if not isinstance(resource, str) or not isinstance(path, str) or "+}" in resource:
        return event
    depth = len(resource.strip("/").split("/")) if resource.strip("/") else 0
    segments = path.rstrip("/").split("/")[1:]
    if len(segments) <= depth:
        return event
    route = "/" + "/".join(segments[len(segments) - depth:]) + ("/" if path.endswith("/") and depth else "")
    return {**event, "path": route}


# log_event=False even if POWERTOOLS_LOGGER_LOG_EVENT is set: the event holds the API key and the audio.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: object) -> dict:
    return app.resolve(_without_base_path(event), context)
