"""The run record: every file of a run folder, its name and its shape, defined here only.

A run folder holds everything needed to audit, compare, resume or reuse a run::

    config.json  env.json  split.json  status.json  history.jsonl
    model.safetensors (best weights)  last.safetensors + last.json (resume state)
    probe.safetensors, average.safetensors (LP-FT's probe, SWA's running average)
    evaluation.json  evaluations/ (sets scored later)  meta.json (name, tags, note)
    cam_checks/  calibration.json  cancel (a flag file)
    adaptation.json (a run adapted to another site's films without their labels)

The records are typed as ``TypedDict``: they stay the plain dicts that the JSON files
hold (every reader of a dict keeps working, and an older record with fewer keys still
loads), while a type checker knows their keys. All are partial (``total=False``): runs
made by older releases, ensembles and runs cut short each lack some.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, TypedDict

from cxr_core.data.folders import SplitManifest
from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_json, read_json

CONFIG = "config.json"
"""What the run was asked to do (a TrainConfig, or an ensemble's members and weights);
its presence makes a folder a run."""
ENVIRONMENT = "env.json"
SPLIT = "split.json"
STATUS = "status.json"
HISTORY = "history.jsonl"
META = "meta.json"
EVALUATION = "evaluation.json"
EVALUATIONS = "evaluations"
"""A folder: the image sets scored after training, one ``<fingerprint>.json`` each."""
CAM_CHECKS = "cam_checks"
"""A folder: saved CAM checks, one ``<set>-<method>-<n>.json`` each."""
CALIBRATION = "calibration.json"
WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
LAST_STATE = "last.json"
PROBE_WEIGHTS = "probe.safetensors"
"""LP-FT: the weights at the end of the linear probe (WiSE-FT averages them in)."""
AVERAGE_WEIGHTS = "average.safetensors"
"""SWA: the running average of the fine-tuning epochs' weights, and how many it holds."""
CANCEL = "cancel"
"""A flag file: its presence asks the training process to stop."""
GUARD = "input_guard.safetensors"
"""The input guard's reference for these weights (keyed by their digest): what the run's
validation films look like to it (:mod:`cxr_core.predict.input_guard`)."""

GRAPHS = "graphs"
"""A folder: the weights exported as an ONNX graph for CPU inference, one
``<weights digest>.onnx``, remade when the weights change (:mod:`cxr_core.predict.graphs`)."""
ADAPTATION = "adaptation.json"
"""What a run adapted without labels changed, on which films, from which run: its
figures are never inductive (:mod:`cxr_core.predict.adaptation`)."""

CHECKPOINT = (LAST_WEIGHTS, LAST_STATE)
"""The resume state: written together, read together, never one without the other."""
SHARED = (CONFIG, ENVIRONMENT, SPLIT, STATUS, HISTORY, EVALUATION, WEIGHTS, GUARD, ADAPTATION)
"""What a run needs to be listed, compared, evaluated and used for prediction, and its
input guard's reference (a run without one computes it from its validation films when they
are present); the resume state, 2-3x the model's size, and what a user added stay behind."""
DERIVED = (EVALUATIONS, CAM_CHECKS, CALIBRATION, GRAPHS)
"""Records computed from a run's weights after training (scores on added image sets, CAM
checks, a fitted temperature, the exported graph): stale once the weights change."""


class Config(TypedDict, total=False):
    """config.json of a trained run: TrainConfig's fields (the most read ones here;
    ``TrainConfig.from_dict`` reads them all) and how it was launched."""

    arch: str
    data: str
    pretrained: bool
    img_size: int
    epochs: int
    batch_size: int
    seed: int
    threshold_method: str
    target_sensitivity: float
    target_specificity: float
    command: str
    sweep_id: str


class EnsembleConfig(Config, total=False):
    """config.json of an ensemble: its member runs by id and their weights."""

    members: list[str]
    weights: list[float]


class Status(TypedDict, total=False):
    """status.json, written only by the process that trains the run."""

    status: str  # queued, running, completed, failed, cancelled, interrupted
    phase: str
    message: str | None
    created: float
    started: float
    ended: float
    heartbeat: float
    pid: int
    host: str
    epoch: int
    step: int
    steps: int
    eta_s: float
    images_per_s: float
    progress: float


class HistoryRecord(TypedDict, total=False):
    """One line of history.jsonl: a training ``step`` or an ``epoch`` summary (which adds
    ``train_<metric>`` and ``val_<metric>`` for each metric)."""

    type: str
    epoch: int
    step: int
    global_step: int
    loss: float


class Meta(TypedDict, total=False):
    """meta.json: what a user says about the run, and the app session that launched it."""

    name: str
    tags: list[str]
    note: str
    owner: str


class SplitReport(TypedDict, total=False):
    """One split of an evaluation (:func:`cxr_core.scoring.metrics.full_report`)."""

    n: int
    threshold: float
    accuracy: float
    precision: float
    sensitivity: float
    specificity: float
    npv: float
    f1: float
    roc_auc: float
    pr_auc: float
    confusion_matrix: list[list[int]]
    classification_report: dict
    roc: dict[str, list[float]]
    pr: dict[str, list[float]]
    labels: list[int]
    probs: list[float]
    paths: list[str]


class Evaluation(TypedDict, total=False):
    """evaluation.json: the threshold chosen on val and a report per split."""

    threshold: float
    threshold_method: str
    threshold_low: float | None
    threshold_high: float | None
    """The plateau around the threshold (:class:`cxr_core.scoring.metrics.ThresholdChoice`);
    absent in records written before it was kept."""
    best_epoch: int | None
    averaged: str
    """What the shipped weights average (SWA, WiSE-FT), in words; absent: the best epoch's."""
    epoch_choice: dict | None
    """The kept epoch against its last challenger on validation, and an ensemble's
    ``selection``, against its best member: :class:`cxr_core.scoring.selection.Selection`
    as a dict (absent in older records)."""
    selection: dict
    epochs_run: int
    train_time_s: float
    test_split: str | None
    synthetic: bool
    latency_ms: float
    params: int
    trainable_params: int
    file_mb: float
    size_mb: float
    weights_precision: str
    members: list[str]
    weights: list[float]
    target_sensitivity: float
    target_specificity: float
    splits: dict[str, SplitReport]


class SplitRecord(TypedDict, total=False):
    """split.json: a :class:`SplitManifest`'s record (:func:`split_manifest` reads it)
    with the files skipped as unreadable, notes, the data's root and whether it was
    synthetic."""

    seed: int
    val_fraction: float
    test_fraction: float
    derived: dict[str, str]
    counts: dict[str, dict[str, int]]
    splits: dict[str, list[dict]]
    skipped: dict[str, str]
    notes: list[str]
    synthetic: bool
    root: str


class Adaptation(TypedDict, total=False):
    """adaptation.json: a run adapted to a site's films without their labels."""

    method: str  # bn, prior or both
    source_run: str
    site: dict  # fingerprint, name, root, n: the films adapted on
    bn_layers: int
    training_prevalence: float
    learned_prior: float  # the prevalence the source's probabilities assume
    site_prevalence: float  # estimated by EM
    threshold_before: float
    threshold_after: float
    created: float


class Calibration(TypedDict):
    """calibration.json: a temperature fitted on the run's validation scores."""

    temperature: float
    fitted_on: str  # the validation set's fingerprint
    split: str
    n: int
    created: float


def split_report(evaluation: Evaluation | None, split: str | None) -> SplitReport:
    """The report of ``split`` in ``evaluation``; empty when either is missing."""
    if not evaluation or not split:
        return {}
    return evaluation.get("splits", {}).get(split) or {}


def report_on_test(evaluation: Evaluation | None) -> SplitReport:
    """The report of the split the run was tested on; empty when it has none."""
    return split_report(evaluation, (evaluation or {}).get("test_split"))


def members(config: EnsembleConfig) -> list[str]:
    """An ensemble's member run ids (none for a trained run)."""
    return list(config.get("members") or [])


def member_weights(config: EnsembleConfig) -> list[float]:
    """An ensemble's weight of each member, in the order of :func:`members`."""
    return [float(w) for w in config.get("weights") or []]


def split_manifest(record: SplitRecord) -> SplitManifest:
    """The :class:`SplitManifest` of a split.json."""
    return SplitManifest.from_dict(record)


def read(folder: Path, name: str, default: Any = None, run_id: str | None = None) -> Any:
    """The JSON record ``name`` in ``folder`` (a run folder, or where a bundled run's
    added records live: then ``run_id`` names the run), or ``default`` when absent; a
    UserError names a corrupt one."""
    try:
        return read_json(folder / name)
    except FileNotFoundError:
        return default
    except json.JSONDecodeError:
        raise UserError(f"run {run_id or folder.name}: {name} is corrupt") from None


def write(folder: Path, name: str, record: Any) -> None:
    """Write the JSON record ``name`` whole (or not at all)."""
    atomic_write_json(folder / name, record)


def read_history(folder: Path) -> list[HistoryRecord]:
    """history.jsonl's records; a line cut by a kill mid-write is skipped."""
    file = folder / HISTORY
    if not file.exists():
        return []
    records = []
    for line in file.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_history(folder: Path, record: HistoryRecord) -> None:
    with open(folder / HISTORY, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_history(folder: Path, records: list[HistoryRecord]) -> None:
    (folder / HISTORY).write_text("".join(json.dumps(r) + "\n" for r in records))


def record_version(folder: Path) -> str:
    """A short digest of a bundled run's evaluation.json (its config.json for a record
    without one): what its added records were computed against. A bundle update that
    replaces a run under the same id gets a fresh overlay instead of the old model's scores."""
    record = folder / EVALUATION
    if not record.is_file():
        record = folder / CONFIG
    stat = record.stat()
    return _digest(record, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _digest(file: Path, mtime_ns: int, size: int) -> str:
    """Read once per version of the file: listings run on every page rerun."""
    return hashlib.sha1(file.read_bytes()).hexdigest()[:12]


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a run (its config.json, written last on creation, exists)."""
    return (folder / CONFIG).is_file()


def has_checkpoint(folder: Path) -> bool:
    """Whether both resume files are there (an epoch finished)."""
    return all((folder / name).is_file() for name in CHECKPOINT)


def evaluation_set_file(base: Path, key: str) -> Path:
    """Where the image set with fingerprint ``key`` scored after training is kept."""
    return base / EVALUATIONS / f"{key}.json"


def cam_check_file(base: Path, set_key: str, method: str, n: int) -> Path:
    """Where a CAM check of ``n`` images of a set by ``method`` is kept."""
    return base / CAM_CHECKS / f"{set_key}-{method}-{n}.json"


def graph_file(base: Path, digest: str) -> Path:
    """Where the ONNX graph of the weights whose tensors hash to ``digest`` is kept."""
    return base / GRAPHS / f"{digest[:32]}.onnx"
