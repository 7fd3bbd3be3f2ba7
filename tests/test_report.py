"""The shared report: ``python -m cxr_core report --runs A B ... --out report.html`` writes
one HTML file that opens offline with every chart drawn, and says what the comparison
says (intervals, paired tests, operating points, calibration, the shift, versions)."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from appserver import ARTIFACTS
from conftest import ROOT, run_cli

from cxr_core.analysis import comparison, html_report, run_calibration
from cxr_core.errors import UserError
from cxr_core.execution.scoring_jobs import target
from cxr_core.predict import ensembles, evalsets
from cxr_core.store.runs import Run, RunStore

CHECKPOINTS = ROOT / "checkpoints"
THREE = ["efficientnet_lite0-frozen-224", "mlp-scratch-64", "small_cnn-scratch-128"]


@pytest.fixture
def three(tmp_path, monkeypatch) -> list[str]:
    """Three bundled runs (records only: a report without --data loads no weights)."""
    folder = tmp_path / "bundled"
    for name in THREE:
        shutil.copytree(
            CHECKPOINTS / name, folder / name, ignore=shutil.ignore_patterns("*.safetensors")
        )
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(folder))
    return THREE


def figures_in(text: str) -> int:
    return len(re.findall(r'<div id="figure-\d+"', text))


def test_the_cli_report_says_it_all_in_one_file(three, tmp_path):
    out = tmp_path / "shared" / "report.html"
    done = run_cli("report", "--runs", *three, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    text = out.read_text()
    runs = [RunStore().get(i) for i in three]
    compared = evalsets.shared_sets(runs)[0]
    assert compared.key in text and compared.split == "internal_test"
    assert "carved from the training folder" in text
    for run_id in three:
        assert run_id in text
    lo, hi = compared.ci95()["accuracy"]
    assert f"({100 * lo:.1f}-{100 * hi:.1f})" in text  # the first run's interval
    assert "Holm-adjusted p" in text  # the verdicts of the three pairs
    assert "Youden&#x27;s J on val" in text or "Youden's J on val" in text
    assert "ECE" in text and "Brier" in text and "The shift" in text
    assert "torch" in text and "scikit-learn" in text  # versions
    assert text.count("* plotly.js v") == 1  # the library embedded once
    assert not re.search(r"<script[^>]+src=", text)  # nothing to fetch
    # forest, ROC & PR, a confusion matrix per run, reliability, the shift, learning curves
    assert figures_in(text) == len(three) + 5


def test_the_report_opens_offline_with_every_chart_drawn(three, tmp_path, browser):
    out = tmp_path / "report.html"
    runs = [RunStore().get(i) for i in three]
    sets = comparison.sets_on(runs, evalsets.shared_sets(runs)[0].key)
    text = html_report.write_report(runs, sets, out).read_text()
    context = browser.new_context(offline=True, viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    drawn = page.evaluate(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".filter(el => (el._fullData || []).length > 0 && el.querySelector('svg')).length"
    )
    assert drawn == figures_in(text) == len(three) + 5
    assert all(url.startswith("file:") for url in requests), requests
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    context.close()


def test_a_report_on_a_folder_scores_every_run_on_it(
    tmp_path, monkeypatch, tiny_run_dir, kaggle_tree
):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled"))
    for name in ("tiny", "tiny-2"):
        shutil.copytree(tiny_run_dir, RunStore().root / name)
    folder = kaggle_tree(tmp_path / "outside", 5, 7, split="test")
    out = tmp_path / "report.html"
    done = run_cli("report", "--runs", "tiny", "tiny-2", "--data", str(folder), "--out", str(out))
    assert done.returncode == 0, done.stderr
    wanted = target(str(folder), "test")
    text = out.read_text()
    assert wanted.key in text and f"test/ of {folder}" in text
    assert "no evidence of a difference" in text  # the same weights twice


def test_report_mistakes_are_one_line_and_write_nothing(three, tmp_path):
    done = run_cli("report", "--out", str(tmp_path / "r.html"))
    assert done.returncode == 2 and "--runs" in done.stderr
    done = run_cli("report", "--runs", THREE[0])
    assert done.returncode == 2 and "needs --out" in done.stderr
    done = run_cli("report", "--runs", THREE[0], THREE[0], "--out", str(tmp_path / "r.html"))
    assert done.returncode == 2 and "name each run once" in done.stderr
    assert not (tmp_path / "r.html").exists()

    runs = [RunStore().get(i) for i in three]
    shared = evalsets.shared_sets(runs)
    mixed = {
        runs[0].id: shared[0],
        runs[1].id: comparison.sets_on(runs[1:2], shared[1].key)[runs[1].id],
    }
    with pytest.raises(UserError, match="same images"):
        html_report.html_report(runs[:2], mixed)
    with pytest.raises(UserError, match="is a folder"):
        html_report.write_report(runs, comparison.sets_on(runs, shared[0].key), tmp_path)


def test_operating_points_and_calibration_come_from_validation(three):
    run = RunStore().get(three[0])
    compared = comparison.split_set(run, "internal_test")
    points = comparison.operating_points(run, compared)
    assert points["threshold"].iloc[0] == "run's threshold"
    assert points["value"].iloc[0] == pytest.approx(run.evaluation()["threshold"], abs=1e-4)
    point = comparison.operating_point(compared, 0.5)
    (_, fp), (fn, tp) = point["confusion"]
    assert point["missed_per_1000"] == pytest.approx(1000 * fn / compared.n)
    assert point["false_alarms_per_1000"] == pytest.approx(1000 * fp / compared.n)
    assert point["sensitivity"] == pytest.approx(tp / (tp + fn))

    saved = run_calibration.fit_temperature(run)
    assert saved["fitted_on"] == comparison.split_set(run, "val").key
    assert run.calibration_file.is_relative_to(RunStore().root)
    assert not (CHECKPOINTS / run.id / "calibration.json").exists()
    summary = run_calibration.calibration_summary(compared, saved["temperature"])
    assert summary["after"]["brier"] != summary["before"]["brier"]
    assert sum(b["count"] for b in summary["before"]["bins"]) == compared.n


def test_a_run_without_validation_scores_gets_no_temperature(tmp_path):
    from cxr_core.store.runs import Run

    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no validation scores"):
        run_calibration.fit_temperature(Run(folder))
    assert not Path(folder / "calibration.json").exists()


def test_the_report_builds_for_every_kind_of_run(tmp_path, monkeypatch, tiny_run_dir):
    """A trained run, a bundled one, an ensemble made in the app (no command: the Download
    report button did nothing for it), a sweep point and a quantized run, in one report."""
    bundled = tmp_path / "bundled"
    shutil.copytree(tiny_run_dir, bundled / "bundled-tiny")
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(bundled))
    store = RunStore(tmp_path / "runs")
    for name in ("trained", "point", "quantized"):
        shutil.copytree(tiny_run_dir, store.root / name)
    point = store.get("point")
    point.save_config({**point.config(), "command": None, "sweep": {"id": "s", "seed": 0}})
    result = run_cli("--runs-dir", str(store.root), "quantize", "quantized", "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    made = ensembles.create(store, ["trained", "bundled-tiny"], owner="someone")
    assert made.config().get("command") is None
    runs = [store.get(r) for r in ("trained", "bundled-tiny", made.id, "point", "quantized")]
    shared = evalsets.shared_sets(runs)
    assert shared, "copies of one run share its validation split"
    text = html_report.html_report(runs, comparison.sets_on(runs, shared[0].key))
    assert all(f"<h3>{run.id}</h3>" in text for run in runs)
    assert text.count("Made in the app (no command line).") == 2  # the ensemble, the point
    assert "quantize quantized" in text


def test_the_published_reference_is_drawn_on_real_films_only(three, tiny_run_dir):
    """Kermany et al.'s point belongs beside runs scored on real chest films (a bundled run's
    internal split, whose folder need not be on this machine), never on the synthetic set."""
    real = RunStore().get(three[0])
    internal = next(s for s in evalsets.run_sets(real).values() if s.split == "internal_test")
    assert comparison.shows_reference(internal)
    synthetic = next(iter(evalsets.run_sets(Run(tiny_run_dir)).values()))
    assert not comparison.shows_reference(synthetic)
    assert not comparison.shows_reference(replace(synthetic, root=None))  # by its files' names
    text = html_report.html_report([real], {real.id: internal})
    assert "Kermany et al. 2018" in text
