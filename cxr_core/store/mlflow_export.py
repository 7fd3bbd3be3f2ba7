"""Export runs to MLflow (``python -m cxr_core export-mlflow``), for teams that track there.

Each CXR Lab run becomes one MLflow run named after its id: the config as params, the
per-epoch history as metrics with step = epoch, the evaluation as final metrics, labels as
tags, and the run's files (weights included) as artifacts. MLflow is optional
(``requirements-mlflow.txt``) and imported only here.

Exporting a run again never duplicates it: the MLflow run is found by its ``cxr.run_id`` tag.
A training record is immutable once the run has ended, so an up-to-date export only has its
name/tags/note refreshed (they stay editable in CXR Lab), without re-uploading the weights.
An export of an older state (the run was resumed and ended again since) or one that never
finished (the connection dropped mid-upload) is replaced by a new one, and deleted once that
is whole: MLflow params cannot be overwritten in place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_core.errors import UserError
from cxr_core.store import records
from cxr_core.store.runs import ACTIVE, Run, RunStore

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "CXR Lab"
INSTALL_HINT = "pip install -r requirements-mlflow.txt"
ARTIFACTS = tuple(name for name in records.SHARED if name != records.STATUS)
"""The status goes into MLflow's own run status and tags instead."""
RUN_ID_TAG = "cxr.run_id"
EXPORTED_TAG = "cxr.exported"  # "<status>@<end time>", written last: marks a whole export
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED"}  # cancelled, interrupted: KILLED
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


@dataclass(frozen=True)
class Exported:
    """What happened to one run: ``created``, ``replaced`` or ``up to date``."""

    run_id: str
    mlflow_run_id: str
    action: str


def require_mlflow(tracking_uri: str) -> None:
    """Fail in one line, before anything is written, on what is missing or mistyped."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(f"MLflow is not installed: {INSTALL_HINT}") from None
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0]
    if scheme in _SQL_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
        raise UserError(f"a database tracking URI needs SQLAlchemy and Alembic: {INSTALL_HINT}")
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():  # MLflow would create the folders of a mistyped path
            raise UserError(f"tracking URI {tracking_uri}: folder {folder} does not exist")


def _mlflow_client(tracking_uri: str) -> MlflowClient:
    require_mlflow(tracking_uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise UserError(f"tracking URI {tracking_uri}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_location
        if location and "://" not in location:
            location = Path(location).resolve().as_uri()
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage != "active":
        raise UserError(f"MLflow experiment {name!r} is deleted: restore it or pick --experiment")
    return experiment.experiment_id


def flatten(config: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"augment": {"crop": 0.85}}`` -> ``("augment.crop", 0.85)``: MLflow params are flat."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def param_value(value: Any, limit: int) -> str:
    """MLflow params are strings of at most ``limit`` characters; a longer one is cut with
    a marker (the whole config is an artifact too)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metrics(run: Run, timestamp_ms: int) -> list:
    """The history as ``epoch_<key>`` at step = epoch and ``step_loss`` at the global step;
    the evaluation as ``<split>_<metric>`` and run-level figures (``best_epoch``, ...).

    The prefix keeps a curve apart from the final figure of the same name: the history's
    ``val_accuracy`` is at 0.5 per epoch, the evaluation's at the chosen threshold.
    """
    from mlflow.entities import Metric

    out = []
    for record in run.history():
        if record.get("type") == "epoch":
            out += [
                Metric(f"epoch_{key}", float(value), timestamp_ms, record["epoch"])
                for key, value in record.items()
                if key not in ("type", "epoch") and _is_number(value)
            ]
        elif record.get("type") == "step" and _is_number(record.get("loss")):
            loss = float(record["loss"])
            out.append(Metric("step_loss", loss, timestamp_ms, record["global_step"]))
    evaluation = run.evaluation() or {}
    out += [
        Metric(key, float(value), timestamp_ms, 0)
        for key, value in evaluation.items()
        if _is_number(value)
    ]
    for split, report in evaluation.get("splits", {}).items():
        out += [
            Metric(f"{split}_{key}", float(value), timestamp_ms, 0)
            for key, value in report.items()
            if _is_number(value)
        ]
    return out


def _user_labels(run: Run) -> dict:
    """Name, tags and note: from the run's meta file, else its config; absent is fine."""
    config = run.config()
    labels = {key: config[key] for key in ("name", "tags", "note") if config.get(key)}
    labels.update({k: v for k, v in records.read(run.path, records.META, {}).items() if v})
    return labels


