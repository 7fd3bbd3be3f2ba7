"""User journeys in a real browser: one `streamlit run app.py` for the module, over the
bundled runs in checkpoints/ and a tiny synthetic run, in Debian's Chromium. Each journey
crosses pages and checks what a person sees (appserver.problems: no exception box, no
"nan" or "None", no text cut off, at 1400 px no table wider than its container), at
800 px and 1400 px, after a reload or in a fresh tab on the same link. Full-page
screenshots go to test-artifacts/journey-*.png.

The journeys of issue 19: (b) Compare -> score on a test-only folder -> Shift ->
Operating point (URL, reload) -> Make an ensemble -> Download report, opened offline;
(c) Predict with two runs and an ensemble, every CAM method, a hostile file and the input
guard; (d) every preset after every other, then a sweep launched (e) and "Compare the
best", while Predict keeps its choice; (f, g) every page at both widths, reloaded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from appserver import (
    ARTIFACTS,
    WIDTHS,
    open_page,
    problems,
    settle,
    shot,
    streamlit_app,
    timed,
    view,
)
from conftest import ROOT, SHARED_DATA, wait_until
from PIL import Image

from cxr_core.data.synthetic import radiograph
from cxr_core.execution.sweeps import SWEEP_KEY
from cxr_core.predict.inference import CAM_METHODS
from cxr_core.store.runs import ACTIVE, RunStore
from cxr_core.training.presets import PRESETS

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SMALL, MLP, ENSEMBLE = (
    "small_cnn-scratch-128",
    "mlp-scratch-64",
    "ensemble-lite0-resnet18-strongaug",
)
COMPARED = f"runs={SMALL}&runs={MLP}&runs=resnet18-strongaug-128-s0"
PAGES = {
    "": "CXR Lab",
    "data": "Data",
    "train": "Train",
    "runs": "Runs",
    "sweeps": "Sweeps",
    f"compare?{COMPARED}&tab=Metrics+%26+tests": "Compare",
    f"compare?{COMPARED}&tab=Operating+point": "Compare",
    f"predict?models={SMALL}&models=tiny": "Predict & explain",
    "lesson": "A lesson on distribution shift",
    "about": "About CXR Lab",
}
"""Every page (Compare on its widest tabs), each with the choice its link carries."""


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_run_dir):
    """The app over the bundled runs and a runs folder holding the tiny run: its URL and
    the runs folder."""
    runs = tmp_path_factory.mktemp("journey-runs")
    shutil.copytree(tiny_run_dir, runs / "tiny")
    env = {
        "CXR_RUNS_DIR": str(runs),
        "CXR_BUNDLED_DIR": str(ROOT / "checkpoints"),
        "CXR_CACHE_DIR": str(tmp_path_factory.mktemp("journey-cache")),
        "CXR_SHARED": "0",
    }
    with streamlit_app(env, runs.parent / "journey-streamlit.log") as (url, _):
        yield url, runs
    for run in RunStore(runs).list():  # a failed journey leaves no training behind
        if run.status().get("status") in ACTIVE:
            run.request_cancel()


def _name(path: str) -> str:
    page, _, query = path.partition("?")
    tab = re.search(r"tab=([A-Za-z]+)", query)
    return (page or "home") + (f"-{tab.group(1).lower()}" if tab else "")


def _clean(page, where: str, tables: bool = True) -> None:
    found = problems(page, tables)
    if found:
        shot(page, f"journey-problem-{where}")
    assert found == [], where


def _sidebar(page, title: str, heading: str) -> None:
    """Go to another page as a person does, in the same session (not a new link)."""
    page.locator("[data-testid=stSidebarNav]").get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=heading, exact=True).wait_for()
    settle(page)


def _choose(page, label: str, option: str) -> None:
    page.locator("[data-testid=stSelectbox]").filter(has_text=label).click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def _chosen(page, label: str) -> list[str]:
    """The run ids a runs multiselect holds (its tags read "<id> (<tags>)")."""
    picker = page.locator("[data-testid=stMultiSelect]").filter(has_text=label)
    tags = [t.get_attribute("aria-label") for t in picker.locator("[data-tag]").all()]
    return [t.split(" (")[0] for t in tags]


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_at_its_width_then_reloaded(browser, app, width):
    """(f, g) Each page as its link opens it, then reloaded: the same view (URL, headings,
    choices, open tab) and nothing a person should not see."""
    url, _ = app
    found = {}
    for path, title in PAGES.items():
        where = f"{_name(path)}-{width}"
        page = open_page(browser, url, path, title, width)
        found[where] = problems(page, tables=width >= 1400)
        before = view(page)
        shot(page, f"journey-g-{where}")
        page.reload()
        page.get_by_role("heading", name=title, exact=True).wait_for()
        settle(page)
        if view(page) != before:
            found[where].append(f"reloaded: {view(page)} instead of {before}")
        found[where] += problems(page, tables=width >= 1400)
        page.close()
    assert {k: v for k, v in found.items() if v} == {}


def _test_only_folder(root: Path, per_class: int = 6) -> Path:
    """A folder holding only test/NORMAL and test/PNEUMONIA (drawn films, plain names:
    not the Kermany set, so no published reference is drawn beside it)."""
    rng = np.random.default_rng(19)
    for label, name in ((False, "NORMAL"), (True, "PNEUMONIA")):
        (root / "test" / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(radiograph(rng, 160, label)[0]).save(root / "test" / name / f"{i}.png")
    return root


def test_compare_score_shift_operating_point_ensemble_and_report(browser, app, tmp_path):
    """(b) Two bundled runs scored on a test-only folder from the page, the Shift tab on
    it, an operating point kept by the URL through a reload, an ensemble made of the two,
    and the report downloaded and opened offline."""
    url, _ = app
    folder = _test_only_folder(tmp_path / "outside")
    page = open_page(browser, url, f"compare?runs={SMALL}&runs={MLP}", "Compare")
    folder_input = page.get_by_label("Folder", exact=True)
    folder_input.fill(str(folder))
    folder_input.press("Enter")
    settle(page)
    page.get_by_role("button", name=re.compile(r"^Score 2 run")).click()
    # said in the expander, which closes once the runs are compared on the outside set
    page.get_by_text(re.compile("^Every chosen run is scored on")).wait_for(state="attached")
    settle(page)
    assert page.get_by_text(re.compile(r"^On test/ of .*outside")).count() == 1  # compared on it
    _clean(page, "b-scored")
    shot(page, "journey-b-scored")

    page.get_by_role("tab", name="Shift").click()
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    _clean(page, "b-shift")
    shot(page, "journey-b-shift")

    page.get_by_role("tab", name="Operating point").click()
    page.get_by_role("button", name=re.compile(r" on val \(")).first.click()
    settle(page)
    shown = page.locator("[data-testid=stSliderThumbValue]")
    value = shown.inner_text()
    wait_until(lambda: f"threshold={value}" in page.url, 30, "the threshold in the URL")
    page.reload()
    shown.wait_for()
    settle(page)
    assert shown.inner_text() == value
    assert page.get_by_role("tab", name="Operating point").get_attribute("aria-selected") == "true"
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        settle(page)
        _clean(page, f"b-operating-point-{width}", tables=width >= 1400)
        shot(page, f"journey-b-operating-point-{width}")

    page.get_by_role("button", name="Make an ensemble of these runs").click()
    page.get_by_text(re.compile(r"^Made the ensemble")).wait_for()
    settle(page)
    assert len(_chosen(page, "Runs")) == 3
    _clean(page, "b-ensemble")

    with page.expect_download() as download:
        page.get_by_role("button", name="Download report").click()
    report = ARTIFACTS / "journey-b-report.html"
    download.value.save_as(report)
    page.close()
    offline = browser.new_context(offline=True)
    failed = []
    opened = offline.new_page()
    opened.on("requestfailed", lambda request: failed.append(request.url))
    opened.goto(report.as_uri())
    assert opened.get_by_role("heading", name="Paired tests").count() == 1
    assert failed == []  # everything it shows is inside the file
    opened.screenshot(path=str(ARTIFACTS / "journey-b-report.png"), full_page=True)
    offline.close()


def _film(tmp_path: Path) -> Path:
    real = sorted((SHARED_DATA / "val" / "PNEUMONIA").glob("*.jpeg"))
    if real:
        return real[0]
    image = tmp_path / "film.png"  # no shared data here: a drawn film exercises it all
    Image.fromarray(radiograph(np.random.default_rng(0), 256, True)[0]).save(image)
    return image


def test_predict_two_runs_and_an_ensemble_every_cam_method_and_the_guard(browser, app, tmp_path):
    """(c) A film through two runs and an ensemble with every CAM method, then a file that
    is no image and a uniform grey picture beside it: one line for the first, the input
    guard's warning for the second."""
    url, _ = app
    models = f"models={SMALL}&models={MLP}&models={ENSEMBLE}"
    page = open_page(browser, url, f"predict?{models}", "Predict & explain", 1400)
    assert _chosen(page, "Models") == [SMALL, MLP, ENSEMBLE]
    upload = page.locator("[data-testid=stFileUploaderDropzoneInput]")
    upload.set_input_files(str(_film(tmp_path)))
    wait_until(lambda: page.get_by_text("P(pneumonia)").count() == 3, 300, "three predictions")
    settle(page)
    timings = {}  # input -> updated view, the measure the browser benchmark takes
    for method in CAM_METHODS:
        page.locator("[data-testid=stSelectbox]").filter(has_text="Explanation method").click()
        # each map's caption, or the line saying the method found no evidence
        caption = page.get_by_text(re.compile(f"^{re.escape(method)} (for|found no) ")).first
        option = page.get_by_role("option", name=method, exact=True)
        timings[method] = timed(page, option.click, caption)
        _clean(page, f"c-{method}")
        shot(page, f"journey-c-{method}")

    (ARTIFACTS / "journey-c-cam-seconds.json").write_text(json.dumps(timings, indent=1))

    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((512, 512), 128, np.uint8)).save(grey)
    broken = tmp_path / "notes.png"
    broken.write_text("not an image")
    upload.set_input_files([str(grey), str(broken)])
    page.get_by_text(re.compile("does not look like a chest radiograph")).first.wait_for()
    settle(page)
    errors = page.locator("[data-testid=stAlertContentError]").all_inner_texts()
    # one line naming the file (after the alert's icon name), no traceback
    lines = [[t for t in e.splitlines() if t.strip() and t.strip() != "error"] for e in errors]
    assert [
        [t[: len("notes.png: not an image")] for t in e] for e in lines if "notes.png" in str(e)
    ] == [["notes.png: not an image"]], errors
    _clean(page, "c-guard")
    shot(page, "journey-c-guard")
    page.close()


