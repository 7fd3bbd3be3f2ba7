"""The Runs, Compare and Predict pages' view of the run store: progress lines, labels
and the runs table."""

from __future__ import annotations

import time
from pathlib import PurePath

import numpy as np
import pandas as pd

from cxr_core.data.sources import is_synthetic_spec
from cxr_core.errors import UserError
from cxr_core.predict import adaptation_catalogue, ensembles
from cxr_core.predict.evalsets import fingerprint, run_sets
from cxr_core.scoring.metrics import roc_auc
from cxr_core.store import records
from cxr_core.store.runs import ACTIVE, Run, RunStore


def format_duration(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


PREPARING = ("decoding images", "computing features")
"""Phases before the first epoch, reported with their own progress and ETA."""


def run_progress(status: dict, epochs: int | None) -> tuple[float, str]:
    """Fraction done (0..1) and a one-line description, from a run's status.json."""
    state = status.get("status", "queued")
    if state not in ACTIVE:
        return (1.0 if state == "completed" else 0.0), state
    epoch, step, steps = status.get("epoch"), status.get("step"), status.get("steps")
    phase = status.get("phase") or state
    if phase.startswith(PREPARING) and status.get("progress") is not None:
        # Decoding images or computing cached features: minutes on a CPU, with an ETA.
        eta = status.get("eta_s")
        return status["progress"], phase + (f" · ETA {format_duration(eta)}" if eta else "")
    if not (epoch and steps and epochs):
        return 0.0, phase
    fraction = min(((epoch - 1) * steps + (step or 0)) / (epochs * steps), 1.0)
    parts = [phase, f"epoch {epoch}/{epochs}", f"step {step}/{steps}"]
    if status.get("images_per_s"):
        parts.append(f"{status['images_per_s']:.0f} img/s")
    if status.get("eta_s") is not None and phase == "training":
        parts.append(f"ETA {format_duration(status['eta_s'])}")
    return fraction, " · ".join(parts)


def is_synthetic_run(run: Run) -> bool:
    """Trained or evaluated on the synthetic demo data (split.json / evaluation.json)."""
    evaluation = run.evaluation() or {}
    if "synthetic" in evaluation:
        return bool(evaluation["synthetic"])
    split = run.split() or {}
    return bool(split.get("synthetic")) or is_synthetic_spec(run.config().get("data"))


def run_label(run: Run) -> str:
    """How a run is named in pickers: id, architecture, and its origin."""
    tags = [run.config().get("arch") or "?"]
    if run.bundled:
        tags.append("bundled")
    if is_synthetic_run(run):
        tags.append("synthetic")
    if adaptation_catalogue.is_adapted(run):
        tags.append("adapted without labels")
    return f"{run.id} ({', '.join(tags)})"


def _test_figures(run: Run) -> dict:
    """The run's test AUCs, each beside the set it comes from: its recorded test split (an
    internal split or a test/ folder) and the biggest outside set it was scored on since."""
    evaluation = run.evaluation()
    name, test = (evaluation or {}).get("test_split"), records.report_on_test(evaluation)
    out = {
        "test AUC": round(test["roc_auc"], 3) if test else None,
        "test set": f"{name} ({test['n']} images)" if test else "",
        "outside AUC": None,
        "outside set": "",
    }
    if run.evaluations_dir.is_dir():  # only sets added since training can be new here
        recorded = fingerprint(test["paths"]) if test and "paths" in test else None
        added = [
            s
            for s in run_sets(run).values()
            if not s.internal and s.split != "official_val" and s.key != recorded
        ]
        outside = max(added, key=lambda s: s.n, default=None)
        if outside is not None:
            out["outside AUC"] = round(roc_auc(outside.labels, outside.probs), 3)
            out["outside set"] = outside.name
    return out


def _data_name(run: Run, data: str | None) -> str:
    """What a run learned from, short: the synthetic demo or its folder's name (the whole
    path made the table too wide), and whether it shipped with CXR Lab."""
    name = "synthetic" if is_synthetic_run(run) else PurePath(data or "").name
    return f"{name} (bundled)" if run.bundled else name


def runs_table(runs: list[Run], statuses: dict[str, dict] | None = None) -> pd.DataFrame:
    """The Runs page's table: one row per run with progress and headline scores, narrow
    enough for a 1400 px screen (the architecture is in the filter and the run's id).

    ``statuses`` (by run id) are the statuses the rest of the page shows: read once, so the
    table's progress and the "Training now" bars never show two moments of a run. What a
    running run is doing (phase, ETA) is on its bar, not here; columns no run fills (no run
    scored on an outside set yet, no message) are left out, so the table fits its page."""
    statuses = statuses or {}
    rows = []
    for run in runs:
        row = run.summary()
        status = statuses.get(run.id) or run.status()
        fraction, _ = run_progress(status, run.config().get("epochs"))
        created = row.get("created")
        rows.append(
            {
                "run": run.id,
                "status": status.get("status"),
                "progress": fraction,
                "val AUC": row["val_auc"],
                **_test_figures(run),
                "data": _data_name(run, row["data"]),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(created))
                if created
                else "",
                "adapted": adaptation_catalogue.describe(run),
                "message": status.get("message") or "",
            }
        )
    table = pd.DataFrame(rows)
    optional = ("outside AUC", "outside set", "adapted", "message") if rows else ()
    unfilled = [c for c in optional if not (table[c].notna() & table[c].ne("")).any()]
    return table.drop(columns=unfilled)


def _weights_on_disk(run: Run) -> bool:
    """Whether every weights file ``run`` predicts with is here (an ensemble's members')."""
    try:
        return all(w.exists() for w in ensembles.weights_by_member(run).values())
    except UserError:  # an ensemble whose member is gone
        return False


def model_runs(store: RunStore) -> list[Run]:
    """Runs that can predict: finished, with their weights on disk (an ensemble: all of
    its members', so it is offered only while it can be loaded)."""
    return [r for r in store.list() if r.status()["status"] not in ACTIVE and _weights_on_disk(r)]


def evaluated_runs(store: RunStore) -> list[Run]:
    return [r for r in store.list() if r.evaluation()]
