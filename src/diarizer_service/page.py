"""The timeline page at `/` and its files at `/ui/<name>`, served by the API function (and so by `diarize serve`).

The files are the engine package's `web/` folder (package data, shared with `diarize AUDIO --html`). Only the
names listed here are served; nothing is fetched from anywhere else (the CSP says so to the browser too).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

PAGE = "index.html"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "timeline.js": "text/javascript; charset=utf-8",
    "timeline.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# Uploads go to S3 (https) on AWS and to the server itself (any local name) in local mode; the audio player
# reads the file the user chose (blob:). No inline script, no other origin for code or styles.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "media-src 'self' blob:; connect-src 'self' https: http://127.0.0.1:* "
                               "http://localhost:*; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=None)
def web_file(name: str) -> bytes:
    """The bytes of one of the page's files; KeyError for any other name."""
    if name not in ASSETS:
        raise KeyError(name)
    return (resources.files("diarizer") / "web" / name).read_bytes()
