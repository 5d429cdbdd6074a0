"""Screenshots of the timeline page for the README (docs/img/*.png), taken by headless Chromium.

    .venv/bin/python docs/make_screenshots.py

Starts a local `diarize serve`, enrols two of the demo voices (Anna, Ben), uploads demo/three-speakers.flac through
the page with "Name known voices" and "Confidence per turn", names the third speaker, plays a turn, and photographs
the page; then writes and photographs a `diarize --html --identify --confidence` page.
"""
from __future__ import annotations

import base64
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "docs" / "img"
DEMO = ROOT / "demo" / "three-speakers.flac"
VOICES = {"Anna": "A", "Ben": "B"}  # demo voices (audio_factory), enrolled from the other demo recording


def wait(predicate, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError


def main() -> int:
    import audio_factory as af
    from browser import page_of_a_local_server
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    OUT.mkdir(parents=True, exist_ok=True)
    with page_of_a_local_server(width=1200, height=1000) as driver, \
            tempfile.TemporaryDirectory(prefix="diarizer-shots-") as tmp:
        for name, label in VOICES.items():  # enrolled through the API, from the page's origin and key
            voice = base64.b64encode(af.encode(af.demo_voice(label), format="FLAC")).decode()
            status = driver.execute_async_script(
                "const done = arguments[2]; fetch('audio/generic/api/v2/voiceprints', {method: 'POST', headers: "
                "{'x-api-key': document.getElementById('api-key').value, 'Content-Type': 'application/json'}, "
                "body: JSON.stringify({name: arguments[0], content: arguments[1]})}).then((r) => done(r.status));",
                name, voice)
            assert status == 200, status
        driver.find_element(By.ID, "api-key").send_keys(" ", Keys.BACKSPACE)  # the page looks for voices again
        wait(lambda: driver.find_element(By.ID, "identify-hint").text.startswith("2 enrolled voices"))
        driver.find_element(By.ID, "identify").click()
        driver.find_element(By.ID, "confidence").click()
        driver.find_element(By.ID, "file").send_keys(str(DEMO))
        driver.find_element(By.ID, "submit").click()
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".tl-lane"))
        for field in driver.find_elements(By.CSS_SELECTOR, ".tl-name input"):
            if field.get_attribute("value").startswith("speaker"):  # nobody enrolled: named by hand
                field.send_keys(Keys.CONTROL, "a")
                field.send_keys("Chloé")
        turns = driver.find_elements(By.CSS_SELECTOR, ".tl-turn")
        turns[len(turns) // 2].click()
        time.sleep(1.2)
        driver.execute_script("document.querySelector('.tl-audio').pause()")
        driver.execute_script("document.getElementById('result').scrollIntoView()")
        element = driver.find_element(By.ID, "result")
        element.screenshot(str(OUT / "timeline.png"))
        driver.execute_script("window.scrollTo(0, 0)")
        driver.find_element(By.TAG_NAME, "main").screenshot(str(OUT / "page.png"))
        for _ in range(2):
            driver.find_element(By.CSS_SELECTOR, '[data-action="zoom-in"]').click()
        element.screenshot(str(OUT / "timeline-zoomed.png"))

        report = Path(tmp) / "three-speakers.html"
        audio = Path(tmp) / DEMO.name
        audio.write_bytes(DEMO.read_bytes())
        store = Path(tmp) / "voiceprints.json"
        for name, label in VOICES.items():
            af.write(Path(tmp) / f"{name}.flac", af.demo_voice(label), format="FLAC")
            subprocess.run([sys.executable, "-m", "diarizer.cli", "enroll", name, str(Path(tmp) / f"{name}.flac"),
                            "--voiceprints", str(store)], check=True, cwd=ROOT, capture_output=True)
        subprocess.run([sys.executable, "-m", "diarizer.cli", str(audio), "--identify", "--confidence",
                        "--voiceprints", str(store), "--html", str(report), "--quiet"], check=True, cwd=ROOT)
        driver.get(report.as_uri())
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".tl-lane"))
        driver.find_element(By.TAG_NAME, "main").screenshot(str(OUT / "html-report.png"))
    for path in sorted(OUT.glob("*.png")):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
