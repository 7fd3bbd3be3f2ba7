"""Issue 20's browser figures, each printed beside its target: a real ``streamlit run`` over
the bundled runs and copies of three of them under new ids (10 of them on Compare), driven
by Debian's Chromium through Playwright, as a person clicks.

    python -m benchmarks.browser            # about 5 minutes on 2 quiet cores

Each step is timed from the input (a navigation, a click, a key press, an upload) to the
updated view: the element the step shows is visible and the script run is over (no running
indicator, skeleton or spinner). The harness's ``settle`` then waits a further quiet second
before the next step; that second is not counted. Steps whose results Streamlit caches are
timed on their first visit (the honest figure) and, where a person repeats them, again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA, ROOT, machine
from tests.appserver import chromium, run_over, settle, streamlit_app, timed

COPIED = ("small_cnn-scratch-128", "mlp-scratch-64", "efficientnet_lite0-frozen-224")
COMPARED = 10
"""Runs chosen on Compare, as in issue 20's targets."""
LITE0 = "efficientnet_lite0-pretrained-224"
ENSEMBLE = "ensemble-lite0-resnet18-strongaug"
TABS = ("ROC & PR", "Metrics & tests", "Operating point", "Calibration", "Shift",
        "Confusion matrices", "Images", "Learning curves", "Cost")  # fmt: skip
TARGETS = {
    "first page of a fresh server": 3.0,
    "page switch": 1.0,
    "Compare tab": 1.0,
    "threshold slider": 1.0,
    "Predict, one film, one run, Grad-CAM": 0.5,
    "Predict, each further run": 0.3,
    "Predict, ScoreCAM, Lite0 224 px": 1.0,
    "Predict, an ensemble of two": 1.0,
}
CONTENT = ", ".join(
    f"[data-testid={kind}]"
    for kind in ("stPlotlyChart", "stDataFrame", "stImage", "stMetric", "stAlert", "stTable")
)
"""What a Compare tab draws: it is there once the tab's script run has drawn it."""


def films(count: int) -> list[Path]:
    """Real films (the official val/ folder's, then train/'s), a new one for each upload
    so no step is served from another's cache."""
    found = sorted((DATA / "val" / "PNEUMONIA").glob("*.jpeg"))
    found += sorted((DATA / "train" / "PNEUMONIA").glob("*.jpeg"))[:count]
    if len(found) < count:
        raise SystemExit(f"{DATA}: needs {count} films for the Predict steps")
    return found[:count]


def heading(page, name: str):
    return page.get_by_role("heading", name=name, exact=True)


def compare_steps(browser, url: str, runs: list[str], out: dict) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    query = "&".join(f"runs={r}" for r in runs)
    out[f"Compare, {len(runs)} runs, first visit"] = timed(
        page, lambda: page.goto(f"{url}/compare?{query}"), page.get_by_role("tab", name=TABS[0])
    )
    for tab in TABS[1:]:
        # only the open tab is built, on the rerun its click starts: its panel fills then
        drawn = page.locator("[role=tabpanel]:visible").locator(CONTENT).first
        out[f"Compare tab: {tab}"] = timed(
            page, page.get_by_role("tab", name=tab, exact=True).click, drawn
        )
    page.get_by_role("tab", name="Operating point", exact=True).click()
    settle(page)
    thumb = page.get_by_role("slider").first
    value = page.locator("[data-testid=stSliderThumbValue]").first
    moves = []
    for key in ("ArrowRight", "ArrowRight", "ArrowLeft"):
        thumb.focus()
        started = time.perf_counter()
        thumb.press(key)
        # the script run the move starts writes the new threshold into the URL
        page.wait_for_url(f"**threshold={value.inner_text()}**")
        moves.append(run_over(page, value) - started)
        settle(page)
    out["threshold slider (median of 3 moves)"] = sorted(moves)[1]
    page.close()


def navigation_steps(browser, url: str, out: dict) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    run_over(page, heading(page, "CXR Lab"))
    settle(page)
    switches = {}
    for title, name in (
        ("Runs", "Runs"),
        ("Compare", "Compare"),
        ("Data", "Data"),
        ("Predict & explain", "Predict & explain"),
        ("Home", "CXR Lab"),
    ):
        link = page.locator("[data-testid=stSidebarNav]").get_by_text(title, exact=True)
        switches[title] = timed(page, link.click, heading(page, name))
    out |= {f"page switch to {k}": v for k, v in switches.items()}
    page.close()


def predict_steps(browser, url: str, out: dict) -> None:
    shots = iter(films(6))

    def upload(models: list[str], method: str | None = None) -> float:
        query = "&".join(f"models={m}" for m in models) + (f"&method={method}" if method else "")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/predict?{query}")
        run_over(page, heading(page, "Predict & explain"))
        settle(page)
        dropzone = page.locator("[data-testid=stFileUploaderDropzoneInput]")
        overlay = page.get_by_text(f"{method or 'gradcam'} for ", exact=False).nth(len(models) - 1)
        seconds = timed(page, lambda: dropzone.set_input_files(str(next(shots))), overlay)
        page.close()
        return seconds

    upload([LITE0, "small_cnn-scratch-128"])  # first loads and graph exports: not counted
    one = upload([LITE0])
    two = upload([LITE0, "small_cnn-scratch-128"])
    out["Predict, one film, one run, Grad-CAM"] = one
    out["Predict, each further run"] = two - one
    out["Predict, ScoreCAM, Lite0 224 px"] = upload([LITE0], "scorecam")
    upload([ENSEMBLE])  # its members' first load
    out["Predict, an ensemble of two"] = upload([ENSEMBLE])


def target_of(name: str) -> float | None:
    for prefix, target in TARGETS.items():
        if name.startswith(prefix) or (prefix == "Compare tab" and name.startswith("Compare")):
            return target
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-browser-") as tmp:
        runs = Path(tmp) / "runs"
        for run_id in COPIED:
            shutil.copytree(ROOT / "checkpoints" / run_id, runs / f"{run_id}-copy")
        env = {
            "CXR_RUNS_DIR": str(runs),
            "CXR_BUNDLED_DIR": str(ROOT / "checkpoints"),
            "CXR_CACHE_DIR": str(Path(tmp) / "cache"),
            "CXR_SHARED": "0",
        }
        started = time.perf_counter()
        with streamlit_app(env, Path(tmp) / "streamlit.log") as (url, _), chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            out["first page of a fresh server"] = run_over(page, heading(page, "CXR Lab")) - started
            page.close()
            navigation_steps(browser, url, out)
            bundled = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if p.is_dir())
            chosen = (bundled + [f"{r}-copy" for r in COPIED])[:COMPARED]
            compare_steps(browser, url, chosen, out)
            predict_steps(browser, url, out)
    print(f"machine: {json.dumps(machine())}")
    print(f"{'step':58s} {'seconds':>8s} {'target':>7s}")
    for name, seconds in out.items():
        target = target_of(name)
        mark = "" if target is None else ("  met" if seconds <= target else "  missed")
        shown = f"{target:.1f}" if target is not None else "-"
        print(f"{name:58s} {seconds:8.2f} {shown:>7s}{mark}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "seconds": out}, indent=1))


if __name__ == "__main__":
    main()
