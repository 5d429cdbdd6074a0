"""The timeline page in a real headless Chromium against a real `diarize serve`: upload the three-speaker demo
through the uploads route, wait for the timeline, play a turn, rename a speaker, download the JSON; known voices
(an enrolled demo voice named on its lane) and confidence per turn; and the `diarize --html` page opened from
disk. Needs Debian's chromium + chromium-driver (.ci/run installs them)."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import audio_factory as af
import pytest
from serve_helpers import REPO_ROOT, wait_for

THREE_SPEAKERS = REPO_ROOT / "demo" / "three-speakers.flac"
VOICEPRINTS = "/audio/generic/api/v2/voiceprints"

if not shutil.which("chromedriver") or not (shutil.which("chromium") or shutil.which("google-chrome")):
    if os.environ.get("CI") == "true":
        pytest.fail("chromium and chromium-driver are missing (.ci/run installs them)", pytrace=False)
    pytest.skip("needs chromium + chromium-driver (apt-get install chromium chromium-driver)", allow_module_level=True)

from browser import chromium  # noqa: E402  (after the skip: selenium needs the browser)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@pytest.fixture
def browser(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium(downloads)
    driver.downloads = downloads
    yield driver
    driver.quit()


def turns_on_page(driver) -> list[dict]:
    return [{"speaker_id": b.get_attribute("data-speaker"), "start": float(b.get_attribute("data-start")),
             "end": float(b.get_attribute("data-end"))} for b in driver.find_elements(By.CSS_SELECTOR, ".tl-turn")]


def record_requests(driver) -> None:
    """Keep the body of every fetch() the page sends (the page's own requests, observed, not replaced)."""
    driver.execute_script("window.sentBodies = []; const send = window.fetch;"
                          "window.fetch = (url, init) => { if (init && init.body) window.sentBodies.push("
                          "[String(url), init.body]); return send(url, init); };")


def diarize_request(driver) -> dict:
    [body] = [body for url, body in driver.execute_script("return window.sentBodies") if "async/diarize" in url]
    return json.loads(body)


def downloads_done(folder: Path, expected: set[str]) -> bool:
    """Every expected file is there, written: Chromium reserves a download's final name with an empty file
    at the start and renames its .crdownload over it at the end, so the name alone is not enough."""
    names = {p.name for p in folder.iterdir()}
    return (expected <= names and not any(n.endswith(".crdownload") for n in names)
            and all((folder / n).stat().st_size > 0 for n in expected))


def confidence_words(value: float) -> str:
    """What the page says about a turn's confidence (bands: BENCHMARKS.md, >= 0.9 is 98 % right)."""
    rounded = round(value * 100)
    return f"confidence {rounded}% ({'sure' if rounded >= 90 else 'fairly sure' if rounded >= 60 else 'unsure'})"


def audio_state(driver) -> dict:
    return driver.execute_script("const a = document.querySelector('.tl-audio');"
                                 "return {t: a.currentTime, paused: a.paused, ready: a.readyState};")


def test_upload_timeline_play_rename_download(start_server, browser):
    server = start_server()
    browser.get(server.url + "/")
    assert browser.title.startswith("Diarizer")
    browser.find_element(By.ID, "api-key").send_keys(server.api_key)
    browser.find_element(By.ID, "file").send_keys(str(THREE_SPEAKERS))  # what choosing the file does
    browser.find_element(By.ID, "max-speakers").send_keys("5")
    # No voiceprints with this key: "Name known voices" is greyed out and says why.
    wait_for(lambda: "No voices are enrolled" in browser.find_element(By.ID, "identify-hint").text, 20,
             "the voiceprint check")
    assert not browser.find_element(By.ID, "identify").is_enabled()
    record_requests(browser)
    browser.find_element(By.ID, "submit").click()

    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".tl-lane") or browser.find_element(By.ID, "form-error").text,
             120, "the timeline")
    assert browser.find_element(By.ID, "form-error").text == ""
    # Without the new options the request is the plain one: no identify/confidence fields at all.
    assert list(diarize_request(browser)) == ["upload_id", "max_speakers", "exclusive"]
    assert not browser.find_elements(By.CSS_SELECTOR, ".tl-legend-item, .tl-known, .tl-turn[data-confidence]")
    lanes = browser.find_elements(By.CSS_SELECTOR, ".tl-lane")
    assert [lane.get_attribute("data-speaker") for lane in lanes] == ["speaker1", "speaker2", "speaker3"]

    # The turns drawn are the API's answer for this job (found from the page's recent-jobs list).
    request_id = browser.execute_script("return JSON.parse(localStorage.getItem('diarizer.recentJobs'))[0].request_id")
    answer = server.job(request_id)["response"]
    assert answer["num_speakers"] == 3
    expected = sorted(answer["segments"], key=lambda s: s["start"])
    assert sorted(turns_on_page(browser), key=lambda s: s["start"]) == expected
    for lane in lanes:  # every turn sits in its speaker's lane
        assert {b.get_attribute("data-speaker") for b in lane.find_elements(By.CSS_SELECTOR, ".tl-turn")} == {
            lane.get_attribute("data-speaker")}

    # Click a long turn: the audio plays from inside it (and stops at its end).
    longest = max(answer["segments"], key=lambda s: s["end"] - s["start"])
    turn = browser.find_element(By.CSS_SELECTOR, f'.tl-turn[data-start="{longest["start"]}"]')
    turn.click()
    state = wait_for(lambda: (lambda s: s if not s["paused"] and s["t"] > longest["start"] + 0.2 else None)(
        audio_state(browser)), 20, "the audio to play the turn")
    assert longest["start"] <= state["t"] <= longest["end"]
    assert "tl-playing" in turn.get_attribute("class")
    cursor_x = browser.execute_script("return parseFloat(document.querySelector('.tl-cursor').style.left)")
    assert float(turn.get_attribute("style").split("left:")[1].split("px")[0]) <= cursor_x  # the cursor moved
    wait_for(lambda: audio_state(browser)["paused"], longest["end"] - longest["start"] + 10, "the turn to end")
    assert audio_state(browser)["t"] <= longest["end"] + 0.5

    # Keyboard: focus the turn, N jumps to the next turn and plays it.
    turn.send_keys("n")
    nxt = min((s for s in answer["segments"] if s["start"] > longest["start"] + 0.05), key=lambda s: s["start"])
    wait_for(lambda: audio_state(browser)["t"] >= nxt["start"] - 0.05, 10, "N to seek to the next turn")

    # Rename speaker1; the label, the turns' names and the downloads follow.
    name = browser.find_element(By.CSS_SELECTOR, 'input[data-speaker="speaker1"]')
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys("Alice")
    first = browser.find_element(By.CSS_SELECTOR, '.tl-turn[data-speaker="speaker1"]')
    assert first.get_attribute("aria-label").startswith("Alice, ")
    browser.find_element(By.CSS_SELECTOR, '[data-download="json"]').click()
    browser.find_element(By.CSS_SELECTOR, '[data-download="rttm"]').click()
    # Chrome writes a temporary file first and renames it when done: wait for the final names.
    expected = {"three-speakers.json", "three-speakers.rttm"}
    wait_for(lambda: downloads_done(browser.downloads, expected), 20, "the downloads")
    downloaded = json.loads((browser.downloads / "three-speakers.json").read_text())
    assert {k: v for k, v in downloaded.items() if k != "speaker_names"} == answer
    assert downloaded["speaker_names"] == {"speaker1": "Alice"}
    rttm = (browser.downloads / "three-speakers.rttm").read_text().splitlines()
    assert len(rttm) == len(answer["segments"]) and any(line.split()[7] == "Alice" for line in rttm)
    assert {p.name for p in browser.downloads.iterdir()} == expected  # nothing else was downloaded

    # The job is listed for this key and reopens without the audio.
    browser.refresh()
    browser.find_element(By.ID, "api-key").send_keys(server.api_key, Keys.TAB)
    reopen = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#recent button"), 10, "the recent jobs list")
    assert reopen[0].text == "three-speakers.flac"
    reopen[0].click()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".tl-lane")) == 3, 20, "the reopened timeline")
    assert browser.find_element(By.ID, "audio-missing").is_displayed()


