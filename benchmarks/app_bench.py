"""The app: Compare page render time with 20 runs, and the server's peak memory.

Compare: 20 copies of a tiny finished run (new ids) in a tmp ``CXR_RUNS_DIR``, no bundled
runs, the page driven by ``streamlit.testing`` AppTest in a child process; script-run time
with the default 2 runs chosen and with all 20 chosen, interleaved.

Memory: a real ``streamlit run app.py`` on 127.0.0.1 with the bundled runs, driven by
headless Chromium (Debian's, through Playwright): the Predict page with every model chosen
and one radiograph uploaded, so each model is loaded, predicts and computes its Grad-CAM.
The peak resident memory of the server's process tree is sampled throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.common import DATA, ROOT, tree_rss_bytes

CHROMIUM = Path("/usr/bin/chromium")
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

    def render(chosen: list[str]) -> float:
        picker().set_value(chosen)
        started = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - started
        assert not at.exception, [e.value for e in at.exception]
        assert picker().value == chosen
        return seconds

    samples = interleaved(
        {"2 runs chosen": lambda: render(ids[:2]), "all 20 chosen": lambda: render(ids)}, reps
    )
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read() == b"ok":
                    return
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError("streamlit exited before becoming healthy")
        time.sleep(0.5)
    raise RuntimeError("streamlit did not become healthy")


def _settle(page, timeout: float = 300) -> None:
    """Until the script run is over: no running indicator or skeleton for a second."""
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
        _settle(page)
    page.keyboard.press("Escape")
    _settle(page)
    return tags.count()


def server_peak_rss(bundled: Path, image: Path) -> dict:
    """Peak RSS of ``streamlit run app.py`` with every model of ``bundled`` used once."""
    from playwright.sync_api import sync_playwright

    available = len(list(bundled.glob("*/model.safetensors")))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="cxr-rss-") as tmp:
        env = {
            **os.environ,
            "CXR_RUNS_DIR": str(Path(tmp) / "runs"),
            "CXR_BUNDLED_DIR": str(bundled),
        }
        log = open(Path(tmp) / "streamlit.log", "wb")  # noqa: SIM115 (closed below)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(port),
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        sampler = PeakSampler(server.pid)
        try:
            _wait_healthy(url, server)
            idle = tree_rss_bytes(server.pid)
            started = time.perf_counter()
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=str(CHROMIUM),
                    args=["--headless", "--no-sandbox", "--disable-gpu"],
                    headless=True,
                )
                page = browser.new_page(viewport={"width": 1600, "height": 1200})
                page.set_default_timeout(300_000)
                page.goto(f"{url}/predict")
                page.get_by_role("heading", name="Predict & explain", exact=True).wait_for()
                _settle(page)
                models = _choose_every_model(page, available)
                page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(
                    str(image)
                )
                # The upload shown as is, then one overlay per model.
                page.locator("[data-testid=stImage] img").nth(models).wait_for()
                _settle(page)
                errors = page.locator("[data-testid=stException]").count()
                errors += page.locator("[data-testid=stAlertContentError]").count()
                metrics = page.locator("[data-testid=stMetricValue]").count()
                browser.close()
            seconds = time.perf_counter() - started
            time.sleep(1.0)
            settled = tree_rss_bytes(server.pid)
        finally:
            peak = sampler.stop()
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
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
