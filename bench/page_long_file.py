"""An hour-long file through the timeline page of a local `diarize serve`, end to end, in headless Chromium.

A manual check and a benchmark, not a test: it starts a server, opens the page, uploads the file through the
uploads route, waits for the timeline and reports upload and processing times, lanes and turns, and whether
zooming, scrolling and the player work on a file this long. Make a 40 MB, 60-minute M4A first:

    python /work/shared/eval/make_conversations.py --pool /work/shared/eval/pool/libri --out .bench/long60 \\
        --count 1 --minutes 60-60 --seed 12 --speakers 4 --format flac
    python bench/page_long_file.py --encode .bench/long60/conv000.flac .bench/long60/conv000.m4a --kbps 88
    python bench/page_long_file.py .bench/long60/conv000.m4a

Needs chromium + chromium-driver (Debian) and the dev extra (selenium, av).
"""
from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def encode_m4a(source: Path, out: Path, kbps: int) -> None:
    """AAC in MP4 at `kbps`, 44.1 kHz stereo (what a phone's voice memo or a Zoom recording looks like)."""
    import av
    import numpy as np
    import soundfile as sf

    with sf.SoundFile(source) as reader, av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100, layout="stereo")
        stream.bit_rate = kbps * 1000
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=44100)
        position = 0
        while True:
            block = reader.read(reader.samplerate * 10, dtype="float32", always_2d=True)
            if not len(block):
                break
            mono = block.mean(axis=1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.stack([mono, mono])), format="fltp",
                                               layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = reader.samplerate, position, Fraction(1, reader.samplerate)
            position += len(mono)
            for chunk in resampler.resample(frame):
                container.mux(stream.encode(chunk))
        for chunk in resampler.resample(None):
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    print(f"wrote {out}: {out.stat().st_size / 1e6:.1f} MB", file=sys.stderr)


def run_page(audio: Path, timeout: float) -> dict:
    from browser import page_of_a_local_server
    from selenium.webdriver.common.by import By

    with page_of_a_local_server(width=1400, height=1000) as driver:
        driver.find_element(By.ID, "file").send_keys(str(audio.resolve()))
        began = time.monotonic()
        driver.find_element(By.ID, "submit").click()
        uploaded = None
        while time.monotonic() - began < timeout:
            label = driver.find_element(By.ID, "progress-label").text
            if uploaded is None and label in ("Queued", "Diarizing", "Done"):
                uploaded = time.monotonic() - began
            if driver.find_elements(By.CSS_SELECTOR, ".tl-lane"):
                break
            error = driver.find_element(By.ID, "form-error").text
            if error:
                raise RuntimeError(error)
            time.sleep(0.5)
        else:
            raise TimeoutError(f"no timeline after {timeout:g} s")
        done = time.monotonic() - began
        lanes = len(driver.find_elements(By.CSS_SELECTOR, ".tl-lane"))
        turns = len(driver.find_elements(By.CSS_SELECTOR, ".tl-turn"))
        fit_width = driver.execute_script("return document.querySelector('.tl-canvas').offsetWidth")
        for _ in range(6):
            driver.find_element(By.CSS_SELECTOR, '[data-action="zoom-in"]').click()
        zoomed_width = driver.execute_script("return document.querySelector('.tl-canvas').offsetWidth")
        driver.execute_script("document.querySelector('.tl-scroll').scrollLeft = 1e9")
        scrolled = driver.execute_script("return document.querySelector('.tl-scroll').scrollLeft")
        last = driver.find_elements(By.CSS_SELECTOR, ".tl-turn")[-1]
        driver.execute_script("arguments[0].click()", last)
        time.sleep(2)
        player = driver.execute_script("const a = document.querySelector('.tl-audio');"
                                       "return {duration: a.duration, t: a.currentTime, paused: a.paused,"
                                       " error: a.error && a.error.code};")
        return {"file": audio.name, "megabytes": round(audio.stat().st_size / 1e6, 1),
                "upload_seconds": round(uploaded or 0, 1), "total_seconds": round(done, 1),
                "lanes": lanes, "turns": turns, "fit_width_px": fit_width, "zoomed_width_px": zoomed_width,
                "scrolled_px": scrolled, "player": player}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="?", type=Path)
    parser.add_argument("--encode", nargs=2, type=Path, metavar=("SOURCE", "OUT.m4a"))
    parser.add_argument("--kbps", type=int, default=88)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    if args.encode:
        encode_m4a(*args.encode, args.kbps)
    if args.audio:
        print(run_page(args.audio, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