def _label_tags(run: Run) -> dict[str, str]:
    """The tags that may change after a run ended (so a re-export refreshes them)."""
    labels = _user_labels(run)
    tags = {}
    if "name" in labels:
        tags["cxr.name"] = str(labels["name"])
    if "tags" in labels:
        values = labels["tags"]
        tags["cxr.tags"] = ",".join(values) if isinstance(values, list) else str(values)
    if "note" in labels:
        tags["mlflow.note.content"] = str(labels["note"])  # MLflow's run description
    return tags


def _tags(run: Run, status: str) -> dict[str, str]:
    config, evaluation = run.config(), run.evaluation() or {}
    tags = {
        RUN_ID_TAG: run.id,
        "cxr.arch": str(config.get("arch")),
        "cxr.status": status,
        "cxr.bundled": str(run.bundled).lower(),
    }
    if config.get("sweep_id"):
        tags["cxr.sweep_id"] = str(config["sweep_id"])
    if evaluation.get("test_split"):
        tags["cxr.test_split"] = str(evaluation["test_split"])
    if "synthetic" in evaluation:
        tags["cxr.synthetic"] = str(evaluation["synthetic"]).lower()
    return {**tags, **_label_tags(run)}


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    return (items[i : i + size] for i in range(0, len(items), size))


def _state(status: dict) -> str:
    """Which ending of the run an export holds: a resumed run ends again, later."""
    return f"{status['status']}@{status.get('ended') or status.get('heartbeat')}"


def _log(client: MlflowClient, mlflow_run_id: str, run: Run, status: dict) -> None:
    from mlflow.entities import Param, RunTag
    from mlflow.utils.validation import (
        MAX_METRICS_PER_BATCH,
        MAX_PARAM_VAL_LENGTH,
        MAX_PARAMS_TAGS_PER_BATCH,
    )

    ended_ms = int(1000 * (status.get("ended") or status.get("heartbeat") or 0))
    params = [Param(k, param_value(v, MAX_PARAM_VAL_LENGTH)) for k, v in flatten(run.config())]
    for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(mlflow_run_id, params=chunk)
    for chunk in _chunks(_metrics(run, ended_ms), MAX_METRICS_PER_BATCH):
        client.log_batch(mlflow_run_id, metrics=chunk)
    tags = [RunTag(k, v) for k, v in _tags(run, status["status"]).items()]
    for chunk in _chunks(tags, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(mlflow_run_id, tags=chunk)
    for name in ARTIFACTS:
        if (run.path / name).is_file():
            client.log_artifact(mlflow_run_id, str(run.path / name))
    client.set_terminated(
        mlflow_run_id, MLFLOW_STATUS.get(status["status"], "KILLED"), ended_ms or None
    )
    client.set_tag(mlflow_run_id, EXPORTED_TAG, _state(status))


def export_run(client: MlflowClient, experiment_id: str, run: Run) -> Exported:
    """Log one ended run into the experiment, or refresh the labels of its current export."""
    status = run.status()
    existing = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run.id}'"
    )
    current = [r for r in existing if r.data.tags.get(EXPORTED_TAG) == _state(status)]
    if current:
        for key, value in _label_tags(run).items():
            client.set_tag(current[0].info.run_id, key, value)
        return Exported(run.id, current[0].info.run_id, "up to date")
    started_ms = int(1000 * (status.get("started") or status.get("created") or 0))
    created = client.create_run(experiment_id, start_time=started_ms or None, run_name=run.id)
    mlflow_run_id = created.info.run_id
    try:
        _log(client, mlflow_run_id, run, status)
    except BaseException:
        with contextlib.suppress(Exception):  # else left unmarked: the next export replaces it
            client.delete_run(mlflow_run_id)
        raise
    for stale in existing:
        client.delete_run(stale.info.run_id)
    return Exported(run.id, mlflow_run_id, "replaced" if existing else "created")


def runs_to_export(store: RunStore, run_ids: Sequence[str]) -> list[Run]:
    """The named runs (each must have ended), or every completed run, bundled ones included."""
    if not run_ids:
        return store.list(status="completed")
    runs = [store.get(run_id) for run_id in run_ids]
    for run in runs:
        state = run.status().get("status")
        if state in ACTIVE:
            raise UserError(f"run {run.id} is still {state}: export it once it has ended")
    return runs


def export_runs(
    runs: Sequence[Run],
    tracking_uri: str = DEFAULT_TRACKING_URI,
    experiment: str = DEFAULT_EXPERIMENT,
    artifact_location: str | None = None,
) -> Iterator[Exported]:
    """Export ``runs`` one by one (yielded as each is done), into ``experiment`` at
    ``tracking_uri``; ``artifact_location`` applies when the experiment is created."""
    client = _mlflow_client(tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        experiment_id = _experiment_id(client, experiment, artifact_location)
        for run in runs:
            yield export_run(client, experiment_id, run)
    except MlflowException as exc:
        raise UserError(f"MLflow at {tracking_uri}: {_first_line(exc)}") from None
