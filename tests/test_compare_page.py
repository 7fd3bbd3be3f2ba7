"""The Compare page on real bundled runs (copied under new names into a tmp bundled folder)
through AppTest: intervals and the paired verdict, every tab with 10 runs, the operating
point's slider, calibration kept beside the run, the choice in the URL, scoring a run on a
folder in the background; and in headless Chromium, screenshots with 1, 3 and 10 runs."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from appserver import open_page, settle, shot, streamlit_app
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from cxr_core.analysis import comparison
from cxr_core.errors import UserError
from cxr_core.execution import scoring_jobs
from cxr_core.predict import evalsets
from cxr_core.scoring.metrics import CATALOGUE, choose_threshold, threshold_choice
from cxr_core.scoring.selection import Selection
from cxr_core.store.runs import RunStore
from cxr_core.training.engine import EPOCH_RULE
from pages.common import runview

CHECKPOINTS = ROOT / "checkpoints"
BUNDLED = sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "model.safetensors").exists())[:5]
"""Five bundled runs with weights of their own (an ensemble's copy would lose its members)."""
CI = re.compile(r"^\d+\.\d% \(\d+\.\d-\d+\.\d\)$")
TIMEOUT = 300


def copy_bundled(folder: Path, copies: int) -> list[str]:
    """The bundled runs ``copies`` times under new names, without their weights (the page
    reads records only): 5 runs per copy."""
    ids = []
    for c in range(copies):
        for name in BUNDLED:
            run_id = f"{name}-{c}"
            shutil.copytree(
                CHECKPOINTS / name, folder / run_id, ignore=shutil.ignore_patterns("*.safetensors")
            )
            ids.append(run_id)
    return ids


@pytest.fixture
def ten(tmp_path, monkeypatch) -> list[str]:
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "bundled"))
    return copy_bundled(tmp_path / "bundled", 2)


@pytest.fixture
def five(tmp_path, monkeypatch) -> list[str]:
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "bundled"))
    return copy_bundled(tmp_path / "bundled", 1)


