"""`diarize AUDIO --html OUT.html`: one self-contained page with the same timeline as the service's page.

The timeline's script and style sheet (package data, `web/`) are inlined, the result is embedded as JSON,
and the audio is referenced by its path relative to the page (move them together), or with `embed_audio`
inlined as a data: URL up to EMBED_MAX_BYTES (base64 makes it a third bigger; browsers slow down beyond).
"""
from __future__ import annotations

import base64
import html
import json
import os
from importlib import resources
from pathlib import Path
from urllib.parse import quote

EMBED_MAX_BYTES = 25 * 1024 * 1024
_MIME = {"WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg", "MP3": "audio/mpeg", "AIFF": "audio/aiff",
         "AU": "audio/basic", "MP4/M4A": "audio/mp4", "MOV": "video/quicktime", "AAC": "audio/aac",
         "WebM/Matroska": "audio/webm"}


class ReportError(ValueError):
    """The page cannot be written as asked (e.g. the audio is too big to embed)."""


def _web(name: str) -> str:
    return (resources.files("diarizer") / "web" / name).read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
    """Inline <script>/<style> content that cannot close its element early."""
    return text.replace("</", "<\\/")


def _json_data(data: dict) -> str:
    """JSON for a <script type="application/json"> element: no "<" at all, so no tag can start inside it."""
    return json.dumps(data).replace("<", "\\u003c")


def check_embeddable(audio: Path) -> None:
    """ReportError when `audio` is too big to put inside a page (the CLI asks before diarizing it)."""
    size = audio.stat().st_size
    if size > EMBED_MAX_BYTES:
        raise ReportError(f"{audio.name} is {size / 2**20:.1f} MB: --embed-audio takes files up to "
                          f"{EMBED_MAX_BYTES / 2**20:.0f} MB (leave it out to reference the file instead)")


def audio_reference(audio: Path, out: Path, *, embed: bool, audio_format: str) -> str:
    if embed:
        check_embeddable(audio)
        mime = _MIME.get(audio_format, "application/octet-stream")
        return f"data:{mime};base64," + base64.b64encode(audio.read_bytes()).decode()
    relative = os.path.relpath(audio.resolve(), out.resolve().parent)
    return quote(os.fsencode(Path(relative).as_posix()))  # a name that is not UTF-8 keeps its bytes


def render_html(diarized: dict, *, title: str, audio_src: str, duration: float, file_id: str) -> str:
    data = {"diarized": diarized, "audioSrc": audio_src, "duration": duration, "fileId": file_id}
    style = _web("timeline.css") + """
body { padding: 1rem 1.5rem; }
.report-meta { margin: 0 0 1rem; }
"""
    boot = ("(function(){var d=JSON.parse(document.getElementById('diarization').textContent);"
            "window.diarizerReport=DiarizerTimeline.render(document.getElementById('timeline'),d.diarized,"
            "{audioSrc:d.audioSrc,duration:d.duration,fileId:d.fileId});})();")
    speakers = diarized["num_speakers"]
    known = [s["name"] for s in diarized.get("speakers") or () if s["name"]]
    named = f" (known: {', '.join(known)})" if known else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}: who spoke when</title>
<style>{_script_safe(style)}</style>
</head>
<body>
<main class="panel">
<h1>{html.escape(title)}</h1>
<p class="muted report-meta">{speakers} speaker{'s' if speakers != 1 else ''}{html.escape(named)}, \
{len(diarized['segments'])} turns, \
{duration:.1f} s. Written by <code>diarize --html</code>.</p>
<div id="timeline"></div>
</main>
<script type="application/json" id="diarization">{_json_data(data)}</script>
<script>{_script_safe(_web("timeline.js"))}</script>
<script>{boot}</script>
</body>
</html>
"""


def write_html(out: Path, diarized: dict, audio: Path, *, duration: float, audio_format: str,
               embed_audio: bool = False) -> None:
    src = audio_reference(audio, out, embed=embed_audio, audio_format=audio_format)
    title = os.fsencode(audio.name).decode("utf-8", "replace")  # a name that is not UTF-8: shown with U+FFFD
    file_id = os.fsencode(audio.stem).decode("utf-8", "replace")
    out.write_text(render_html(diarized, title=title, audio_src=src, duration=duration, file_id=file_id),
                   encoding="utf-8")