def test_presets_then_a_sweep_then_compare_the_best_while_predict_keeps_its_choice(browser, app):
    """(d, e) Every preset after every other on the Train page, then a two-point sweep of
    the tiny demo launched there; when it ends, "Compare the best" on Sweeps. Predict's
    choice, made before, is still there afterwards, in the same tab (across pages) and in
    a second tab left open on Predict, and in a new session on the tab's link (issue 19:
    it was replaced by the newest run, a sweep point)."""
    url, runs = app
    chosen = [MLP, SMALL]
    page = open_page(browser, url, f"predict?models={MLP}&models={SMALL}", "Predict & explain")
    beside = open_page(browser, url, f"predict?models={MLP}&models={SMALL}", "Predict & explain")
    assert _chosen(page, "Models") == _chosen(beside, "Models") == chosen

    _sidebar(page, "Train", "Train")
    names = list(PRESETS)
    for first in names:
        for second in [n for n in names if n != first] + [first]:
            _choose(page, "Preset", first)
            _choose(page, "Preset", second)
            _clean(page, f"d-{first}-then-{second}")
    _choose(page, "Preset", "tiny demo (synthetic)")
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("2")
    epochs.press("Enter")
    settle(page)
    page.get_by_text("Sweep: a grid of settings × seeds").click()
    for label, value in (("Learning rate: values", "0.001,0.003"), ("Seeds", "0")):
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Enter")
        settle(page)
    page.get_by_role("button", name="Launch sweep (2 runs)").click()
    page.get_by_text(re.compile(r"^Launched sweep")).wait_for()
    shot(page, "journey-e-launched")

    fresh = open_page(browser, url, page.url.removeprefix(url + "/"), "Train")  # same link
    assert fresh.get_by_text(re.compile("^Launched")).count() == 0  # no stale message
    _clean(fresh, "e-train-fresh")
    fresh.close()

    def ended() -> bool:
        points = [r for r in RunStore(runs).list() if r.config().get(SWEEP_KEY)]
        return len(points) == 2 and all(r.status()["status"] not in ACTIVE for r in points)

    wait_until(ended, 900, "the sweep's two runs to end", poll=2)
    _sidebar(page, "Sweeps", "Sweeps")
    page.get_by_role("button", name=re.compile(r"^Compare the best")).click()
    page.get_by_role("heading", name="Compare", exact=True).wait_for()
    settle(page)
    _clean(page, "e-compare-best")
    shot(page, "journey-e-compare-best")

    _sidebar(page, "Predict & explain", "Predict & explain")
    assert _chosen(page, "Models") == chosen
    # A tab whose session ended (a reload; a background tab reconnecting after the server
    # let its session go during a long sweep) starts from its link, not from the default,
    # the newest run, which is now a sweep point.
    again = open_page(browser, url, page.url.removeprefix(url + "/"), "Predict & explain")
    assert _chosen(again, "Models") == chosen
    again.close()
    # The tab left open reruns on its next input, with the sweep's runs now on offer.
    _choose(beside, "Explanation method", "layercam")
    assert _chosen(beside, "Models") == chosen
    _clean(beside, "e-predict-beside")
    shot(beside, "journey-e-predict-kept")
    for tab in (page, beside):
        tab.close()
