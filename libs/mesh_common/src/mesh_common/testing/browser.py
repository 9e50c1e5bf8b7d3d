"""Browser tests with Debian's chromium driven by playwright (headless), no downloads.

:func:`require_chromium` skips locally and fails under CI when chromium is missing
(``make test`` installs it); :func:`launch` starts it; :class:`PageWatch` collects what a page
must not do: console errors (CSP violations are console errors), uncaught exceptions and
requests to any origin but the one under test. Test support only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import Browser, Page, async_playwright

from mesh_common.testing.servers import in_ci

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip (locally) or fail (CI) when Debian's chromium is not installed."""
    if os.access(CHROMIUM, os.X_OK):
        return
    message = f"{CHROMIUM} is missing; install it with `apt-get install chromium`"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@asynccontextmanager
async def launch() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, closed on exit (use it in a fixture)."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class PageWatch:
    """What ``page`` did that it must not: console errors and uncaught exceptions (``errors``)
    and requests to any origin other than ``origin`` (``foreign``)."""

    def __init__(self, page: Page, origin: str) -> None:
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "request",
            lambda r: None if r.url.startswith(origin + "/") else self.foreign.append(r.url),
        )
