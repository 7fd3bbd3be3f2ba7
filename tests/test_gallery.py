"""Errors image by image in the app: the views of pages/views/mistakes.py through AppTest (a
confusion cell's gallery with CAMs on demand, the per-image table, the images two runs
disagree on), the lesson on distribution shift with and without an outside set, and in
headless Chromium a click on a confusion-matrix cell, screenshot in test-artifacts/."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from appserver import open_page, settle, shot, streamlit_app
from streamlit.testing.v1 import AppTest

from cxr_core.analysis import mistakes
from cxr_core.data.synthetic import make_synthetic_dataset
from cxr_core.predict import evalsets
from cxr_core.predict.inference import load_model
from cxr_core.scoring import stats
from cxr_core.scoring.metrics import confusion
from cxr_core.store.runs import RunStore
from pages.common import gallery

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180


@pytest.fixture
def runs(isolated_store, tiny_run_dir, tmp_path, monkeypatch) -> RunStore:
    """Two copies of the tiny run in this test's store, no bundled runs."""
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled-runs"))
    for name in ("tiny", "tiny2"):
        shutil.copytree(tiny_run_dir, isolated_store / name)
    return RunStore()


def _outside_set(run, folder: Path, per_class: int = 12) -> evalsets.EvalSet:
    """The run scored on synthetic films it never saw (another seed), kept as a test/ set."""
    make_synthetic_dataset(folder, per_class=per_class, size=96, seed=7)
    (folder / "train").rename(folder / "test")
    evalset = evalsets.score_folder(load_model(run.path), folder, "test")
    evalsets.save(run, evalset)
    return evalset


def _internal(run) -> evalsets.EvalSet:
    return next(s for s in evalsets.run_sets(run).values() if s.split == "internal_test")


def _view(
    view: str,
    run_id: str,
    split: str = "internal_test",
    other_id: str | None = None,
    threshold: float | None = None,
):
    """A script that shows one view for the run's set of ``split`` (AppTest runs it)."""
    from cxr_core.predict.evalsets import run_sets
    from cxr_core.store.runs import RunStore
    from pages.views import mistakes

    store = RunStore()
    run = store.get(run_id)
    evalset = next(s for s in run_sets(run).values() if s.split == split)
    if view == "disagreements":
        import dataclasses

        other = store.get(other_id)
        mistakes.disagreements(
            run, evalset, other, dataclasses.replace(evalset, threshold=threshold)
        )
    else:
        getattr(mistakes, view)(run, evalset)


