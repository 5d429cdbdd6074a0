"""`diarize --html`: one self-contained page (no external script or style), the audio by relative path or
embedded up to the stated size, and a result that cannot break out of its <script> element."""
from __future__ import annotations

import base64
import json
import re

import pytest

from diarizer import report

DIARIZED = {"num_speakers": 2, "segments": [{"speaker_id": "speaker1", "start": 0.5, "end": 2.0},
                                            {"speaker_id": "speaker2", "start": 2.2, "end": 3.9}]}


def embedded_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="diarization">(.*?)</script>', page, re.S)
    assert "<" not in found.group(1)  # no tag can start inside the data
    return json.loads(found.group(1))


def test_the_page_is_self_contained_and_refers_to_the_audio_relatively(tmp_path):
    audio = tmp_path / "audio" / "team call.flac"
    audio.parent.mkdir()
    audio.write_bytes(b"fLaC" + bytes(100))
    out = tmp_path / "pages" / "call.html"
    out.parent.mkdir()
    report.write_html(out, DIARIZED, audio, duration=4.0, audio_format="FLAC")
    page = out.read_text()
    assert "<script src" not in page and "<link" not in page and "DiarizerTimeline" in page
    data = embedded_data(page)
    assert data["diarized"] == DIARIZED and data["audioSrc"] == "../audio/team%20call.flac"
    assert data["fileId"] == "team call" and data["duration"] == 4.0


def test_embedded_audio_is_a_data_url_up_to_the_limit(tmp_path, monkeypatch):
    audio = tmp_path / "clip.m4a"
    audio.write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(64))
    out = tmp_path / "clip.html"
    report.write_html(out, DIARIZED, audio, duration=4.0, audio_format="MP4/M4A", embed_audio=True)
    src = embedded_data(out.read_text())["audioSrc"]
    assert src.startswith("data:audio/mp4;base64,") and base64.b64decode(src.split(",", 1)[1]) == audio.read_bytes()
    monkeypatch.setattr(report, "EMBED_MAX_BYTES", 10)
    with pytest.raises(report.ReportError, match="--embed-audio takes files up to"):
        report.write_html(out, DIARIZED, audio, duration=4.0, audio_format="MP4/M4A", embed_audio=True)


def test_names_cannot_close_the_script_element():
    name = "</script><script>alert(1)</script>"
    page = report.render_html(DIARIZED, title=name + ".wav", audio_src="x.wav", duration=1.0, file_id=name)
    assert "<script>alert(1)" not in page
    assert embedded_data(page)["fileId"] == name


def test_enrolled_names_are_listed_escaped_and_kept_in_the_data():
    named = {**DIARIZED, "speakers": [{"speaker_id": "speaker1", "name": "<b>Ann</b>", "match": 0.9},
                                      {"speaker_id": "speaker2", "name": None, "match": None}]}
    page = report.render_html(named, title="call.wav", audio_src="x.wav", duration=1.0, file_id="call")
    assert "(known: &lt;b&gt;Ann&lt;/b&gt;)" in page and "<b>Ann" not in page
    assert embedded_data(page)["diarized"] == named  # the timeline gets the names and matches as the API gave them
