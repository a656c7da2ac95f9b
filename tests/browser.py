"""A real browser for the console's tests: Debian's chromium, headless, driven by Selenium
through Debian's chromedriver.

`ensure_chromium` installs both with apt-get where they are missing (as `make test` runs: root,
Debian's mirrors reachable; about 35 s once, apt-get update included), under a file lock so
two test sessions do not run apt-get at once. Selenium is given both paths, so it never tries
to download a browser or a driver of its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

PACKAGES = ("chromium", "chromium-driver")
LOCK = Path("/tmp/jobpipe-chromium-install.lock")


def _found() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installed first where missing."""
    found = _found()
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"chromium or chromedriver is missing and this is not root: "
                           f"apt-get install {' '.join(PACKAGES)}")
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _found()
        if found:
            return found
        started = time.monotonic()
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], check=True,
                       env=env, capture_output=True, timeout=900)
        print(f"installed {', '.join(PACKAGES)} in {time.monotonic() - started:.0f} s")
    found = _found()
    if not found:
        raise RuntimeError(f"apt-get installed {' '.join(PACKAGES)}, but chromium or chromedriver "
                           "is not on PATH")
    return found


def chromium(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    """A headless chromium under Selenium (root needs --no-sandbox)."""
    browser, driver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))