def _app(*args) -> AppTest:
    at = AppTest.from_function(_view, args=args, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _counts(evalset) -> dict[str, int]:
    """Images per confusion cell, in the views' order (the mistakes first)."""
    (tn, fp), (fn, tp) = confusion(evalset.labels, evalset.probs, evalset.threshold)
    counts = {"TN": tn, "FP": fp, "FN": fn, "TP": tp}
    return {cell: counts[cell] for cell in gallery.CELLS}


def _bars(at: AppTest) -> list[str]:
    return [h.proto.body for h in at.get("html") if "threshold" in h.proto.body]


def test_a_confusion_cell_opens_its_gallery_with_cams_on_demand(runs, tmp_path):
    outside = _outside_set(runs.get("tiny"), tmp_path / "outside", per_class=24)
    counts = _counts(outside)
    at = _app("confusion_gallery", "tiny", "test")
    assert at.radio[0].value == next(c for c, n in counts.items() if n)  # mistakes first
    for name in ("TP", "TN"):  # the big cells: a page of images and a button for more
        at.radio[0].set_value(name).run()
        assert not at.exception
        plain = gallery.CELLS[name][2]
        assert any(m.value.startswith(f"**{counts[name]} {plain}**") for m in at.markdown)
        shown = min(counts[name], 8)
        assert len(at.image) == shown and len(at.toggle) == shown
        assert len(_bars(at)) == shown
        assert f"left:{100 * outside.threshold:.2f}%" in _bars(at)[0]  # the threshold tick
    assert counts["TN"] > 8, "the tiny run should call more normals normal than a page holds"
    more = next(b for b in at.button if b.label.startswith("Show"))
    more.click().run()
    assert len(at.image) == min(counts["TN"], 16)
    before = at.image[0].proto.imgs[0].url
    at.toggle[0].set_value(True).run()  # the first image's CAM
    assert not at.exception
    assert at.image[0].proto.imgs[0].url != before  # the overlay replaced the film
    assert sum("relevance, scaled per image" in h.proto.body for h in at.get("html")) == 1


def test_a_gallery_whose_images_are_gone_lists_them(runs, tmp_path):
    folder = tmp_path / "moved"
    outside = _outside_set(runs.get("tiny"), folder)
    shutil.rmtree(folder)  # the data folder moved, or the set was scored on another machine
    at = _app("confusion_gallery", "tiny", "test")
    (warning,) = at.warning
    assert warning.value.startswith("The images cannot be shown: ") and "not found" in warning.value
    cell = at.radio[0].value
    assert len(at.dataframe[0].value) == _counts(outside)[cell] and not at.image


def test_the_per_image_table_filters_mistakes(runs):
    evalset = _internal(runs.get("tiny"))
    counts = _counts(evalset)
    at = _app("per_image_table", "tiny")
    assert len(at.dataframe[0].value) == evalset.n
    at.radio[0].set_value("mistakes").run()
    table = at.dataframe[0].value
    assert len(table) == counts["FP"] + counts["FN"]
    assert not table["correct"].any()
    assert list(table["confidence"]) == sorted(table["confidence"], reverse=True)
    at.radio[0].set_value("all").run()
    at.multiselect[0].set_value(["TP"]).run()
    assert len(at.dataframe[0].value) == counts["TP"]


def test_disagreements_show_both_cams_and_mcnemar_counts(runs):
    evalset = _internal(runs.get("tiny"))
    # The same images at another threshold: the films between the two are discordant.
    threshold = float(np.median(evalset.probs))
    other = dataclasses.replace(evalset, threshold=threshold)
    test = stats.mcnemar_exact(*mistakes.paired_correct(evalset, other))
    assert test["n01"] + test["n10"] > 0
    at = _app("disagreements", "tiny", "internal_test", "tiny2", threshold)
    summary = next(m.value for m in at.markdown if "McNemar" in m.value)
    assert f"**{test['n10']}** images tiny gets right" in summary
    assert f"**{test['n01']}** the other way round" in summary
    side = "A" if test["n10"] else "B"
    at.radio[0].set_value(side).run()
    assert not at.exception
    pairs = min(test["n10"] if side == "A" else test["n01"], 4)
    assert len(at.image) == 2 * pairs  # each film with both runs' CAMs
    assert len(_bars(at)) == 2 * pairs


# --------------------------------------------------------------------------- the lesson


def _lesson() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("pages/lesson.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_lesson_without_an_outside_set_says_how_to_get_one(runs):
    at = _lesson()
    assert at.title[0].value == "A lesson on distribution shift"
    (info,) = at.info
    assert "evaluate --run tiny" in info.value and "--save" in info.value
    assert not at.get("plotly_chart") and not at.subheader


def test_lesson_with_an_outside_set(runs, tmp_path):
    run = runs.get("tiny2")
    outside = _outside_set(run, tmp_path / "other-hospital")
    at = _lesson()
    assert at.selectbox(key="lesson_run").value == "tiny2"  # the run that has one
    assert [s.value for s in at.subheader][:5] == [
        "1. The same model, two sets of films",
        "2. The ranking survives; the threshold does not",
        "3. The normal films it now calls pneumonia",
        "4. What to do about it",
        "5. Adapting to the site without its labels",
    ]
    assert any("shift --run tiny2" in m.value for m in at.markdown)
    specificity = f"{outside.metrics()['specificity']:.0%}"
    assert any(f"to **{specificity}**" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table.columns) == ["metric", "internal split", "outside set", "gap"]
    said = "".join(m.value for m in at.markdown)  # the sets are named in the text above
    assert f"**{_internal(run).name}**" in said and f"**{outside.name}**" in said
    assert list(table["metric"]) == ["accuracy", "sensitivity", "specificity", "AUC"]
    counts = _counts(outside)
    first = next(c for c, n in counts.items() if n)
    plain = gallery.CELLS[first][2]
    assert any(m.value.startswith(f"**{counts[first]} {plain}**") for m in at.markdown)
    assert len(at.get("plotly_chart")) == 3  # ROC, the normal films' scores, the matrix


# --------------------------------------------------------------------------- browser


@pytest.mark.slow
@pytest.mark.browser
def test_click_a_cell_in_the_browser(browser, tmp_path, tiny_run_dir, isolated_store, monkeypatch):
    bundled = tmp_path / "bundled"
    shutil.copytree(tiny_run_dir, bundled / "bundled-tiny")
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(bundled))
    outside = _outside_set(RunStore().get("bundled-tiny"), tmp_path / "other-hospital")
    counts = _counts(outside)
    env = {"CXR_RUNS_DIR": str(isolated_store), "CXR_BUNDLED_DIR": str(bundled)}
    with streamlit_app(env, tmp_path / "streamlit.log") as (url, _):
        page = open_page(browser, url, "lesson", "A lesson on distribution shift")
        chart = page.locator(".js-plotly-plot").filter(has_text="click a cell to see its images")
        chart.scroll_into_view_if_needed()
        target = max(counts, key=counts.get)  # the fullest cell, whatever is picked first
        box = chart.locator(".scatterlayer .point").nth(list(gallery.CELLS).index(target))
        box = box.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        plain = gallery.CELLS[target][2]
        page.get_by_text(re.compile(rf"^{counts[target]} {plain}$")).wait_for()
        settle(page)
        page.get_by_text("CAM", exact=True).first.click()
        page.get_by_text("relevance, scaled per image").wait_for()
        settle(page)
        assert page.locator("[data-testid=stException]").count() == 0
        shot(page, "gallery-confusion-cell")
        page.close()


def test_the_shift_puts_every_run_on_one_outside_set(runs, tmp_path, tiny_run_dir):
    """While runs were being scored on an outside folder, the Shift tab drew the ones not
    scored yet against the 16 official val films under the same 'outside set' label."""
    from cxr_core.analysis import comparison

    shutil.copytree(tiny_run_dir, runs.root / "tiny3")
    scored = [runs.get("tiny"), runs.get("tiny2")]
    folder = tmp_path / "outside"
    outside = _outside_set(scored[0], folder)
    evalsets.save(scored[1], evalsets.score_folder(load_model(scored[1].path), folder, "test"))
    chosen = [*scored, runs.get("tiny3")]  # tiny3 has only its official val/ films outside
    for compared in (_internal(scored[0]), outside):
        assert comparison.shift_key(chosen, compared) == outside.key
        frames = comparison.shifts(chosen, compared)
        assert set(frames) == {"tiny", "tiny2"}
        for frame in frames.values():
            assert set(frame.query("where == 'outside'")["name"]) == {outside.name}
