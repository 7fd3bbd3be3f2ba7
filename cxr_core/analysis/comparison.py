"""Runs side by side on one evaluation set, shared by the CLI's ``compare``, the Compare
page and the report: what each run is, what it costs, and every catalogue metric with its
patient-bootstrap 95% interval."""

from __future__ import annotations

import pandas as pd

from cxr_core.predict.evalsets import EvalSet
from cxr_core.scoring.metrics import CATALOGUE
from cxr_core.store.runs import Run


def run_facts(run: Run) -> dict:
    """What a run is and what it cost, from its record."""
    config, evaluation = run.config(), run.evaluation() or {}
    return {
        "run": run.id,
        "arch": config.get("arch"),
        "pretrained": config.get("pretrained"),
        "img_size": config.get("img_size"),
        "params_M": round(evaluation.get("params", 0) / 1e6, 2) if evaluation else None,
        "size_mb": evaluation.get("file_mb"),
        "train_min": round(evaluation.get("train_time_s", 0) / 60, 1) if evaluation else None,
        "best_epoch": evaluation.get("best_epoch"),
        "latency_ms": evaluation.get("latency_ms"),
    }


def compare_table(runs: list[Run], sets: dict[str, EvalSet]) -> pd.DataFrame:
    """One row per run scored in ``sets`` (by run id): facts, threshold, and for each
    catalogue metric its value and 95% interval (``<key>``, ``<key>_lo``, ``<key>_hi``)."""
    rows = []
    for run in runs:
        evalset = sets[run.id]
        values, ci = evalset.metrics(), evalset.ci95()
        row = {**run_facts(run), "threshold": round(evalset.threshold, 4), "n": evalset.n}
        for key in CATALOGUE:
            lo, hi = ci.get(key, (None, None))
            row |= {key: values[key], f"{key}_lo": lo, f"{key}_hi": hi}
        rows.append(row)
    return pd.DataFrame(rows)
