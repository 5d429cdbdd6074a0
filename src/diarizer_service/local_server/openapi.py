"""The OpenAPI document of the HTTP API (src/diarizer_service/openapi.json), as `GET /openapi.json` serves it."""
from __future__ import annotations

import json
from importlib import resources


def load_openapi(base_url: str | None = None) -> dict:
    """The document; with `base_url`, that server is listed first (so "try it" tools call this server)."""
    document = json.loads(resources.files("diarizer_service").joinpath("openapi.json").read_text(encoding="utf-8"))
    if base_url:
        document["servers"] = [{"url": base_url, "description": "this local server (diarize serve)"},
                               *document.get("servers", [])]
    return document
