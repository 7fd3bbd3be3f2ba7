"""A run's calibration on an image set, for Compare and the report: reliability, ECE and
Brier before and after a temperature, which is fitted on the run's validation scores
(never on the compared set) and kept beside the run."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from cxr_core.analysis.comparison import split_set
from cxr_core.errors import UserError
from cxr_core.predict.evalsets import EvalSet
from cxr_core.scoring import calibration
from cxr_core.store.records import Calibration
from cxr_core.store.runs import Run


def fit_temperature(run: Run) -> Calibration:
    """Fit a temperature on the run's VALIDATION scores (never a test set) and keep it
    beside the run; the saved run, its weights and threshold are unchanged."""
    val = split_set(run, "val")
    if val is None:
        raise UserError(f"run {run.id} kept no validation scores to fit a temperature on")
    record: Calibration = {
        "temperature": calibration.fit_temperature(val.labels, val.probs),
        "fitted_on": val.key,
        "split": val.split,
        "n": val.n,
        "created": time.time(),
    }
    run.save_calibration(record)
    return record


def calibration_summary(evalset: EvalSet, temperature: float | None = None) -> dict:
    """Reliability bins, ECE and Brier score of ``evalset``, and the same after
    temperature scaling when a temperature is given (under ``after``)."""

    def assess(probs: np.ndarray) -> dict:
        return {
            "bins": calibration.reliability_bins(evalset.labels, probs),
            "ece": calibration.expected_calibration_error(evalset.labels, probs),
            "brier": calibration.brier_score(evalset.labels, probs),
        }

    out = {"before": assess(evalset.probs)}
    if temperature is not None:
        out["temperature"] = temperature
        out["after"] = assess(calibration.apply_temperature(evalset.probs, temperature))
    return out


def calibration_summaries(runs: list[Run], sets: dict[str, EvalSet]) -> dict[str, dict]:
    """:func:`calibration_summary` of each run on its set in ``sets`` (by run id), after
    its saved temperature when it has one."""
    out = {}
    for run in runs:
        saved = run.calibration()
        out[run.id] = calibration_summary(sets[run.id], saved and saved["temperature"])
    return out


def calibration_table(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per run of :func:`calibration_summaries`: ECE and Brier, and the temperature
    with ECE and Brier after it for the runs that have one."""
    rows = []
    for run_id, summary in summaries.items():
        row = {"run": run_id, "ECE": summary["before"]["ece"], "Brier": summary["before"]["brier"]}
        if "after" in summary:
            row |= {
                "temperature": summary["temperature"],
                "ECE after": summary["after"]["ece"],
                "Brier after": summary["after"]["brier"],
            }
        rows.append(row)
    return pd.DataFrame(rows)
