"""The timeline page in a real headless Chromium against a real `diarize serve`: upload the three-speaker demo
through the uploads route, wait for the timeline, play a turn, rename a speaker, download the JSON; and the
`diarize --html` page opened from disk. Needs Debian's chromium + chromium-driver (.ci/run installs them)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import REPO_ROOT, wait_for

THREE_SPEAKERS = REPO_ROOT / "demo" / "three-speakers.flac"

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
    browser.find_element(By.ID, "submit").click()

    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".tl-lane") or browser.find_element(By.ID, "form-error").text,
             120, "the timeline")
    assert browser.find_element(By.ID, "form-error").text == ""
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
    wait_for(lambda: expected <= {p.name for p in browser.downloads.iterdir()}, 20, "the downloads")
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


def test_html_report_opens_and_shows_the_timeline(tmp_path, browser):
    audio = tmp_path / "audio" / "call.flac"
    audio.parent.mkdir()
    shutil.copy(THREE_SPEAKERS, audio)
    out = tmp_path / "report" / "call.html"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-m", "diarizer.cli", str(audio), "--html", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "<script src=" not in out.read_text() and "http" not in out.read_text().split("<body>")[1].split(
        'id="diarization"')[0]  # self-contained: nothing fetched

    browser.get(out.as_uri())
    lanes = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".tl-lane"), 10, "the timeline")
    assert len(lanes) == 3 and len(turns_on_page(browser)) >= 6
    src = browser.execute_script("return document.querySelector('.tl-audio').src")
    assert src.endswith("/audio/call.flac")  # the relative path resolves next to the page
    first = min(turns_on_page(browser), key=lambda s: s["start"])
    browser.find_elements(By.CSS_SELECTOR, ".tl-turn")[0].click()
    state = wait_for(lambda: (lambda s: s if not s["paused"] and s["t"] > first["start"] else None)(
        audio_state(browser)), 20, "the audio to play the first turn")
    assert state["t"] <= first["end"] + 0.3
