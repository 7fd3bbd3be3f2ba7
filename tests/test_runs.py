"""The run store: folders as the truth, liveness, history, listing, bundled runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from cxr_core import cli
from cxr_core.analysis.comparison import compare_table
from cxr_core.errors import UserError
from cxr_core.predict import evalsets
from cxr_core.store import runs
from cxr_core.store.runs import HEARTBEAT_TIMEOUT_S, RunStore


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "bundled"))
    return RunStore(tmp_path / "runs")


def _write_status(run, **status) -> None:
    (run.path / "status.json").write_text(json.dumps(status))


def _running_here(run, pid: int, heartbeat: float) -> None:
    """Status as a training process on this host writes it."""
    status = {"status": "running", "pid": pid, "host": socket.gethostname()}
    _write_status(run, **status, heartbeat=heartbeat, created=heartbeat)


def test_create_writes_config_and_a_queued_status(store):
    run = store.create({"arch": "mlp", "data": "synthetic"})
    assert run.config() == {"arch": "mlp", "data": "synthetic"}
    assert run.status()["status"] == "queued"
    assert "-mlp-" in run.id
    with pytest.raises(UserError, match="already exists"):
        store.create({"arch": "mlp"}, run.id)
    with pytest.raises(UserError, match="may only hold"):
        store.create({"arch": "mlp"}, "../escape")


def test_a_dead_process_makes_an_active_run_interrupted(store):
    run = store.create({"arch": "mlp"}, "dead")
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(finished.stdout)
    _running_here(run, pid, time.time())
    status = run.status()
    assert status["status"] == "interrupted"
    # Only read: status.json stays the training process's own record.
    assert json.loads((run.path / "status.json").read_text())["status"] == "running"


def test_a_live_process_stays_running_even_with_a_stale_heartbeat(store, monkeypatch):
    """A busy CPU can delay heartbeats: on this host the process table decides."""
    monkeypatch.setattr(runs, "HEARTBEAT_TIMEOUT_S", 1.0)
    run = store.create({"arch": "mlp"}, "alive")
    _running_here(run, os.getpid(), time.time() - 3)
    assert run.status()["status"] == "running"


def test_a_reused_pid_does_not_keep_a_dead_run_running(store):
    """The pid now belongs to a process that started after the run's last heartbeat."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = store.create({"arch": "mlp"}, "reused")
        _running_here(run, other.pid, time.time() - 60)
        assert run.status()["status"] == "interrupted"
    finally:
        other.kill()
        other.wait()


def test_from_another_host_only_a_stale_heartbeat_means_interrupted(store):
    fresh, stale = store.create({"arch": "mlp"}, "fresh"), store.create({"arch": "mlp"}, "stale")
    now = time.time()
    _write_status(fresh, status="running", pid=1, host="elsewhere", heartbeat=now, created=now)
    _write_status(
        stale,
        status="running",
        pid=1,
        host="elsewhere",
        heartbeat=now - HEARTBEAT_TIMEOUT_S - 5,
        created=now,
    )
    assert fresh.status()["status"] == "running"
    assert stale.status()["status"] == "interrupted"


def test_history_skips_a_line_cut_by_a_kill_and_truncates_for_resume(store):
    run = store.create({"arch": "mlp"}, "hist")
    for epoch in (1, 2):
        run.append_history({"type": "step", "epoch": epoch, "loss": 0.5})
        run.append_history({"type": "epoch", "epoch": epoch})
    with open(run.path / "history.jsonl", "a") as f:
        f.write('{"type": "step", "epoch": 3, "lo')  # the kill landed mid-write
    assert [r["epoch"] for r in run.history()] == [1, 1, 2, 2]
    run.truncate_history(1)
    assert [r["epoch"] for r in run.history()] == [1, 1]


def test_corrupt_run_files_are_user_errors(store):
    run = store.create({"arch": "mlp"}, "broken")
    (run.path / "evaluation.json").write_text("{not json")
    with pytest.raises(UserError, match=r"evaluation\.json is corrupt"):
        run.evaluation()


def test_list_filters_and_bundled_runs_are_read_only(store, tiny_run_dir, tmp_path, capsys):
    bundled = tmp_path / "bundled"
    shutil.copytree(tiny_run_dir, bundled / "shipped")
    mine = store.create({"arch": "mlp"}, "mine")
    _write_status(mine, status="failed", created=time.time())
    ids = {run.id: run for run in store.list()}
    assert set(ids) == {"mine", "shipped"}
    assert ids["shipped"].bundled and not ids["mine"].bundled
    assert [r.id for r in store.list(status="failed")] == ["mine"]
    assert [r.id for r in store.list(arch="small_cnn")] == ["shipped"]
    assert [r.id for r in RunStore(store.root, include_bundled=False).list()] == ["mine"]

    # A bundled run is never marked interrupted nor resumed in place.
    (bundled / "shipped" / "status.json").write_text(
        json.dumps({"status": "running", "pid": 1, "host": "elsewhere", "heartbeat": 0})
    )
    assert store.get("shipped").status()["status"] == "running"
    code = cli.main(["--runs-dir", str(store.root), "resume", "shipped"])
    assert code == 2 and "bundled run" in capsys.readouterr().err


