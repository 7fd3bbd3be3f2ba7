"""A trained run's decision threshold chosen again, on the validation scores its record keeps.

A threshold rule can change long after a run was trained (the plateau rule became the
default); the run's weights and validation scores stay, so the threshold is chosen again
from the record, without a forward pass, and every split's report is recomputed at it.
"""

from __future__ import annotations

import numpy as np

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_files, json_bytes
from cxr_core.models import weights_file
from cxr_core.scoring.metrics import ThresholdChoice, full_report, threshold_choice
from cxr_core.store import records
from cxr_core.store.runs import Run


def rethreshold(
    run: Run,
    method: str,
    target_sensitivity: float | None = None,
    target_specificity: float | None = None,
) -> ThresholdChoice:
    """Choose ``run``'s threshold again by ``method`` on its recorded validation scores;
    its evaluation record and its weights file's threshold are rewritten (the weights
    themselves, and so their digest, stay). Targets default to the run's own."""
    evaluation, config = run.evaluation(), run.config()
    if records.members(config):
        raise UserError(
            f"{run.id} is an ensemble: its threshold is chosen when it is made; make it again "
            "with `ensemble MEMBER ... --threshold-method ...`"
        )
    val = records.split_report(evaluation, "val")
    if "probs" not in val or not run.weights.is_file():
        raise UserError(f"run {run.id} has no recorded validation scores to choose a threshold on")
    targets = {
        "target_sensitivity": target_sensitivity
        or evaluation.get("target_sensitivity", config.get("target_sensitivity", 0.95)),
        "target_specificity": target_specificity
        or evaluation.get("target_specificity", config.get("target_specificity", 0.90)),
    }
    labels, probs = np.asarray(val["labels"]), np.asarray(val["probs"])
    choice = threshold_choice(labels, probs, method, **targets)
    splits = {
        name: full_report(report["labels"], report["probs"], choice.threshold, report.get("paths"))
        for name, report in evaluation["splits"].items()
        if "probs" in report
    }
    evaluation = {
        **evaluation,
        "threshold": choice.threshold,
        "threshold_method": method,
        **targets,
        **choice.record(),
        "splits": {**evaluation["splits"], **splits},
    }
    # Both or neither: predict reads the weights' threshold, the pages the record's.
    atomic_write_files(
        {
            run.weights: weights_file.with_metadata(run.weights, {"threshold": choice.threshold}),
            run.evaluation_file: json_bytes(evaluation),
        }
    )
    return choice
