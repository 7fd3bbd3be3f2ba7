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
    env: dict[str, str], log: Path, *options: str, timeout: float = 180
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run the app with ``env`` added to this environment and ``options`` added to the
    command line; yield its URL and process once it answers its health check, and stop
    it on exit. Its output goes to ``log``, shown when it never comes up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
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


def settle(page, timeout: float = 90) -> None:
    """Wait until the script run is over: no running indicator, skeleton or spinner for a
    second (or ``timeout`` seconds have passed)."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        busy = page.locator("[data-testid=stStatusWidget]").count() > 0
        busy |= page.locator("[data-testid=stSkeleton]").count() > 0
        busy |= page.locator("[data-testid=stSpinner]").count() > 0
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            return
        time.sleep(0.2)