def test_resume_refuses_a_run_that_is_still_running(store, capsys):
    run = store.create({"arch": "mlp"}, "busy")
    _running_here(run, os.getpid(), time.time())
    assert cli.main(["--runs-dir", str(store.root), "resume", "busy"]) == 2
    assert "still running" in capsys.readouterr().err


def test_summary_and_compare_read_the_evaluation(store, tiny_run_dir):
    shutil.copytree(tiny_run_dir, store.root / "a")
    run = store.get("a")
    evaluation = run.evaluation()
    row = run.summary()
    assert row["arch"] == "small_cnn" and row["status"] == "completed"
    assert row["val_auc"] == evaluation["splits"]["val"]["roc_auc"]
    assert row["test_split"] == "internal_test"
    assert row["test_auc"] == evaluation["splits"]["internal_test"]["roc_auc"]
    sets = evalsets.run_sets(run)
    by_split = {s.split: s for s in sets.values()}
    table = compare_table([run], {"a": by_split["internal_test"]})
    assert table.loc[0, "params_M"] == round(evaluation["params"] / 1e6, 2)
    assert table.loc[0, "roc_auc"] == pytest.approx(row["test_auc"])
    # The same files evaluated: the same fingerprint; another split, another one.
    shutil.copytree(tiny_run_dir, store.root / "b")
    again = {s.split: s.key for s in evalsets.run_sets(store.get("b")).values()}
    assert again["val"] == by_split["val"].key != by_split["internal_test"].key
    assert "test" not in by_split


def test_name_tags_and_note_live_beside_the_run(store, tiny_run_dir, tmp_path, monkeypatch):
    run = store.create({"arch": "mlp"}, "named")
    assert run.label == "named" and run.meta() == {}
    run.set_meta(name="first try", tags="Baseline, cpu", note="lr too high?")
    assert run.label == "first try" and run.meta()["tags"] == ["baseline", "cpu"]
    assert [r.id for r in store.list(tag="baseline")] == ["named"]
    assert store.list(tag="nope") == []
    for bad in ({"name": "two\nlines"}, {"tags": ["no spaces"]}, {"colour": "red"}):
        with pytest.raises(UserError):
            run.set_meta(**bad)
    # A bundled run's name and tags go to the writable store, never into checkpoints/.
    bundled = tmp_path / "bundled"
    shutil.copytree(tiny_run_dir, bundled / "shipped")
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(bundled))
    before = sorted(p.name for p in (bundled / "shipped").iterdir())
    shipped = RunStore(store.root).get("shipped")
    shipped.set_meta(tags=["reference"])
    assert RunStore(store.root).get("shipped").meta()["tags"] == ["reference"]
    assert sorted(p.name for p in (bundled / "shipped").iterdir()) == before


def test_delete_removes_a_finished_run_but_not_a_bundled_or_active_one(
    store, tiny_run_dir, tmp_path, monkeypatch
):
    failed = store.create({"arch": "mlp"}, "failed-run")
    _write_status(failed, status="failed", created=time.time())
    (store.root / ".logs").mkdir()
    (store.root / ".logs" / "failed-run.log").write_text("boom")
    store.delete(failed)
    assert not failed.path.exists() and not (store.root / ".logs" / "failed-run.log").exists()
    assert not list(store.root.glob(".deleting-*"))
    active = store.create({"arch": "mlp"}, "busy")
    _running_here(active, os.getpid(), time.time())
    with pytest.raises(UserError, match="cancel it first"):
        store.delete(active)
    bundled = tmp_path / "bundled"
    shutil.copytree(tiny_run_dir, bundled / "shipped")
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(bundled))
    with pytest.raises(UserError, match="bundled run"):
        RunStore(store.root).delete(RunStore(store.root).get("shipped"))
    assert (bundled / "shipped" / "model.safetensors").exists()


def test_only_the_launching_session_or_an_operator_may_change_a_run(store):
    run = store.create({"arch": "mlp"}, "owned")
    run.set_meta(owner="session-a")
    assert runs.may_change(run, "session-a", operator=False)
    assert not runs.may_change(run, "session-b", operator=False)
    assert not runs.may_change(run, None, operator=False)
    assert runs.may_change(run, "session-b", operator=True)
    assert not runs.may_change(store.create({"arch": "mlp"}, "nobody"), "session-a", False)
