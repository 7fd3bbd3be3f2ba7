"""The real app for browser-level checks: ``streamlit run app.py`` on a free local port, and
Debian's Chromium to drive it. Shared by the browser and load tests and the app benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium: test tools never download a browser."""
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_app(
    env: dict[str, str], log: Path, *options: str, timeout: float = 180, script: str = "app.py"
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run the app (or another ``script`` with the app's settings) with ``env`` added to
    this environment and ``options`` added to the command line; yield its URL and process
    once it answers its health check, and stop it on exit. Its output goes to ``log``,
    shown when it never comes up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port),
               "--browser.gatherUsageStats", "false", *options]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not come up:\n{log.read_text()}")
                time.sleep(0.5)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as reply:
            return reply.read() == b"ok"
    except OSError:
        return False


BUSY = "[data-testid=stStatusWidget], [data-testid=stSkeleton], [data-testid=stSpinner]"
"""What Streamlit shows while a script run is going on."""


def settle(page, timeout: float = 90) -> None:
    """Wait until the script run is over: no running indicator, skeleton or spinner for a
    second (or ``timeout`` seconds have passed)."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        if page.locator(BUSY).count():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            return
        time.sleep(0.2)


# --------------------------------------------------------------------------- driving pages

ARTIFACTS = ROOT / "test-artifacts"
"""Full-page screenshots of the browser tests (gitignored; CI keeps them)."""
WAIT_MS = 180_000  # generous: the CI machine may be busy training
WIDTHS = (800, 1400)
"""The viewports the journeys check: a laptop with the sidebar open, and a desktop."""


@contextmanager
def chromium() -> Iterator:
    """Debian's Chromium under Playwright, headless; skipped when it is missing unless
    CXR_REQUIRE_BROWSER=1 (CI), then it fails."""
    import pytest
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CXR_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, path: str, title: str, width: int = 1400):
    """A new tab (a new app session) on ``url/path``, once its ``title`` heading is shown
    and the script run is over, with no exception box."""
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name=title, exact=True).wait_for()
    settle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    return page


def shot(page, name: str) -> None:
    """Screenshot of the whole page at its width (Streamlit scrolls inside its main block)."""
    ARTIFACTS.mkdir(exist_ok=True)
    width = page.viewport_size["width"]
    height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": width, "height": min(int(height) + 40, 8000)})
    time.sleep(0.5)
    settle(page)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size({"width": width, "height": 1000})


_SHOWN_WORDS = """() => {
  // Words a person reads in the main block: text nodes outside buttons (a "None" button
  // clears a choice), code and log output; Plotly's SVG text is included.
  const main = document.querySelector('[data-testid=stMain]');
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  const out = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || el.closest('button, code, pre, [role=option], [aria-hidden=true]')) continue;
    if (el.getClientRects().length === 0) continue;  // not shown (a closed expander)
    const found = node.textContent.match(/\\b(nan|NaN|None|undefined)\\b/g);
    if (found) out.push(node.textContent.trim().slice(0, 120));
  }
  return out;
}"""

_WIDE_TABLES = """() => Array.from(
  document.querySelectorAll('[data-testid=stDataFrame] .dvn-scroller'))
  .filter(el => el.getClientRects().length && el.scrollWidth > el.clientWidth + 1)
  .map(el => `${el.scrollWidth} px of table in ${el.clientWidth} px`)"""


_CUT = """() => Array.from(document.querySelectorAll(
  '[data-testid=stMain] [data-testid=stMetricValue] > div, ' +
  '[data-testid=stMain] button [data-testid=stMarkdownContainer], ' +
  '[data-testid=stMain] [data-testid=stPageLink] [data-testid=stMarkdownContainer]'))
  .filter(el => el.getClientRects().length && el.scrollWidth > el.clientWidth + 1)
  .map(el => el.innerText.slice(0, 60))"""


def problems(page, tables: bool = True) -> list[str]:
    """What a person should never see: an exception box, "nan" or "None" as text, a
    figure or button label cut short ("99.…"), and (``tables``) a table wider than its
    container, its right-hand columns cut off."""
    found = [
        f"exception: {e.inner_text()[:200]}"
        for e in page.locator("[data-testid=stException]").all()
    ]
    found += [f"shown: {text!r}" for text in page.evaluate(_SHOWN_WORDS)]
    found += [f"cut: {text!r}" for text in page.evaluate(_CUT)]
    if tables:
        found += [f"wide table: {t}" for t in page.evaluate(_WIDE_TABLES)]
    return found


def view(page) -> dict:
    """What a page shows that a reload or a copied link must keep: its URL's query, the
    headings, the chosen items of every multiselect, every selectbox's value and the open
    tab."""
    return page.evaluate(
        """() => {
      const texts = sel => Array.from(document.querySelectorAll(sel)).map(e => e.innerText);
      return {
        query: location.search,
        headings: texts('[data-testid=stMain] h1, [data-testid=stMain] h2'),
        chosen: Array.from(document.querySelectorAll('[data-testid=stMultiSelect] [data-tag]'))
          .map(e => e.getAttribute('aria-label')),
        selected: Array.from(document.querySelectorAll('[data-testid=stSelectbox] input'))
          .map(e => e.value),
        tab: texts('[role=tab][aria-selected=true]'),
      };
    }"""
    )


def run_over(page, shown, timeout: float = WAIT_MS / 1000) -> float:
    """Wait for ``shown`` to be visible and then for the script run to end; the moment it
    ended (``time.perf_counter``), without :func:`settle`'s confirming quiet second."""
    shown.wait_for(state="visible", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while page.locator(BUSY).count() and time.monotonic() < deadline:
        time.sleep(0.05)
    return time.perf_counter()


def timed(page, action, until, timeout: float = WAIT_MS / 1000) -> float:
    """Seconds from a user's input to its updated view: run ``action()`` (a click, a key
    press), until the ``until`` locator is visible and the script run is over; then
    settle, not counted. The browser timing benchmark measures its steps with this."""
    started = time.perf_counter()
    action()
    ended = run_over(page, until, timeout)
    settle(page, timeout)
    return ended - started
