"""A headless Chromium for tests: open a page, read its text, click a tab, wait for text, screenshot.

    from tests.browser import needs_chromium, open_page

    @needs_chromium
    def test_ui(tmp_path):
        with open_page("http://127.0.0.1:4200/v2/runs/flow-run/<id>") as page:
            page.click_text("Artifacts")
            page.wait_for_text("train-report")
            page.screenshot(tmp_path / "artifacts.png")

Playwright drives the system's Chromium (Debian: `apt-get install -y chromium`)
through `executable_path`; it never downloads a browser of its own
(`playwright install` is not needed). Without chromium, `needs_chromium` skips
the test and says why. The launch flags keep Chromium off the network (no
component updates, sync or QUIC probes), and requests to any host but loopback
are refused and listed in `page.blocked`, so a page that needs the internet
shows it instead of hanging.

Playwright's sync API refuses to run inside a running asyncio event loop: call
`open_page` from plain test code, not from inside a flow or an async test.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
INSTALL_HINT = "apt-get install -y chromium"


def chromium_path() -> str | None:
    """The Chromium to drive: $CHROMIUM if set, else `chromium` (or `chromium-browser`) on PATH; None if none."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _playwright_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None if chromium_path() else f"no chromium on PATH ({INSTALL_HINT})"


_MISSING = _playwright_missing()
needs_chromium = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))


class Page:
    """A loaded page. `.page` is Playwright's Page, for anything the helpers below do not cover."""

    def __init__(self, page, blocked: list[str]):
        self.page = page
        self.blocked = blocked  # URLs of non-loopback requests that were refused

    def text(self) -> str:
        """The visible text of the whole page."""
        return self.page.inner_text("body")

    def wait_for_text(self, text: str | re.Pattern, timeout_s: float = 15) -> None:
        """Wait until an element showing exactly this text (or matching this pattern) is visible."""
        self.page.get_by_text(text, exact=True).first.wait_for(timeout=timeout_s * 1000)

    def click_text(self, text: str, timeout_s: float = 15) -> None:
        """Click the tab named text (ARIA role tab), or else the first element showing exactly text."""
        tab = self.page.get_by_role("tab", name=text, exact=True)
        tab.or_(self.page.get_by_text(text, exact=True)).first.click(timeout=timeout_s * 1000)

    def wait_for(self, selector: str, timeout_s: float = 15) -> None:
        """Wait until a CSS selector matches a visible element."""
        self.page.locator(selector).first.wait_for(timeout=timeout_s * 1000)

    def screenshot(self, path: Path | str, full_page: bool = True) -> Path:
        """Save a PNG of the page to path."""
        self.page.screenshot(path=str(path), full_page=full_page)
        return Path(path)


def _is_remote(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and parts.hostname not in LOCAL_HOSTS


@contextmanager
def open_page(url: str, width: int = 1400, height: int = 900, timeout_s: float = 30) -> Iterator[Page]:
    """Launch headless Chromium, load url (until the load event) and yield the page; closes the browser after."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError(f"no chromium found: {INSTALL_HINT}, or set CHROMIUM to its path")
    blocked: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=FLAGS, timeout=timeout_s * 1000)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            context.route(_is_remote, lambda route: blocked.append(route.request.url) or route.abort("blockedbyclient"))
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            yield Page(page, blocked)
        finally:
            browser.close()