def open_compare(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for name, value in (query or {}).items():
        at.query_params[name] = value
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_tab(at: AppTest, label: str) -> AppTest:
    at.session_state["compare_tab"] = label
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def param(at: AppTest, name: str) -> list[str]:
    """A query parameter's values (AppTest gives a lone value as a string)."""
    value = at.query_params.get(name, [])
    return [value] if isinstance(value, str) else list(value)


def specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_two_runs_every_metric_with_its_interval_and_a_paired_verdict(five):
    at = open_compare()
    chosen = at.multiselect(key="compare_runs").value
    assert len(chosen) == 2
    runs = [RunStore().get(i) for i in chosen]
    shared = evalsets.shared_sets(runs)
    assert at.selectbox(key="compare_set").value == shared[0].key
    assert shared[0].split == "internal_test"  # the bundled runs share no outside test set
    assert any("carved from the training folder" in w.value for w in at.warning)

    summary = at.dataframe[0].value
    headline = ["accuracy", "sensitivity", "specificity", "AUC"]
    # the headline metrics, so the table fits a 1400 px page; every metric on its tab
    assert list(summary.columns) == ["run", *headline, "threshold", "ties on val"]
    assert all(CI.match(v) for v in summary["accuracy"]), summary["accuracy"].tolist()
    assert all(re.match(r"^0\.\d{3} \(0\.\d{3}-[01]\.\d{3}\)$", v) for v in summary["AUC"])
    sets = comparison.sets_on(runs, shared[0].key)
    lo, hi = sets[chosen[0]].ci95()["accuracy"]
    assert summary["accuracy"][0].endswith(f"({100 * lo:.1f}-{100 * hi:.1f})")

    (verdict,) = [i.value for i in at.info if "Paired test" in i.value]
    expected = comparison.paired(sets)[0].verdict
    assert expected in verdict and "McNemar" in verdict
    assert len(at.get("download_button")) == 2  # the CSV table and the HTML report


def test_ten_runs_every_tab(ten):
    at = open_compare()
    next(b for b in at.button if b.label == "All").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert set(at.multiselect(key="compare_runs").value) == set(ten)
    assert len(at.dataframe[0].value) == 10

    (curves,) = specs(at)  # the default tab: ROC and PR side by side
    layout = curves["layout"]
    assert layout["yaxis"]["scaleanchor"] == "x" and layout["yaxis2"]["scaleanchor"] == "x2"
    assert layout["legend"]["orientation"] == "h"  # below, the figure growing with it
    in_legend = [t["name"] for t in curves["data"] if t.get("showlegend", True)]
    assert len(in_legend) == 10 + 2  # a run's ROC and PR share one entry; chance, Kermany
    assert layout["height"] >= 560 + 24 * 6

    open_tab(at, "Metrics & tests")
    (forest,) = specs(at)
    assert len(forest["data"]) == 4 and all(len(t["y"]) == 10 for t in forest["data"])
    auc_range = forest["layout"]["xaxis4"]["range"]
    assert auc_range[0] > 0.8 and auc_range[1] <= 1.01  # fitted, not 0 to 1
    every = at.dataframe[1].value  # every metric, one column per run
    labels = [CATALOGUE[k].label for k in dict.fromkeys([*comparison.HEADLINE, *CATALOGUE])]
    assert list(every["metric"]) == [*labels, "threshold", "ties on val"] and set(
        every.columns[1:]
    ) == set(ten)
    pairs = at.dataframe[2].value
    assert len(pairs) == 45 and "DeLong p (Holm)" in pairs.columns
    (verdicts,) = [m.value for m in at.markdown if m.value.startswith("- **")]
    assert verdicts.count(" vs ") == 45 and "Holm-adjusted" in verdicts  # not a column

    expected = {
        "Operating point": 2,  # confusion matrix and score distributions of one run
        "Calibration": 1,
        "Shift": 1,
        "Confusion matrices": 20,
        "Learning curves": 1,
        "Cost": 1,
    }
    for label, charts in expected.items():
        open_tab(at, label)
        assert len(at.get("plotly_chart")) == charts, label
    (curves,) = specs(open_tab(at, "Learning curves"))
    in_legend = [t["name"] for t in curves["data"] if t.get("showlegend", True)]
    assert len(in_legend) == 10 + 2  # one per run, and the two line styles
    assert curves["layout"]["xaxis"]["title"]["text"] == "epoch"


def test_the_slider_moves_the_operating_point_and_never_the_run(five):
    at = open_tab(open_compare(), "Operating point")
    run_id = at.selectbox(key="compare_focus").value
    run = RunStore().get(run_id)
    recorded = run.evaluation()["threshold"]
    (slider,) = [s for s in at.slider if s.key.startswith("compare_thr_")]
    assert slider.value == pytest.approx(recorded, abs=5e-4)

    def matrix() -> list[list[int]]:
        """The confusion matrix as drawn (its cells' text: z travels as a typed array)."""
        cm = next(s for s in specs(at) if s["data"][0]["type"] == "heatmap")
        return [[int(v) for v in row] for row in cm["data"][0]["text"]]

    before = matrix()
    at.slider(key=slider.key).set_value(0.05).run()
    after = matrix()
    assert after != before
    assert after[1][0] <= before[1][0] and after[0][1] >= before[0][1]  # fewer missed
    assert sum(map(sum, after)) == sum(map(sum, before))
    assert any("Per 1000 children" in m.value and "missed" in m.value for m in at.markdown)

    val = comparison.split_set(run, "val")
    wanted = choose_threshold(val.labels, val.probs, "sensitivity", target_sensitivity=0.95)
    (button,) = [b for b in at.button if b.label.startswith("95% sensitivity on val")]
    button.click().run()
    assert at.slider(key=slider.key).value == pytest.approx(wanted, abs=5e-4)
    assert run.evaluation()["threshold"] == recorded  # the saved run is untouched
    landing = at.dataframe[-1].value
    assert list(landing["threshold"]) == [
        "run's threshold",
        "Youden's plateau centre on val",
        "Youden's J on val",
        "95% sensitivity on val",
        "90% specificity on val",
    ]


def test_temperature_is_fitted_on_val_and_kept_beside_a_bundled_run(five, tmp_path):
    at = open_tab(open_compare(), "Calibration")
    run = RunStore().get(at.selectbox(key="compare_focus").value)
    assert "ECE after" not in at.dataframe[1].value.columns
    next(b for b in at.button if b.label == "Fit a temperature on validation").click().run()
    assert not at.exception, [e.value for e in at.exception]
    saved = run.calibration()
    assert saved["fitted_on"] == comparison.split_set(run, "val").key
    assert run.calibration_file.is_relative_to(RunStore().root)  # not checkpoints/
    assert not list((tmp_path / "bundled").rglob("calibration.json"))
    table = at.dataframe[1].value
    assert table.loc[table["run"] == run.id, "temperature"].item() == pytest.approx(
        saved["temperature"], abs=1e-4
    )
    (diagram,) = specs(at)
    names = [t.get("name", "") for t in diagram["data"]]
    assert "as trained" in names and any("fitted on val" in n for n in names)


def test_the_shift_from_the_internal_split_to_an_outside_set(five):
    at = open_tab(open_compare(), "Shift")
    tables = at.dataframe[1:]
    assert len(tables) == 2  # both runs: internal_test and the official val/ (16 films)
    shift = tables[0].value
    assert list(shift["metric"]) == ["accuracy", "sensitivity", "specificity", "AUC"]
    assert list(shift.columns) == ["metric", "internal split", "outside set", "gap"]
    assert any(c.value.startswith("internal split: internal_test") for c in at.caption)
    assert any(c.value.endswith("outside set: official_val (16 images)") for c in at.caption)
    assert shift.iloc[:, 1].str.match(r"^\d+\.\d+%? \(").all()
    (chart,) = specs(at)
    markers = [t for t in chart["data"] if t.get("mode") == "markers"]
    names = {t["name"] for t in markers}
    assert names == {
        "internal test split: internal_test of the run's split (784 images)",
        "outside set: official_val (16 images)",
    }
    assert len(markers) == 2 * 4 and all(len(t["y"]) == 2 for t in markers)


def test_the_url_restores_runs_set_and_tab(five):
    chosen = [five[3], five[1], five[4]]
    runs = [RunStore().get(i) for i in chosen]
    official = next(s for s in evalsets.shared_sets(runs) if s.split == "official_val")
    at = open_compare({"runs": [*chosen, "no-such-run"], "set": official.key, "tab": "Cost"})
    assert at.multiselect(key="compare_runs").value == chosen
    assert at.selectbox(key="compare_set").value == official.key
    assert at.session_state["compare_tab"] == "Cost"
    assert param(at, "runs") == chosen and param(at, "tab") == ["Cost"]

    open_tab(at, "Shift")
    at.multiselect(key="compare_runs").set_value(chosen[:2]).run()
    assert param(at, "tab") == ["Shift"] and param(at, "runs") == chosen[:2]
    assert param(at, "set") == [official.key]
    at.switch_page("pages/about.py").run()
    at.switch_page("pages/compare.py").run()  # another page and back: the same choice
    assert at.session_state["compare_tab"] == "Shift"
    assert at.multiselect(key="compare_runs").value == chosen[:2]

    fresh = open_compare({"set": "0000deadbeef"})  # a set these runs lack: the default
    assert fresh.selectbox(key="compare_set").value != "0000deadbeef"


def test_the_data_pages_choice_lives_in_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["data"] = "synthetic:30"
    at.switch_page("pages/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["data_spec"] == "synthetic:30"  # a refresh keeps the choice
    at.slider(key="data_synthetic_n").set_value(40).run()
    assert param(at, "data") == ["synthetic:40"]


def test_runs_lacking_a_folder_are_scored_in_the_background(
    tmp_path, monkeypatch, tiny_run_dir, kaggle_tree
):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled"))
    shutil.copytree(tiny_run_dir, RunStore().root / "tiny")
    folder = kaggle_tree(tmp_path / "outside", 6, 8, split="test")
    at = open_compare()
    at.text_input(key="compare_score_folder").set_value(str(folder)).run()
    assert any("not yet scored for tiny" in m.value for m in at.markdown)
    next(b for b in at.button if b.key == "compare_score").click().run()
    assert not at.exception, [e.value for e in at.exception]

    job = scoring_jobs.current(RunStore().root)
    deadline = time.monotonic() + 600
    while not scoring_jobs.progress(job).finished and time.monotonic() < deadline:
        time.sleep(1)
    progress = scoring_jobs.progress(job)
    assert progress.done and not progress.failed, progress
    at.run()  # the progress fragment's end reruns the page in a browser
    wanted = scoring_jobs.target(str(folder), "test")
    assert at.selectbox(key="compare_set").value == wanted.key
    assert any(m.value.startswith("Every chosen run is scored") for m in at.success)
    table = runview.runs_table(RunStore().list())
    assert table.loc[0, "outside set"] == wanted.name


def test_scoring_refuses_a_folder_without_labelled_images(tmp_path):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(UserError, match="no labelled images"):
        scoring_jobs.launch(["any"], str(tmp_path / "empty"), "test", tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # nothing written


# --------------------------------------------------------------------------- in a browser


@pytest.mark.slow
@pytest.mark.browser
def test_compare_in_a_browser_with_1_3_and_10_runs(browser, tmp_path, isolated_store):
    """Runs chosen by a shared link; screenshots in test-artifacts/ to look at."""
    ids = copy_bundled(tmp_path / "bundled", 2)
    env = {"CXR_RUNS_DIR": str(isolated_store), "CXR_BUNDLED_DIR": str(tmp_path / "bundled")}
    with streamlit_app(env, tmp_path / "streamlit.log") as (url, _):
        for count in (1, 3, 10):
            query = "&".join(f"runs={i}" for i in ids[:count])
            page = open_page(browser, url, f"compare?{query}", "Compare")
            page.locator(".js-plotly-plot").first.wait_for()
            settle(page)
            assert page.locator("[data-testid=stException]").count() == 0
            assert page.locator("[data-testid=stMultiSelect] [data-tag]").count() == count
            drawn = page.evaluate(
                "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                ".filter(el => (el._fullData || []).length > 0).length"
            )
            assert drawn == 1  # ROC and PR, side by side
            for plot in page.locator(".js-plotly-plot").first.locator(".nsewdrag").all():
                box = plot.bounding_box()  # each a square of at least 400 px, any legend
                assert box["width"] >= 400 and abs(box["width"] - box["height"]) < 2, box
            shot(page, f"compare-{count}-runs")
            page.close()


def test_all_chooses_the_runs_that_share_images_real_films_first(five, tiny_run_dir):
    """ "All" with the bundled runs and synthetic runs beside them (a sweep's, the tiny demo's)
    chose every run, and the page only said they were never scored on the same images."""
    for name in ("synthetic-a", "synthetic-b"):
        shutil.copytree(tiny_run_dir, RunStore().root / name)
    at = open_compare()
    next(b for b in at.button if b.label == "All").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert set(at.multiselect(key="compare_runs").value) == set(five)
    assert not [w for w in at.warning if "never scored on the same images" in w.value]
    assert len(at.dataframe[0].value) == 5


def test_the_url_restores_the_operating_point_run_and_threshold(five):
    """The operating point's run and threshold reset on a reload: now they are in the URL."""
    chosen = five[:2]
    at = open_compare({"runs": chosen, "tab": "Operating point"})
    at.selectbox(key="compare_focus").set_value(chosen[1]).run()
    (slider,) = [s for s in at.slider if s.label == "Threshold"]
    slider.set_value(0.321).run()
    assert not at.exception
    assert param(at, "focus") == [chosen[1]] and param(at, "threshold") == ["0.321"]

    link = {k: param(at, k) for k in ("runs", "set", "tab", "focus", "threshold")}
    fresh = open_compare(link)  # a reload, or the link copied into another browser
    assert fresh.selectbox(key="compare_focus").value == chosen[1]
    (slider,) = [s for s in fresh.slider if s.label == "Threshold"]
    assert slider.value == pytest.approx(0.321)


def with_plateau(run_id: str) -> tuple[float, float]:
    """Give a copied bundled run's record the plateau its threshold rule has on its stored
    validation scores, as a run evaluated today keeps it; the bounds."""
    run = RunStore().get(run_id)
    evaluation = run.evaluation()
    val = comparison.split_set(run, "val")
    choice = threshold_choice(val.labels, val.probs, evaluation["threshold_method"])
    run.save_evaluation({**evaluation, **choice.record()})
    return choice.low, choice.high


def without_plateau(run_id: str) -> None:
    """A copied bundled run's record as runs evaluated before plateaus were kept have it."""
    run = RunStore().get(run_id)
    evaluation = run.evaluation()
    run.save_evaluation({k: v for k, v in evaluation.items() if not k.startswith("threshold_")})


def test_summary_says_which_thresholds_validation_cannot_tell_apart(five):
    """A record with a plateau shows its bounds in the table and in plain words; one
    written before plateaus were kept loads and shows none."""
    new, old = five[:2]
    low, high = with_plateau(new)
    without_plateau(old)
    at = open_compare({"runs": [new, old]})
    assert at.multiselect(key="compare_runs").value == [new, old]
    summary = at.dataframe[0].value.set_index("run")
    assert summary.loc[new, "ties on val"] == f"{low:.3f} to {high:.3f}"
    assert summary.loc[old, "ties on val"] == ""
    notes = [c.value for c in at.caption if "gives the same validation" in c.value]
    assert notes == [
        f"{new}: any threshold from {low:.3f} to {high:.3f} gives the same validation "
        "Youden's J, within its sampling noise (one standard error)."
    ]


def test_runs_page_final_results_say_the_plateau_and_old_records_say_nothing(five):
    new, old = five[:2]
    low, high = with_plateau(new)
    without_plateau(old)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("pages/runs.py").run()
    at.multiselect(key="runs_selected").set_value([new, old]).run()
    assert not at.exception, [e.value for e in at.exception]
    notes = [c.value for c in at.caption if "gives the same validation" in c.value]
    assert notes == [
        f"Threshold: any threshold from {low:.3f} to {high:.3f} gives the same validation "
        "Youden's J, within its sampling noise (one standard error)."
    ]
    assert sum(new in m.value or old in m.value for m in at.markdown if "threshold" in m.value) == 2


def test_runs_page_says_when_validation_could_not_choose_the_epoch(five):
    run = RunStore().get(five[0])
    choice = Selection("epoch 9", "epoch 4", "epoch 4", 0.0003, (-0.001, 0.002), 0.41, EPOCH_RULE)
    run.save_evaluation({**run.evaluation(), "epoch_choice": choice.to_dict()})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("pages/runs.py").run()
    at.multiselect(key="runs_selected").set_value(five[:2]).run()
    assert not at.exception, [e.value for e in at.exception]
    said = [c.value for c in at.caption if "Validation cannot tell" in c.value]
    assert said == [
        "Best epoch: Validation cannot tell epoch 9 from epoch 4 (AUC difference 0.0003, 95% CI "
        "-0.0010 to 0.0020, p = 0.41); by the rule declared in advance (the shorter-trained "
        "one: the earlier epoch), epoch 4 is chosen."
    ]
