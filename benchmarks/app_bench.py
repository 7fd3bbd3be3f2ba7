"""The app: Compare page render time with 20 runs, and the server's peak memory.

Compare: 20 copies of a tiny finished run (new ids) in a tmp ``CXR_RUNS_DIR``, no bundled
runs, the page driven by ``streamlit.testing`` AppTest in a child process; script-run time
with the default 2 runs chosen, and with all 20 chosen for each tab (only the open tab is
built), interleaved.

Memory: a real ``streamlit run app.py`` on 127.0.0.1 with the bundled runs, driven by
headless Chromium (Debian's, through Playwright): the Predict page with every model chosen
and one radiograph uploaded, so each model is loaded, predicts and computes its Grad-CAM.
The peak resident memory of the server's process tree is sampled from the moment it is
up (before any model is loaded).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import DATA, ROOT, tree_rss_bytes
from tests.appserver import CHROMIUM, CHROMIUM_ARGS, settle, streamlit_app

COMPARE_RUNS = 20


# --------------------------------------------------------------------------- Compare page


def make_runs(tiny_run: Path, folder: Path, count: int) -> list[str]:
    """``count`` copies of a finished run, each under a new id (the folder name is the id)."""
    ids = []
    for i in range(count):
        run_id = f"bench-{i:02d}"
        shutil.copytree(tiny_run, folder / run_id, ignore=shutil.ignore_patterns("last.*"))
        ids.append(run_id)
    return ids


def compare_render(tiny_run: Path, reps: int) -> dict:
    """Run the Compare-page measurement in a child process with its own runs folders."""
    with tempfile.TemporaryDirectory(prefix="cxr-compare-") as tmp:
        runs = Path(tmp) / "runs"
        ids = make_runs(tiny_run, runs, COMPARE_RUNS)
        env = {
            **os.environ,
            "CXR_RUNS_DIR": str(runs),
            "CXR_BUNDLED_DIR": str(Path(tmp) / "no-bundled"),
        }
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.app_bench", "compare", str(reps), *ids],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compare_child(reps: int, ids: list[str]) -> dict:
    from streamlit.testing.v1 import AppTest

    from benchmarks.common import interleaved

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    started = time.perf_counter()
    at.switch_page("pages/compare.py").run()
    first_s = time.perf_counter() - started
    assert not at.exception, [e.value for e in at.exception]
    picker = lambda: at.multiselect(key="compare_runs")  # noqa: E731

    def render(chosen: list[str], tab: str) -> float:
        picker().set_value(chosen)
        at.session_state["compare_tab"] = tab
        started = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - started
        assert not at.exception, [e.value for e in at.exception]
        assert picker().value == chosen
        return seconds

    # Only the open tab's content is built, so each tab is a render of its own.
    tabs = [t.label for t in at.tabs]
    cases = {"2 runs chosen": lambda: render(ids[:2], tabs[0])}
    for tab in tabs:
        cases[f"all 20 chosen, {tab} tab"] = lambda tab=tab: render(ids, tab)
    samples = interleaved(cases, reps)
    medians = {k: round(sorted(v)[len(v) // 2], 3) for k, v in samples.items()}
    return {
        "runs_in_store": len(ids),
        "first_render_s": round(first_s, 3),
        "render_s": medians,
        "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()},
        "target_s": 2.0,
        "meets_target": max(medians.values()) <= 2.0,
        "reps": reps,
    }


# --------------------------------------------------------------------------- server memory


class PeakSampler:
    """Samples a process tree's RSS in the background; ``peak`` is the largest seen."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.peak, self.last = pid, every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last = tree_rss_bytes(self.pid)
            self.peak = max(self.peak, self.last)
            time.sleep(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _choose_every_model(page, available: int) -> int:
    """Add options to the Models picker until all ``available`` are chosen; how many are.

    Bounded: once every model is chosen the open list still holds an option ("No
    results"), so "click while there is an option" would never end.
    """
    picker = page.locator("[data-testid=stMultiSelect]").filter(has_text="Models")
    tags = picker.locator("[data-tag]")
    for _ in range(available):
        if tags.count() >= available:
            break
        picker.locator("input").click()
        page.get_by_role("option").first.click()
        settle(page, 300)
    page.keyboard.press("Escape")
    settle(page, 300)
    return tags.count()


def server_peak_rss(bundled: Path, image: Path) -> dict:
    """Peak RSS of ``streamlit run app.py`` with every model of ``bundled`` used once."""
    from playwright.sync_api import sync_playwright

    available = len(list(bundled.glob("*/model.safetensors")))
    with tempfile.TemporaryDirectory(prefix="cxr-rss-") as tmp:
        env = {"CXR_RUNS_DIR": str(Path(tmp) / "runs"), "CXR_BUNDLED_DIR": str(bundled)}
        with streamlit_app(env, Path(tmp) / "streamlit.log") as (url, server):
            sampler = PeakSampler(server.pid)
            try:
                idle = tree_rss_bytes(server.pid)
                started = time.perf_counter()
                with sync_playwright() as p:
                    browser = p.chromium.launch(
                        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
                    )
                    page = browser.new_page(viewport={"width": 1600, "height": 1200})
                    page.set_default_timeout(300_000)
                    page.goto(f"{url}/predict")
                    page.get_by_role("heading", name="Predict & explain", exact=True).wait_for()
                    settle(page, 300)
                    models = _choose_every_model(page, available)
                    page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(
                        str(image)
                    )
                    # The upload shown as is, then one overlay per model.
                    page.locator("[data-testid=stImage] img").nth(models).wait_for()
                    settle(page, 300)
                    errors = page.locator("[data-testid=stException]").count()
                    errors += page.locator("[data-testid=stAlertContentError]").count()
                    metrics = page.locator("[data-testid=stMetricValue]").count()
                    browser.close()
                seconds = time.perf_counter() - started
                time.sleep(1.0)
                settled = tree_rss_bytes(server.pid)
            finally:
                peak = sampler.stop()
    gib = 2**30
    return {
        "models": models,
        "models_available": available,
        "predictions_shown": metrics,
        "errors_on_page": errors,
        "idle_rss_gb": round(idle / gib, 3),
        "peak_rss_gb": round(peak / gib, 3),
        "after_rss_gb": round(settled / gib, 3),
        "drive_s": round(seconds, 1),
        "target_gb": 2.0,
        "meets_target": (
            peak / gib <= 2.0 and errors == 0 and metrics == models and models == available
        ),
        "image": str(image.relative_to(DATA)) if image.is_relative_to(DATA) else image.name,
    }


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        print(json.dumps(_compare_child(int(sys.argv[2]), sys.argv[3:])))
