"""``export-mlflow``: runs logged through a real MLflow client into a SQLite tracking store
(artifacts in a folder), then read back with the client and compared with the run store."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, run_cli

from cxr_core import cli
from cxr_core.store.runs import Run

BUNDLED = "mlp-scratch-64"
META = {"name": "tiny baseline", "tags": ["smoke", "cpu"], "note": "two epochs on synthetic"}


def _export(*argv: str, env: dict | None = None) -> tuple[int, str, str]:
    """``cli.main`` in-process (a subprocess would re-import torch and MLflow each time)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _set_status(run_dir: Path, **fields) -> None:
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, **fields}))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_run_dir) -> SimpleNamespace:
    """A runs folder (the tiny run with a meta file, and a failed copy) and a bundled folder
    (one real bundled run), exported once with no RUN argument into a fresh SQLite store."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    runs, bundled = tmp / "runs", tmp / "bundled"
    shutil.copytree(tiny_run_dir, runs / "tiny")
    (runs / "tiny" / "meta.json").write_text(json.dumps(META))
    shutil.copytree(tiny_run_dir, runs / "tiny-failed")
    _set_status(runs / "tiny-failed", status="failed", message="boom")
    shutil.copytree(ROOT / "checkpoints" / BUNDLED, bundled / BUNDLED)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {"CXR_BUNDLED_DIR": str(bundled)}
    argv = ("--runs-dir", str(runs), "export-mlflow", "--tracking-uri", uri)
    code, out, err = _export(*argv, "--artifact-location", str(tmp / "artifacts"), env=env)
    assert code == 0, err
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("CXR Lab")
    return SimpleNamespace(
        tmp=tmp,
        uri=uri,
        argv=argv,
        env=env,
        out=out,
        client=client,
        experiment_id=experiment.experiment_id,
        runs={"tiny": Run(runs / "tiny"), BUNDLED: Run(bundled / BUNDLED, bundled=True)},
    )


def _mlflow_runs(exported, experiment_id: str | None = None) -> dict:
    found = exported.client.search_runs([experiment_id or exported.experiment_id])
    return {r.info.run_name: r for r in found}


def test_default_exports_every_completed_run_bundled_included(exported):
    assert set(_mlflow_runs(exported)) == {"tiny", BUNDLED}  # not the failed run
    assert "tiny: created" in exported.out and f"{BUNDLED}: created" in exported.out


@pytest.mark.parametrize("run_id", ["tiny", BUNDLED])
def test_params_are_the_flattened_config(exported, run_id):
    params = _mlflow_runs(exported)[run_id].data.params
    expected = {}
    for key, value in exported.runs[run_id].config().items():
        if isinstance(value, dict):
            expected.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            expected[key] = value
    assert set(params) == set(expected)
    for key, value in expected.items():
        assert (params[key] if isinstance(value, str) else json.loads(params[key])) == value, key
    assert "augment.crop" in params


@pytest.mark.parametrize("run_id", ["tiny", BUNDLED])
def test_metric_histories_have_the_epochs_as_steps(exported, run_id):
    mlflow_run, run = _mlflow_runs(exported)[run_id], exported.runs[run_id]
    history = lambda key: [  # noqa: E731
        (m.step, m.value) for m in exported.client.get_metric_history(mlflow_run.info.run_id, key)
    ]
    epochs = [r for r in run.history() if r["type"] == "epoch"]
    assert len(epochs) >= 2
    for key in ("train_loss", "val_roc_auc", "val_accuracy", "lr"):
        assert history(f"epoch_{key}") == [(r["epoch"], pytest.approx(r[key])) for r in epochs]
    steps = [(r["global_step"], pytest.approx(r["loss"])) for r in run.history() if "loss" in r]
    assert steps and sorted(history("step_loss")) == steps


@pytest.mark.parametrize("run_id", ["tiny", BUNDLED])
def test_final_metrics_are_the_evaluation_per_split(exported, run_id):
    metrics = _mlflow_runs(exported)[run_id].data.metrics
    evaluation = exported.runs[run_id].evaluation()
    assert len(evaluation["splits"]) >= 2
    for split, report in evaluation["splits"].items():
        for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "threshold", "n"):
            assert metrics[f"{split}_{key}"] == pytest.approx(report[key]), (split, key)
    assert metrics["best_epoch"] == evaluation["best_epoch"]


@pytest.mark.parametrize("run_id", ["tiny", BUNDLED])
def test_tags_and_status(exported, run_id):
    mlflow_run, run = _mlflow_runs(exported)[run_id], exported.runs[run_id]
    tags = mlflow_run.data.tags
    assert mlflow_run.info.status == "FINISHED"
    assert tags["cxr.run_id"] == run_id and tags["cxr.status"] == "completed"
    assert tags["cxr.arch"] == run.config()["arch"]
    assert tags["cxr.bundled"] == str(run.bundled).lower()
    assert tags["cxr.test_split"] == run.evaluation()["test_split"]
    if run_id == "tiny":
        assert tags["cxr.name"] == META["name"] and tags["cxr.tags"] == "smoke,cpu"
        assert tags["mlflow.note.content"] == META["note"]
    else:  # no meta file, no name in its config: tolerated, no label tags
        assert not {"cxr.name", "cxr.tags", "mlflow.note.content"} & set(tags)


@pytest.mark.parametrize("run_id", ["tiny", BUNDLED])
def test_artifacts_are_the_run_files_byte_for_byte(exported, run_id, tmp_path):
    mlflow_run, run = _mlflow_runs(exported)[run_id], exported.runs[run_id]
    names = {a.path for a in exported.client.list_artifacts(mlflow_run.info.run_id)}
    expected = {"config.json", "split.json", "history.jsonl", "evaluation.json"}
    assert expected | {"model.safetensors"} <= names
    for name in ("model.safetensors", "evaluation.json"):
        local = exported.client.download_artifacts(mlflow_run.info.run_id, name, str(tmp_path))
        assert Path(local).read_bytes() == (run.path / name).read_bytes(), name
    assert str(exported.tmp / "artifacts") in mlflow_run.info.artifact_uri


def test_reexport_updates_in_place_and_never_duplicates(exported, tiny_run_dir, tmp_path):
    """Up to date: labels refreshed, nothing logged twice. An export left unfinished, or of
    an earlier ending of the run (interrupted, then resumed), is replaced by a whole one."""
    from mlflow.entities import ViewType

    client, run_dir = exported.client, Path(exported.argv[1]) / "again"
    shutil.copytree(tiny_run_dir, run_dir)
    argv = (*exported.argv, "again", "--experiment", "re-export")

    def action() -> str:
        code, out, err = _export(*argv, "--artifact-location", str(tmp_path), env=exported.env)
        assert code == 0, err
        return out.splitlines()[0].removeprefix("again: ").split(" (")[0]

    experiment_id = client.create_experiment("re-export", tmp_path.as_uri())
    client.create_run(experiment_id, tags={"cxr.run_id": "again"}, run_name="again")
    assert action() == "replaced"  # the unfinished export above
    ended = json.loads((run_dir / "status.json").read_text())["ended"]
    _set_status(run_dir, status="interrupted", ended=ended - 60)
    assert action() == "replaced"
    _set_status(run_dir, status="completed", ended=ended)
    assert action() == "replaced"
    (run_dir / "meta.json").write_text(json.dumps({"name": "renamed"}))
    assert action() == "up to date"

    (active,) = client.search_runs([experiment_id])
    assert active.info.status == "FINISHED" and active.data.tags["cxr.name"] == "renamed"
    assert active.data.tags["cxr.exported"] == f"completed@{ended}"
    losses = client.get_metric_history(active.info.run_id, "epoch_train_loss")
    assert [m.step for m in losses] == [1, 2]
    deleted = client.search_runs([experiment_id], "", ViewType.DELETED_ONLY)
    assert sorted(str(r.data.tags.get("cxr.exported")) for r in deleted) == [
        "None",
        f"completed@{ended}",
        f"interrupted@{ended - 60}",
    ]


def test_mistakes_are_one_line_and_leave_nothing(exported, tmp_path):
    runs_dir = Path(exported.argv[1])
    shutil.copytree(runs_dir / "tiny", runs_dir / "busy")
    _set_status(
        runs_dir / "busy",
        status="running",
        pid=os.getpid(),
        host=socket.gethostname(),
        heartbeat=time.time(),
    )
    db = f"sqlite:///{tmp_path / 'fresh.db'}"
    cases = [
        ("no run 'nope'", "nope", db),
        ("busy is still running", "busy", db),
        ("does not exist", "tiny", f"sqlite:///{tmp_path}/missing/x.db"),
        ("nosuch://x", "tiny", "nosuch://x"),
    ]
    for expected, run_id, uri in cases:
        argv = ("--runs-dir", str(runs_dir), "export-mlflow", run_id, "--tracking-uri", uri)
        code, _, err = _export(*argv, env=exported.env)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "fresh.db").exists() and not (tmp_path / "missing").exists()
    shutil.rmtree(runs_dir / "busy")


def test_without_mlflow_the_cli_says_what_to_install(tmp_path):
    """A package on PYTHONPATH shadows MLflow and fails to import, as a missing one does."""
    shim = tmp_path / "shim" / "mlflow"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n"
    )
    db = tmp_path / "mlflow.db"
    result = run_cli(
        "export-mlflow",
        BUNDLED,
        "--tracking-uri",
        f"sqlite:///{db}",
        env={"PYTHONPATH": str(shim.parent)},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: MLflow is not installed: pip install -r requirements-mlflow.txt"
    ]
    assert not db.exists()
