"""Back-compat of the run record: every bundled run, and a run folder made by the previous
release (tests/data/prev_release_run, trained at commit b928e26 with
``train --arch small_cnn --data synthetic:10 --img-size 32 --epochs 1 --batch-size 8``, its
weights left out to keep it small), loads through :mod:`cxr_core.store.records` into the
typed records."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxr_core.errors import UserError
from cxr_core.predict.evalsets import run_sets
from cxr_core.settings import bundled_runs_dir
from cxr_core.store import records
from cxr_core.store.runs import Run, RunStore
from cxr_core.training.config import TrainConfig

PREVIOUS_RELEASE = Path(__file__).parent / "data" / "prev_release_run"
BUNDLED = sorted(p.name for p in bundled_runs_dir().iterdir() if records.is_run(p))


def _keys(record_type: type) -> set[str]:
    return set(record_type.__annotations__) | {
        k for base in record_type.__mro__ for k in getattr(base, "__annotations__", {})
    }


def _check_loads(run: Run) -> None:
    """Each record of ``run`` reads into its type, with only the keys that type names."""
    config, status, evaluation = run.config(), run.status(), run.evaluation()
    assert config["arch"] and status["status"] == "completed"
    assert set(status) <= _keys(records.Status)
    assert set(evaluation) <= _keys(records.Evaluation), set(evaluation) - _keys(records.Evaluation)
    for name, report in evaluation["splits"].items():
        assert set(report) <= _keys(records.SplitReport), name
        assert records.split_report(evaluation, name) is report
    test = records.report_on_test(evaluation)
    assert test is evaluation["splits"][evaluation["test_split"]]
    assert 0 <= test["roc_auc"] <= 1 and test["n"] == len(test["labels"])
    assert records.split_report(evaluation, "no-such-split") == {}
    manifest = run.manifest()
    assert manifest is not None and set(run.split()) <= _keys(records.SplitRecord)
    assert "val" in manifest.splits
    if config["arch"] == "ensemble":
        members = records.members(config)
        assert len(members) >= 2 and members == evaluation["members"]
        assert records.member_weights(config) == pytest.approx(evaluation["weights"])
        assert sum(records.member_weights(config)) == pytest.approx(1)
    else:
        assert records.members(config) == []
        TrainConfig.from_dict(config)  # the config is a TrainConfig's record
        assert run.environment()
        history = run.history()
        assert history and {"epoch", "type"} <= set(history[-1])
        assert history[-1]["epoch"] >= evaluation["best_epoch"]
    val = records.split_report(evaluation, "val")
    sets = run_sets(run)
    assert any(s.split == "val" and s.n == val["n"] for s in sets.values())


@pytest.mark.parametrize("run_id", BUNDLED)
def test_every_bundled_record_loads_into_the_typed_records(run_id, tmp_path):
    folder = tmp_path / "runs" / run_id
    shutil.copytree(bundled_runs_dir() / run_id, folder)
    assert {f.name for f in folder.iterdir()} <= set(records.SHARED)
    (run,) = RunStore(folder.parent, include_bundled=False).list()
    _check_loads(run)
    assert run.summary()["test_auc"] == records.report_on_test(run.evaluation())["roc_auc"]


def test_a_run_folder_of_the_previous_release_loads(tmp_path):
    folder = tmp_path / "runs" / "prev-release-run"
    shutil.copytree(PREVIOUS_RELEASE, folder)
    store = RunStore(folder.parent, include_bundled=False)
    (run,) = store.list()
    _check_loads(run)
    assert run.calibration() is None and run.meta() == {} and not run.has_checkpoint()
    row = run.summary()
    assert row["arch"] == "small_cnn" and row["status"] == "completed"
    assert row["val_auc"] == run.evaluation()["splits"]["val"]["roc_auc"]


def test_records_written_read_back(tmp_path):
    store = RunStore(tmp_path, include_bundled=False)
    run = store.create({"arch": "small_cnn", "data": "synthetic:10"}, "r")
    assert records.is_run(run.path) and run.config()["data"] == "synthetic:10"
    run.append_history({"type": "epoch", "epoch": 1})
    run.append_history({"type": "epoch", "epoch": 2})
    run.truncate_history(1)
    assert run.history() == [{"type": "epoch", "epoch": 1}]
    (run.path / records.HISTORY).write_text('{"type": "epoch", "epoch": 1}\n{"ty')
    assert run.history() == [{"type": "epoch", "epoch": 1}]  # a line cut by a kill
    run.request_cancel()
    assert run.cancel_requested()
    run.clear_cancel()
    assert not run.cancel_requested()
    saved: records.Calibration = {
        "temperature": 1.5,
        "fitted_on": "abc",
        "split": "val",
        "n": 3,
        "created": 0.0,
    }
    run.save_calibration(saved)
    assert run.calibration() == saved and run.calibration_file.parent == run.path
    assert run.cam_check_file("k", "gradcam", 8).parent.name == records.CAM_CHECKS
    assert run.evaluation_set_file("k").parent == run.evaluations_dir
    run.forget_derived()
    assert run.calibration() is None
    (run.path / records.STATUS).write_text("{not json")
    with pytest.raises(UserError, match=r"status\.json is corrupt"):
        run.status()
