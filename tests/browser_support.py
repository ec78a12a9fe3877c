"""A real headless browser for the web app's tests: Debian's Chromium driven by Playwright
(never `playwright install`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu"]


@contextmanager
def chromium() -> Iterator:
    """A launched headless Chromium (playwright's Browser), closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
