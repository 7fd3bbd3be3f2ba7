"""Sweeps: grid specs, their expansion into runs, the summary over seeds, and a real
2 x 2 sweep through the local executor and the CLI. (The Ray executor: test_ray.py.)"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_cli

from cxr_core import cli
from cxr_core.errors import UserError
from cxr_core.execution.executors import LocalExecutor, get_executor
from cxr_core.execution.sweeps import (
    expand,
    parse_grid,
    parse_seeds,
    summarize,
    sweep_jobs,
    sweep_runs,
    sweeps_in,
    varying,
)
from cxr_core.scoring import stats
from cxr_core.store.runs import RunStore
from cxr_core.training.config import TrainConfig

TINY = ["--data", "synthetic:20", "--img-size", "32", "--epochs", "1", "--batch-size", "8"]


@pytest.fixture(autouse=True)
def no_bundled(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # launched runs: one thread each


def bases(*archs: str, **fields) -> dict[str, dict]:
    """Each architecture's base config, at its own default size unless one is given."""
    return {a: TrainConfig(arch=a, data="synthetic:20", **fields).to_dict() for a in archs}


def test_grid_values_take_their_settings_types():
    grid = parse_grid(
        ["lr=1e-3,3e-4", "batch-size=16,32", "crop=0.7,1", "pretrained=true,no",
         "max_images=none,40", "optimizer=adam,sgd", "augment.gamma=0.2", "augment=true,false"]
    )  # fmt: skip
    assert grid == {
        "lr": [1e-3, 3e-4],
        "batch_size": [16, 32],
        "augment.crop": [0.7, 1.0],
        "pretrained": [True, False],
        "max_images": [None, 40],
        "optimizer": ["adam", "sgd"],
        "augment.gamma": [0.2],
        "augment.enabled": [True, False],  # by its flag, --augment
    }
    assert [type(v) for v in grid["batch_size"]] == [int, int]
    assert parse_seeds("0,1,2") == [0, 1, 2]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["colour=red"], "--grid colour: no such training option"),
        (["lr=fast"], "--grid lr: 'fast' is not a float"),
        (["no_such_thing=1"], "--grid no_such_thing: no such training option"),
        (["batch_size=8.5"], "--grid batch_size: '8.5' is not a int"),
        (["pretrained=maybe"], "--grid pretrained: 'maybe' is not a bool"),
        (["lr"], "write OPTION=V1,V2"),
        (["lr=1e-3,1e-3"], "a value is repeated"),
        (["lr=1e-3", "lr=3e-4"], "--grid lr is given twice"),
        (["seed=1,2"], "give seeds with --seeds"),
        (["arch=mlp"], "give each architecture with --arch"),
    ],
)
def test_a_bad_grid_spec_is_named(specs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        parse_grid(specs)


def test_a_point_failing_validation_stops_the_whole_sweep():
    with pytest.raises(UserError, match=r"^grid point arch=small_cnn, lr=20\.0: .*rate"):
        expand(bases("small_cnn"), {"lr": [1e-3, 20.0]}, [0])
    with pytest.raises(UserError, match=r"^grid point arch=mlp, augment\.crop=0\.0: .*between"):
        expand(bases("mlp"), {"augment.crop": [0.5, 0.0]}, [0])


def test_expansion_seeds_slowest_each_architecture_at_its_own_size():
    sweep_id, jobs = sweep_jobs(
        bases("mlp", "small_cnn"), {"lr": [1e-3, 3e-4]}, [7, 8], {"command": "c"}
    )
    tags = [job.extra["sweep"] for job in jobs]
    assert [(t["seed"], t["point"]["arch"], t["point"]["lr"]) for t in tags] == [
        (seed, arch, lr) for seed in (7, 8) for arch in ("mlp", "small_cnn") for lr in (1e-3, 3e-4)
    ]
    assert {t["id"] for t in tags} == {sweep_id}
    assert all(t["grid"] == {"arch": ["mlp", "small_cnn"], "lr": [1e-3, 3e-4]} for t in tags)
    for job, tag in zip(jobs, tags):
        assert (job.config.arch, job.config.lr, job.config.seed) == (
            tag["point"]["arch"], tag["point"]["lr"], tag["seed"],
        )  # fmt: skip
        record = job.record()
        assert (
            record["sweep"] == tag
            and record["command"] == "c"
            and record["arch"] == job.config.arch
        )
    sizes = {job.config.arch: job.config.img_size for job in jobs}
    assert sizes["mlp"] != sizes["small_cnn"]  # each its default
    _, pinned = sweep_jobs(bases("mlp", "small_cnn", img_size=48), {}, [0])
    assert {job.config.img_size for job in pinned} == {48}
    _, cropped = sweep_jobs(bases("mlp"), {"augment.crop": [0.6, 1.0]}, [0])
    assert [job.config.augment.crop for job in cropped] == [0.6, 1.0]


def record_result(store: RunStore, job, status: str, val_auc: float, test_auc: float) -> None:
    """A finished run as training leaves it: config, status and evaluation."""
    run = store.create(job.record(), job.run_id)
    report = lambda auc: {"roc_auc": auc, "accuracy": auc, "n": 10}  # noqa: E731
    splits = {"val": report(val_auc), "internal_test": report(test_auc)}
    (run.path / "evaluation.json").write_text(json.dumps({"splits": splits}))
    run.set_status(status)


def test_summary_is_mean_and_sd_over_seeds_and_picks_on_validation_only(isolated_store):
    store = RunStore(isolated_store, include_bundled=False)
    sweep_id, jobs = sweep_jobs(bases("small_cnn"), {"lr": [1e-3, 3e-4]}, [0, 1, 2])
    # lr=1e-3 is better on validation; lr=3e-4 looks better on the test split.
    results = {
        1e-3: [("completed", 0.80, 0.60), ("completed", 0.90, 0.61), ("completed", 0.85, 0.62)],
        3e-4: [("completed", 0.70, 0.99), ("failed", 0.99, 0.99), ("cancelled", 0.98, 0.99)],
    }
    seen = {1e-3: 0, 3e-4: 0}
    for job in jobs:
        lr = job.extra["sweep"]["point"]["lr"]
        record_result(store, job, *results[lr][seen[lr]])
        seen[lr] += 1

    runs = sweep_runs(store, sweep_id)
    assert [r.id for r in runs] == [j.run_id for j in jobs]  # grid order, seeds slowest
    best, other = summarize(runs)
    assert best["point"] == {"arch": "small_cnn", "lr": 1e-3} and best["best"]
    assert best["n"] == 3 and best["mean"] == pytest.approx(0.85)
    assert best["sd"] == pytest.approx(statistics.stdev([0.80, 0.90, 0.85]))
    assert other["n"] == 1 and other["sd"] is None and not other["best"]  # failed, cancelled out
    assert len(other["runs"]) == 3
    assert summarize(runs, "accuracy")[0]["mean"] == pytest.approx(0.85)
    with pytest.raises(UserError, match="no runs of sweep"):
        sweep_runs(store, "sweep-none")


def test_the_store_s_sweeps_newest_first_with_their_varying_dimensions(isolated_store):
    store = RunStore(isolated_store, include_bundled=False)
    grids = {
        "sweep-20260101-090000-aaaa": {"lr": [1e-3, 3e-4]},
        "sweep-20260102-090000-bbbb": {"lr": [1e-3], "batch_size": [8, 16]},
    }
    for k, (sweep_id, grid) in enumerate(grids.items()):
        for job in sweep_jobs(bases("small_cnn"), grid, [0])[1]:
            tag = {**job.extra["sweep"], "id": sweep_id}
            store.create({**job.record(), "sweep": tag}, f"{job.run_id}-{k}")
    store.create(bases("mlp")["mlp"])  # not a sweep's
    found = sweeps_in(store.list())
    assert list(found) == list(grids)[::-1]
    assert [found[i]["n"] for i in grids] == [2, 2]
    assert [varying(found[i]["grid"]) for i in grids] == [["lr"], ["batch_size"]]
    assert varying({"arch": ["mlp"], "lr": [1e-3]}) == []


@pytest.mark.parametrize(
    "grid",
    [["--grid", "colour=red"], ["--grid", "lr=1e-3,abc"], ["--grid", "batch_size=8,0"]],
)
def test_a_bad_sweep_exits_2_in_one_line_and_creates_nothing(grid, isolated_store, capsys):
    code = cli.main(["sweep", "--arch", "mlp", *TINY, *grid])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not isolated_store.exists() or not any(isolated_store.iterdir())


def test_the_ray_executor_without_ray_says_how_to_install_it(isolated_store):
    """As on a machine without Ray: its import is blocked for this process."""
    argv = ["sweep", "--arch", "mlp", *TINY, "--executor", "ray"]
    code = (
        "import sys; sys.modules['ray'] = None; from cxr_core.cli import main; "
        f"sys.exit(main({argv!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the ray executor needs Ray, which is not installed: "
        "pip install -r requirements-ray.txt"
    ]
    assert not isolated_store.exists() or not any(isolated_store.iterdir())


def test_the_executor_comes_from_the_environment(monkeypatch):
    assert isinstance(get_executor(), LocalExecutor)
    monkeypatch.setenv("CXR_EXECUTOR", "slurm")
    with pytest.raises(UserError, match="unknown executor 'slurm'; use one of local, ray"):
        get_executor()


def test_a_2x2_sweep_through_the_local_executor(isolated_store):
    result = run_cli(
        "sweep", "--arch", "mlp", *TINY, "--grid", "lr=1e-3,3e-4", "--grid", "batch_size=8,16",
        "--seeds", "3", "--json", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["point"]["lr"], r["point"]["batch_size"]) for r in rows] == [
        (1e-3, 8), (1e-3, 16), (3e-4, 8), (3e-4, 16),
    ]  # fmt: skip
    assert len({r["sweep"] for r in rows}) == 1
    for row in rows:
        assert row["status"] == "completed" and row["seed"] == 3, row
        run_dir = isolated_store / row["id"]
        config = json.loads((run_dir / "config.json").read_text())
        assert (config["lr"], config["batch_size"], config["seed"]) == (
            row["point"]["lr"], row["point"]["batch_size"], 3,
        )  # fmt: skip
        assert config["sweep"]["id"] == row["sweep"] and config["command"].endswith("--json")
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
        assert row["val"]["roc_auc"] == evaluation["splits"]["val"]["roc_auc"]
        assert set(row["val"]) >= {"roc_auc", "accuracy", "f1", "sensitivity", "specificity"}
    store = RunStore(isolated_store, include_bundled=False)
    summary = summarize(sweep_runs(store, rows[0]["sweep"]))
    assert [s["n"] for s in summary] == [1, 1, 1, 1] and sum(s["best"] for s in summary) == 1


