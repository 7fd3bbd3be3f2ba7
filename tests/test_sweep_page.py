"""The Sweeps page (AppTest): grid points with the validation metric as mean +- sd over
seeds, a heat map for a two-dimensional grid, the best point chosen on validation, the
best points sent to Compare; and a sweep launched from the Train page through the local
executor, owned by the session, then shown on the Sweeps page."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxr_core.execution.sweeps import (
    SWEEP_KEY,
    choose_point,
    describe,
    summarize,
    sweep_jobs,
    sweep_runs,
)
from cxr_core.scoring.metrics import full_report
from cxr_core.store.runs import ACTIVE, RunStore
from cxr_core.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "checkpoints" / "small_cnn-scratch-128" / "evaluation.json"
"""A real run's evaluation, whose validation scores each fake sweep run perturbs."""


@pytest.fixture(autouse=True)
def no_bundled(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # launched runs: one thread each


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def write_sweep(grid: dict, seeds: list[int], failed: int | None = None) -> tuple[str, list]:
    """A finished sweep as training leaves it: each run's config, status and an evaluation
    whose validation probabilities are the template's, blurred by the run's learning rate
    (the larger, the worse) and seed."""
    store = RunStore()
    base = {"small_cnn": TrainConfig(arch="small_cnn", data="synthetic:20").to_dict()}
    sweep_id, jobs = sweep_jobs(base, grid, seeds)
    template = json.loads(TEMPLATE.read_text())
    val = template["splits"]["val"]
    for k, job in enumerate(jobs):
        run = store.create(job.record(), job.run_id)
        tag = job.extra[SWEEP_KEY]
        rng = np.random.default_rng(k)
        noise = 50 * tag["point"]["lr"] + 0.05 * tag["seed"]
        probs = np.clip(np.asarray(val["probs"]) + rng.normal(0, noise, len(val["probs"])), 0, 1)
        report = full_report(np.asarray(val["labels"]), probs, val["threshold"], val["paths"])
        evaluation = {**template, "splits": {**template["splits"], "val": report}}
        (run.path / "evaluation.json").write_text(json.dumps(evaluation))
        run.set_status("failed" if k == failed else "completed")
    return sweep_id, jobs


def point_stats(jobs: list, failed: int | None = None) -> dict[str, tuple[float, float | None]]:
    """Per point (as describe() writes it): mean and sd of the completed runs' val AUC."""
    values: dict[str, list[float]] = {}
    for k, job in enumerate(jobs):
        point = describe(job.extra[SWEEP_KEY]["point"])
        auc = RunStore().get(job.run_id).evaluation()["splits"]["val"]["roc_auc"]
        values.setdefault(point, []).extend([] if k == failed else [auc])
    return {
        p: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None)
        for p, v in values.items()
    }