def test_known_voices_and_confidence_on_the_page(start_server, browser):
    server = start_server()
    voice = base64.b64encode(af.encode(af.demo_voice("A"), format="FLAC")).decode()  # voice A of the other demo
    status, enrolled = server.request("POST", VOICEPRINTS, body={"name": "alice", "content": voice})
    assert status == 200, enrolled
    browser.get(server.url + "/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys("dk_not_a_key")  # a refused key: the option stays off and says why
    hint = browser.find_element(By.ID, "identify-hint")
    wait_for(lambda: "refused" in hint.text, 20, "the refused key's hint")
    key.clear()
    key.send_keys(server.api_key)
    identify = browser.find_element(By.ID, "identify")
    wait_for(identify.is_enabled, 20, "the identify option")
    assert hint.text == "1 enrolled voice: alice"
    identify.click()
    browser.find_element(By.ID, "confidence").click()
    browser.find_element(By.ID, "file").send_keys(str(THREE_SPEAKERS))
    record_requests(browser)
    browser.find_element(By.ID, "submit").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".tl-lane") or browser.find_element(By.ID, "form-error").text,
             120, "the timeline")
    assert browser.find_element(By.ID, "form-error").text == ""
    assert diarize_request(browser)["identify"] is True and diarize_request(browser)["confidence"] is True

    request_id = browser.execute_script("return JSON.parse(localStorage.getItem('diarizer.recentJobs'))[0].request_id")
    answer = server.job(request_id)["response"]
    matched = {s["speaker_id"]: s for s in answer["speakers"]}
    [alice] = [s for s in answer["speakers"] if s["name"] == "alice"]
    assert sum(s["name"] is not None for s in answer["speakers"]) == 1  # nobody else is enrolled

    # Each lane shows the enrolled name, else the id; alice's match score is on hover.
    shown = {i.get_attribute("data-speaker"): i for i in browser.find_elements(By.CSS_SELECTOR, ".tl-name input")}
    assert {sid: i.get_attribute("value") for sid, i in shown.items()} == {
        sid: s["name"] or sid for sid, s in matched.items()}
    assert f"match {alice['match']:.2f}" in shown[alice["speaker_id"]].get_attribute("title")
    assert browser.find_element(By.CSS_SELECTOR, f'.tl-lane[data-speaker="{alice["speaker_id"]}"]'
                                ).get_attribute("aria-label") == "alice (enrolled voice)"
    assert "known: alice" in browser.find_element(By.ID, "result-info").text

    # Every turn says its speaker's name and its confidence in words; its look follows the band.
    by_start = {s["start"]: s for s in answer["segments"]}
    turns = browser.find_elements(By.CSS_SELECTOR, ".tl-turn")
    assert len(turns) == len(answer["segments"])
    for turn in turns:
        segment = by_start[float(turn.get_attribute("data-start"))]
        label = turn.get_attribute("aria-label")
        assert label.startswith((segment["speaker_name"] or segment["speaker_id"]) + ", ")
        assert label.endswith(confidence_words(segment["confidence"])) and turn.get_attribute("title") == label
        band = "high" if round(segment["confidence"] * 100) >= 90 else "medium" if round(
            segment["confidence"] * 100) >= 60 else "low"
        assert f"tl-conf-{band}" in turn.get_attribute("class").split()
    legend = browser.find_element(By.CSS_SELECTOR, ".tl-legend").text
    assert "sure (90% or more)" in legend and "unsure (under 60%)" in legend and "enrolled voice" in legend
    # Keyboard: Tab from the lanes' scroll area reaches the first turn; the line under the lanes describes it.
    browser.find_element(By.CSS_SELECTOR, ".tl-scroll").send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    assert "tl-turn" in focused.get_attribute("class").split()
    assert browser.find_element(By.CSS_SELECTOR, ".tl-detail").text == focused.get_attribute("aria-label")

    # Rename an unnamed speaker; the downloads use the shown names, the JSON is the API's answer.
    stranger = next(sid for sid, s in matched.items() if s["name"] is None)
    field = shown[stranger]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("Carol")
    for kind in ("json", "rttm", "text"):
        browser.find_element(By.CSS_SELECTOR, f'[data-download="{kind}"]').click()
    expected = {"three-speakers.json", "three-speakers.rttm", "three-speakers.txt"}
    wait_for(lambda: downloads_done(browser.downloads, expected), 20, "the downloads")
    downloaded = json.loads((browser.downloads / "three-speakers.json").read_text())
    assert downloaded == {**answer, "speaker_names": {stranger: "Carol"}}
    display = {sid: "Carol" if sid == stranger else s["name"] or sid for sid, s in matched.items()}
    rttm = [line.split() for line in (browser.downloads / "three-speakers.rttm").read_text().splitlines()]
    assert [(f[7], float(f[8])) for f in rttm] == [(display[s["speaker_id"]], s["confidence"]) for s in answer["segments"]]
    listed = (browser.downloads / "three-speakers.txt").read_text().splitlines()
    assert [line.split("  ")[1] for line in listed] == [display[s["speaker_id"]] for s in answer["segments"]]
    assert "alice" in display.values() and all(f"({confidence_words(s['confidence']).split(' (')[0]})" in line
                                               for line, s in zip(listed, answer["segments"]))
    refused = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not refused  # the strict CSP holds: nothing inline, nothing from elsewhere


