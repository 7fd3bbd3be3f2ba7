"""Streamlit's own floor on this machine for the steps ``benchmarks.browser`` times: a
script that does nothing else (``benchmarks/floor/app.py``), timed the same way, so each
app step can be stated as a multiple of it.

    python -m benchmarks.floor          # about a minute
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.browser import films
from benchmarks.common import machine
from tests.appserver import chromium, run_over, settle, streamlit_app, timed

APP = Path(__file__).with_name("app.py")
REPS = 5


def visit(browser, url: str, film: Path) -> dict[str, float]:
    """One session: a rerun, an upload, ten charts; seconds from input to view."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    run_over(page, page.get_by_role("heading", name="Floor"))
    settle(page)
    button = page.get_by_role("button", name="Rerun")
    dropzone = page.locator("[data-testid=stFileUploaderDropzoneInput]")
    toggle = page.get_by_text("Ten charts", exact=True)
    seconds = {
        "rerun on a click": timed(page, button.click, page.get_by_text("runs: 1", exact=True)),
        "upload to the film shown": timed(
            page,
            lambda: dropzone.set_input_files(str(film)),
            page.locator("[data-testid=stImage]"),
        ),
        "ten Plotly charts drawn": timed(
            page, toggle.click, page.locator("[data-testid=stPlotlyChart]").nth(9)
        ),
    }
    page.close()
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cxr-floor-") as tmp:
        log = Path(tmp) / "streamlit.log"
        with streamlit_app({}, log, script=str(APP)) as (url, _), chromium() as browser:
            visits = [visit(browser, url, film) for film in films(REPS)]
    print(f"machine: {json.dumps(machine())}")
    for name in visits[0]:
        seconds = [v[name] for v in visits]
        print(f"{name:32s} median {statistics.median(seconds):.2f} s "
              f"(of {', '.join(f'{s:.2f}' for s in seconds)})")  # fmt: skip


if __name__ == "__main__":
    main()