def test_sweep_view_points_heat_map_best_and_compare():
    grid = {"lr": [1e-3, 3e-3], "batch_size": [16, 32]}
    sweep_id, jobs = write_sweep(grid, [0, 1, 2], failed=1)
    expected = point_stats(jobs, failed=1)
    best = max(expected, key=lambda p: expected[p][0])
    short = describe(jobs[1].extra[SWEEP_KEY]["point"])  # its failed run is left out

    at = open_page("sweeps")
    assert at.selectbox(key="sweep_id").value == sweep_id
    table = at.dataframe[0].value
    assert list(table.columns[:3]) == ["arch", "lr", "batch_size"]
    assert len(table) == 4
    for _, row in table.iterrows():
        point = f"arch=small_cnn lr={row['lr']} batch_size={row['batch_size']}"
        mean, sd = expected[point]
        assert row["val AUC (mean ± sd)"] == f"{mean:.3f} ± {sd:.3f}"
        assert row["seeds done"] == ("2/3" if point == short else "3/3")
        assert row["runs"] == ("2 completed, 1 failed" if point == short else "3 completed")
        assert row["best on validation"] == (point == best)
    assert best in at.success[0].value
    # Whether validation tells the best from the runner-up, in words, and what is chosen.
    runs = sweep_runs(RunStore(), sweep_id)
    choice = choose_point(runs, summarize(runs))
    verdict = [m.value for m in (*at.warning, *at.info) if m.value == choice.sentence()]
    assert verdict and choice.best == best and "AUC difference" in verdict[0]
    assert table.loc[table["chosen"], ["lr", "batch_size"]].shape[0] == 1

    (spec,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    (heat,) = spec["data"]
    assert heat["type"] == "heatmap" and heat["y"] == ["0.001", "0.003"]
    assert heat["x"] == ["16", "32"]
    for i, lr in enumerate(grid["lr"]):
        for j, size in enumerate(grid["batch_size"]):
            point = f"arch=small_cnn lr={lr} batch_size={size}"
            assert heat["z"][i][j] == pytest.approx(expected[point][0])
            assert heat["text"][i][j].endswith("★") == (point == best)

    # The best point's completed runs, sent to the Compare page.
    at.number_input(key="sweep_compare_n").set_value(1).run()
    button = next(b for b in at.button if b.label.startswith("Compare the best 1 point"))
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    ids = [j.run_id for j in jobs if describe(j.extra[SWEEP_KEY]["point"]) == best]
    ids = [i for i in ids if i != jobs[1].run_id]
    assert at.title[0].value == "Compare"
    assert at.multiselect(key="compare_runs").value == ids


def test_metric_choice_one_dimensional_grid_and_no_sweep():
    at = open_page("sweeps")
    assert "No sweep yet" in at.info[0].value
    write_sweep({"lr": [1e-3, 3e-3]}, [0, 1])
    at = open_page("sweeps")
    assert not at.get("plotly_chart")  # a heat map needs two varying dimensions
    at.selectbox(key="sweep_metric").set_value("accuracy").run()
    assert not at.exception
    column = at.dataframe[0].value["val accuracy (mean ± sd)"]
    assert column.str.fullmatch(r"\d+\.\d% ± \d+\.\d").all()


def wait_for(run_ids: list[str], timeout: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = {r.id: r for r in RunStore().list()}
        statuses = [runs[i].status() if i in runs else {} for i in run_ids]
        if all(s.get("status") and s["status"] not in ACTIVE for s in statuses):
            return statuses
        time.sleep(2)
    for run_id in run_ids:  # leave no training process behind
        RunStore().get(run_id).request_cancel()
    raise AssertionError(f"the sweep did not finish within {timeout} s")


def test_train_page_launches_a_sweep_owned_by_the_session():
    at = open_page("data")
    at.slider(key="data_synthetic_n").set_value(20).run()
    at.switch_page("pages/train.py").run()
    at.multiselect(key="opt_archs").set_value(["small_cnn"])
    at.number_input(key="opt_img_size").set_value(32)
    at.number_input(key="opt_epochs").set_value(1)
    at.number_input(key="opt_batch_size").set_value(8)
    at.text_input(key="opt_run_tags").set_value("grid")
    at.run()
    at.multiselect(key="sweep_vary").set_value(["lr", "augment.crop"]).run()
    at.text_input(key="sweep_grid_lr").set_value("1e-3, 3e-3")
    at.text_input(key="sweep_grid_augment.crop").set_value("abc").run()
    assert any("'abc' is not a float" in w.value for w in at.warning)  # before any click
    assert not [b for b in at.button if b.label.startswith("Launch sweep")]
    at.text_input(key="sweep_grid_augment.crop").set_value("0.85")
    at.text_input(key="sweep_seeds").set_value("0").run()
    launch = next(b for b in at.button if b.label == "Launch sweep (2 runs)")
    launch.click().run()
    assert not at.exception, [e.value for e in at.exception]
    run_ids, sweep_id = at.session_state["launched"], at.session_state["launched_sweep"]
    assert len(run_ids) == 2 and f"Launched sweep `{sweep_id}`: 2 runs" in at.success[0].value

    statuses = wait_for(run_ids)
    assert [s["status"] for s in statuses] == ["completed", "completed"]
    for run_id, lr in zip(run_ids, (1e-3, 3e-3)):
        run = RunStore().get(run_id)
        assert run.config()[SWEEP_KEY]["id"] == sweep_id and run.config()["lr"] == lr
        assert run.config()["img_size"] == 32 and run.config()["augment"]["crop"] == 0.85
        assert run.meta()["owner"] == at.session_state["_owner"]
        assert run.meta()["tags"] == ["grid"]
    at.switch_page("pages/sweeps.py").run()
    assert not at.exception
    assert at.selectbox(key="sweep_id").value == sweep_id
    assert len(at.dataframe[0].value) == 2
    (best,) = [p for p in summarize(sweep_runs(RunStore(), sweep_id)) if p["best"]]
    if best["chance"]:  # two 1-epoch runs at 32 px may learn nothing validation can see
        assert any("No better than chance" in w.value for w in at.warning)
    else:
        assert at.success  # a best point, on validation
