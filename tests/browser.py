"""A real headless Chromium driven by Selenium (Debian `chromium` + `chromium-driver`), for the page tests and
docs/screenshots.py. Downloads land in `download_dir`; audio may play without a user gesture and is muted."""
from __future__ import annotations

import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def chromium(download_dir: Path | None = None, width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary:
        options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}",
                 "--allow-file-access-from-files", "--hide-scrollbars"):
        options.add_argument(flag)
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                                  "download.prompt_for_download": False})
    driver_path = shutil.which("chromedriver")
    service = Service(executable_path=driver_path) if driver_path else Service()
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    return driver


@contextmanager
def page_of_a_local_server(width: int = 1280, height: int = 900) -> Iterator:
    """A fresh `diarize serve` (temporary data dir) and Chromium on its page with the API key typed in."""
    from selenium.webdriver.common.by import By

    from diarizer_service.local_server.child import ServeProcess

    key = "dk_page_" + secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="diarizer-page-") as tmp:
        server = ServeProcess(Path(tmp) / "data", key, Path(tmp) / "serve.log")
        try:
            driver = chromium(width=width, height=height)
            try:
                driver.get(server.url + "/")
                driver.find_element(By.ID, "api-key").send_keys(key)
                yield driver
            finally:
                driver.quit()
        finally:
            server.stop()
