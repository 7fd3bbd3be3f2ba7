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

from cxr_core import cli, runs
from cxr_core.compare import compare_table, evaluation_set
from cxr_core.errors import UserError
from cxr_core.runs import HEARTBEAT_TIMEOUT_S, RunStore


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
    # Written back, so every reader agrees.
    assert json.loads((run.path / "status.json").read_text())["status"] == "interrupted"


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
    table = compare_table([run])
    assert table.loc[0, "params_M"] == round(evaluation["params"] / 1e6, 2)
    # The same files evaluated: the same evaluation-set hash; another split, another hash.
    assert evaluation_set(run, "val") == evaluation_set(store.get("a"), "val")
    assert evaluation_set(run, "val") != evaluation_set(run, "internal_test")
    assert evaluation_set(run, "test") is None