def test_html_report_with_known_voices_opens_and_shows_the_timeline(tmp_path, browser):
    audio = tmp_path / "audio" / "call.flac"
    audio.parent.mkdir()
    shutil.copy(THREE_SPEAKERS, audio)
    out = tmp_path / "report" / "call.html"
    out.parent.mkdir()
    store, voice = tmp_path / "voiceprints.json", tmp_path / "alice.flac"
    af.write(voice, af.demo_voice("A"), format="FLAC")
    cli = [sys.executable, "-m", "diarizer.cli"]
    done = subprocess.run([*cli, "enroll", "alice", str(voice), "--voiceprints", str(store)],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*cli, str(audio), "--identify", "--confidence", "--voiceprints", str(store),
                           "--html", str(out), "--quiet"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "<script src=" not in out.read_text() and "http" not in out.read_text().split("<body>")[1].split(
        'id="diarization"')[0]  # self-contained: nothing fetched

    browser.get(out.as_uri())
    lanes = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".tl-lane"), 10, "the timeline")
    assert len(lanes) == 3 and len(turns_on_page(browser)) >= 6
    names = [i.get_attribute("value") for i in browser.find_elements(By.CSS_SELECTOR, ".tl-name input")]
    assert names.count("alice") == 1 and len(set(names)) == 3  # the enrolled voice is named, the others are not
    assert sum(n.startswith("speaker") for n in names) == 2
    assert "(known: alice)" in browser.find_element(By.CSS_SELECTOR, ".report-meta").text
    labels = [b.get_attribute("aria-label") for b in browser.find_elements(By.CSS_SELECTOR, ".tl-turn")]
    assert all(re.search(r", confidence \d+% \((sure|fairly sure|unsure)\)$", label) for label in labels)
    assert any(label.startswith("alice, ") for label in labels)
    assert "alice" in browser.execute_script("return window.diarizerReport.export('rttm')")
    src = browser.execute_script("return document.querySelector('.tl-audio').src")
    assert src.endswith("/audio/call.flac")  # the relative path resolves next to the page
    first = min(turns_on_page(browser), key=lambda s: s["start"])
    browser.find_elements(By.CSS_SELECTOR, ".tl-turn")[0].click()
    state = wait_for(lambda: (lambda s: s if not s["paused"] and s["t"] > first["start"] else None)(
        audio_state(browser)), 20, "the audio to play the first turn")
    assert state["t"] <= first["end"] + 0.3


