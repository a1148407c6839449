"""The headless-browser helper against a small JS page served on 127.0.0.1.

    python -m pytest tests/test_browser.py
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.browser import needs_chromium, open_page

pytestmark = pytest.mark.browser

# Tabs drawn by JavaScript after a delay, as a single-page app does; one of them
# needs a remote image, which the helper must refuse rather than wait for.
PAGE = """<!DOCTYPE html>
<html><body>
<div id="app">loading</div>
<script>
setTimeout(() => {
  document.getElementById("app").innerHTML =
    '<ul><li role="tab">Logs</li><li role="tab">Artifacts</li></ul><div id="panel">log lines</div>';
  document.querySelectorAll("[role=tab]").forEach(tab => tab.onclick = () => {
    document.getElementById("panel").textContent = tab.textContent === "Artifacts" ? "train-report" : "log lines";
  });
}, 300);
</script>
<img src="http://example.invalid/tracker.png">
</body></html>
"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def site(tmp_path):
    """tmp_path/site/index.html served on a free loopback port; yields the base URL."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(PAGE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@needs_chromium
def test_click_a_js_tab_and_screenshot(site, tmp_path):
    with open_page(f"{site}/index.html") as page:
        page.wait_for_text("log lines")
        page.click_text("Artifacts")
        page.wait_for_text("train-report")
        shot = page.screenshot(tmp_path / "page.png")
        assert "train-report" in page.text() and "loading" not in page.text()
        assert page.blocked == ["http://example.invalid/tracker.png"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000


@needs_chromium
def test_waiting_for_text_that_never_comes_fails(site):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with open_page(f"{site}/index.html") as page, pytest.raises(PlaywrightTimeout):
        page.wait_for_text("no such text", timeout_s=1)
