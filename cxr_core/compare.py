"""Side-by-side summaries of runs, shared by the CLI's ``compare`` and the Compare page."""

from __future__ import annotations

import hashlib

import pandas as pd

from cxr_core.runs import Run

METRICS = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc")


def evaluation_set(run: Run, split: str) -> str | None:
    """A short hash of the files a run was evaluated on: equal hashes, comparable numbers."""
    report = (run.evaluation() or {}).get("splits", {}).get(split)
    if not report or "paths" not in report:
        return None
    return hashlib.sha1("\n".join(report["paths"]).encode()).hexdigest()[:10]


def compare_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what it is, what it costs, how it scores on val and on test."""
    rows = []
    for run in runs:
        config, evaluation = run.config(), run.evaluation() or {}
        splits = evaluation.get("splits", {})
        test = evaluation.get("test_split")
        row = {
            "run": run.id,
            "arch": config.get("arch"),
            "pretrained": config.get("pretrained"),
            "img_size": config.get("img_size"),
            "params_M": round(evaluation.get("params", 0) / 1e6, 2) if evaluation else None,
            "size_mb": evaluation.get("file_mb"),
            "train_min": round(evaluation.get("train_time_s", 0) / 60, 1) if evaluation else None,
            "best_epoch": evaluation.get("best_epoch"),
            "latency_ms": evaluation.get("latency_ms"),
            "threshold": evaluation.get("threshold"),
            "test_set": test,
        }
        for prefix, split in (("val", "val"), ("test", test)):
            report = splits.get(split, {}) if split else {}
            for metric in METRICS:
                value = report.get(metric)
                row[f"{prefix}_{metric}"] = round(value, 4) if value is not None else None
        rows.append(row)
    return pd.DataFrame(rows)
