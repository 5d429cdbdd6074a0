"""Screenshots of the timeline page for the README (docs/img/*.png), taken by headless Chromium.

    .venv/bin/python docs/make_screenshots.py

Starts a local `diarize serve`, uploads demo/three-speakers.flac through the page, names the speakers, plays a
turn, and photographs the page; then writes and photographs a `diarize --html` page.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "docs" / "img"
DEMO = ROOT / "demo" / "three-speakers.flac"


def wait(predicate, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError


def main() -> int:
    from browser import page_of_a_local_server
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    OUT.mkdir(parents=True, exist_ok=True)
    with page_of_a_local_server(width=1200, height=1000) as driver, \
            tempfile.TemporaryDirectory(prefix="diarizer-shots-") as tmp:
        driver.find_element(By.ID, "file").send_keys(str(DEMO))
        driver.find_element(By.ID, "submit").click()
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".tl-lane"))
        for speaker, name in (("speaker1", "Anna"), ("speaker2", "Ben"), ("speaker3", "Chloé")):
            field = driver.find_element(By.CSS_SELECTOR, f'input[data-speaker="{speaker}"]')
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(name)
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
        subprocess.run([sys.executable, "-m", "diarizer.cli", str(audio), "--html", str(report), "--quiet"],
                       check=True, cwd=ROOT)
        driver.get(report.as_uri())
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".tl-lane"))
        driver.find_element(By.TAG_NAME, "main").screenshot(str(OUT / "html-report.png"))
    for path in sorted(OUT.glob("*.png")):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