def test_a_best_point_no_better_than_chance_is_marked_and_a_real_one_is_not(isolated_store):
    """The Sweeps page crowned "lr=0.003, AUC 0.589 +- 0.050" on 40 synthetic films without a
    word: a point whose every seed's validation AUC interval (DeLong) includes 0.5 is chance."""
    store = RunStore(isolated_store, include_bundled=False)
    rng = np.random.default_rng(0)
    labels = [0] * 20 + [1] * 20
    noise = rng.random(40)
    learned = np.r_[rng.uniform(0, 0.45, 20), rng.uniform(0.55, 1, 20)]
    for grid, probs, chance in (({"lr": [3e-3]}, noise, True), ({"lr": [1e-3]}, learned, False)):
        sweep_id, jobs = sweep_jobs(bases("small_cnn"), grid, [0, 1])
        for job in jobs:
            run = store.create(job.record(), job.run_id)
            report = {"roc_auc": 0.6, "n": 40, "labels": labels, "probs": list(probs)}
            run.save_evaluation({"splits": {"val": report}})
            run.set_status("completed")
        (best,) = summarize(sweep_runs(store, sweep_id))
        assert best["best"] and best["chance"] is chance
    assert stats.beats_chance(labels, noise) is False
    assert stats.beats_chance(labels, learned) is True
    assert stats.beats_chance([1, 1], [0.2, 0.9]) is None  # one class: not defined
