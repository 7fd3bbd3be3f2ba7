"""End to end in headless Chromium: `streamlit run app.py` on a free port, an upload
predicted and explained, a tiny training launched and its live curve seen growing (every
page at both widths: tests/test_journeys.py). Screenshots go to test-artifacts/.

Uses Debian's /usr/bin/chromium (never a downloaded browser); skipped when it is missing
unless CXR_REQUIRE_BROWSER=1 (CI), then it fails.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from appserver import open_page, settle, shot, streamlit_app
from conftest import SHARED_DATA, run_cli
from PIL import Image

from cxr_core.data.synthetic import radiograph
from cxr_core.errors import UserError
from cxr_core.store.runs import ACTIVE, RunStore

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture
def server(tmp_path, tiny_run_dir, isolated_store):
    """A fresh `streamlit run app.py` with a tmp runs folder and one bundled tiny run."""
    bundled = tmp_path / "bundled"
    shutil.copytree(tiny_run_dir, bundled / "bundled-tiny")
    env = {"CXR_RUNS_DIR": str(isolated_store), "CXR_BUNDLED_DIR": str(bundled)}
    with streamlit_app(env, tmp_path / "streamlit.log") as (url, _):
        yield url


def curve_points(page, run_id: str) -> int:
    """How many points the run's curves hold in the Plotly charts on the page."""
    traces = page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(
            el => (el._fullData || []).map(t => [t.name || '', (t.x || []).length || 0]))"""
    )
    return sum(n for name, n in traces if name.startswith(run_id))


def test_upload_predict_and_explain(browser, server, tmp_path):
    real = sorted((SHARED_DATA / "val" / "PNEUMONIA").glob("*.jpeg"))
    if real:
        image = real[0]
    else:  # no shared data on this machine: a synthetic radiograph still exercises it all
        image = tmp_path / "synthetic.png"
        Image.fromarray(radiograph(np.random.default_rng(0), 256, True)[0]).save(image)
    page = open_page(browser, server, "predict", "Predict & explain")
    page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(str(image))
    page.get_by_text("P(pneumonia)").wait_for()
    # The input and the overlay, or the notice that the map is empty: the two-epoch
    # synthetic run has no evidence to show on some real films (it depends on the CPU's
    # kernels it was trained with).
    overlay = page.locator("[data-testid=stImage] img").nth(1)
    empty = page.get_by_text("gradcam found no evidence for predicted class")
    overlay.or_(empty).wait_for()
    settle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    assert re.search(r"\d+\.\d%", page.locator("[data-testid=stMetricValue]").inner_text())
    caption = page.get_by_text(re.compile(r"^gradcam for predicted class"))
    assert caption.count() + empty.count() == 1
    assert page.locator("[data-testid=stMain]").get_by_text("Not a medical device.").count() == 1
    shot(page, "predict-upload")
    page.close()


def test_launch_training_and_watch_the_curve_grow(browser, server, isolated_store, tmp_path):
    # Compare shows runs on images they share: score the bundled run on the val/ films of
    # the preset's data set, as a user would before comparing (evaluate --save).
    scored = run_cli(
        "evaluate",
        "--run",
        "bundled-tiny",
        "--data",
        "synthetic:100",
        "--split",
        "official_val",
        "--save",
        env={"CXR_BUNDLED_DIR": str(tmp_path / "bundled")},
    )
    assert scored.returncode == 0, scored.stderr
    page = open_page(browser, server, "train", "Train")
    page.locator("[data-testid=stSelectbox]").filter(has_text="Preset").click()
    page.get_by_role("option", name="tiny demo (synthetic)").click()
    page.get_by_role("paragraph").filter(has_text="Training data:").get_by_text(
        "synthetic:100"
    ).wait_for()
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("6")
    epochs.press("Enter")
    settle(page)
    page.get_by_role("button", name=re.compile("Launch run")).click()
    launched = page.get_by_text(re.compile(r"^Launched: ")).inner_text()
    (run_id,) = re.findall(r"\d{8}-\d{6}-small_cnn-[0-9a-f]{4}", launched)
    shot(page, "train-launched")
    page.close()  # closing the tab does not stop the run

    try:
        watch_the_run(browser, server, isolated_store, run_id)
    finally:  # a failed check must not leave a training process behind
        for run in RunStore(isolated_store).list():
            if run.status().get("status") in ACTIVE:
                run.request_cancel()


def watch_the_run(browser, server: str, runs: Path, run_id: str) -> None:
    page = open_page(browser, server, "runs", "Runs")
    counts, deadline = [], time.monotonic() + 400
    while time.monotonic() < deadline:
        try:
            status = RunStore(runs).get(run_id).status()["status"]
        except UserError:  # the training process has not created its folder yet
            status = "starting"
        counts.append(curve_points(page, run_id))
        if status == "running" and len(counts) > 1 and counts[-1] > counts[-2] > 0:
            shot(page, "runs-live")
        if status not in (*ACTIVE, "starting") and page.get_by_text("Final results").count():
            break
        time.sleep(1)
    assert status == "completed", status
    assert page.locator("[data-testid=stException]").count() == 0
    sizes = sorted(set(counts) - {0})
    if len(sizes) < 2:
        shot(page, "runs-no-curve")  # what the page showed instead, for the failure report
    assert len(sizes) >= 2, f"the live curve did not grow on the open page: {counts}"
    settle(page)
    shot(page, "runs-final")
    page.close()

    page = open_page(browser, server, "compare", "Compare")  # the new run beside the bundled one
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    # synthetic films: no published reference beside them, and the page says why
    assert page.get_by_text(re.compile(r"Kermany et al\. 2018")).count() == 0
    assert page.get_by_text(re.compile("not real chest films")).count() == 1
    shot(page, "compare-two-runs")
    # A tab is built when it is opened: the confusion matrices (two per run) come on a click,
    # and the ROC and PR charts of the closed tab are gone.
    page.get_by_role("tab", name="Confusion matrices").click()
    page.locator(".js-plotly-plot").nth(3).wait_for()
    settle(page)
    assert page.locator(".js-plotly-plot").count() == 4
    assert page.locator("[data-testid=stException]").count() == 0
    shot(page, "compare-confusion-matrices")
    page.close()


def test_a_run_started_while_the_runs_page_is_open_joins_its_chart(browser, server, isolated_store):
    """The page is open before the run exists (the first look only sees the bundled run);
    the run joins the chart by itself. The live fragment's own reruns keep the browser's
    value of the picker, so this needs the page's rerun (it failed in CI without)."""
    page = open_page(browser, server, "runs", "Runs")
    settle(page)
    run = RunStore(isolated_store).create({"arch": "small_cnn", "epochs": 2, "img_size": 64})
    try:
        run.set_status("running", phase="training", epoch=1, step=2, steps=4)
        for step in (1, 2):
            run.append_history(
                {"type": "step", "epoch": 1, "step": step, "global_step": step, "loss": 0.7}
            )
        deadline = time.monotonic() + 60
        while curve_points(page, run.id) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        picker = page.locator("[data-testid=stMultiSelect]").filter(has_text="Runs")
        assert picker.locator("[data-tag]").filter(has_text=run.id).count() == 1
        assert curve_points(page, run.id) >= 2
        assert page.locator("[data-testid=stException]").count() == 0
    finally:
        run.set_status("cancelled")
    page.close()