def test_a_recording_the_browser_cannot_play_says_so_and_keeps_its_timeline(tmp_path, browser):
    """The service reads AMR (phones' call recorders); Chromium does not play it. The page says so instead of
    leaving a player that does nothing, and the timeline and the downloads are all there."""
    from media_factory import make_media

    audio = make_media(THREE_SPEAKERS, "amr", tmp_path)
    out = tmp_path / "call.html"
    done = subprocess.run([sys.executable, "-m", "diarizer.cli", str(audio), "--html", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    browser.get(out.as_uri())
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".tl-lane"), 10, "the timeline")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".tl-lane")) == 3
    notice = browser.find_element(By.CSS_SELECTOR, ".tl-audio-error")
    wait_for(lambda: notice.is_displayed(), 10, "the notice that this browser cannot play AMR")
    assert "cannot play this recording's format" in notice.text
    assert browser.execute_script("return document.querySelector('.tl-audio').error.code") == 4  # SRC_NOT_SUPPORTED
    assert "speaker1" in browser.execute_script("return window.diarizerReport.export('rttm')")

    browser.execute_script("window.diarizerReport.setAudio(arguments[0])", THREE_SPEAKERS.as_uri())
    wait_for(lambda: not notice.is_displayed(), 10, "the notice to go with a playable copy")
