"""The images a run gets wrong on an evaluation set, most confident first, as the
``errors`` verb (:mod:`cxr_core.cli.evaluate`) lists them.

Decisions are the metrics' own (PNEUMONIA when the probability is at or above the run's
threshold), so the number of mistakes is always the off-diagonal of the confusion matrix
``evaluate`` prints for the same set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_core.predict.evalsets import EvalSet
from cxr_core.settings import CLASSES

_EPS = 1e-7


def decisions(evalset: EvalSet) -> np.ndarray:
    """1 (PNEUMONIA) where the probability reaches the run's threshold, else 0."""
    return (evalset.probs >= evalset.threshold).astype(int)


def margin(probs: np.ndarray, threshold: float) -> np.ndarray:
    """How far each decision lies past the threshold, in log-odds.

    A probability difference would mislead at a threshold of 0.08: a normal film at 0.5
    is called pneumonia far more firmly than a pneumonia film at 0.04 is called normal,
    though both sit about 0.4 away. Log-odds measure both sides on one scale.
    """
    p = np.clip(np.asarray(probs, dtype=float), _EPS, 1 - _EPS)
    t = float(np.clip(threshold, _EPS, 1 - _EPS))
    return np.abs(np.log(p / (1 - p)) - np.log(t / (1 - t)))


def by_confidence(evalset: EvalSet, indices: np.ndarray) -> np.ndarray:
    """``indices`` ordered most confident decision first (ties: by path, for a stable list)."""
    indices = np.asarray(indices, dtype=int)
    confidence = margin(evalset.probs[indices], evalset.threshold)
    paths = np.asarray(evalset.paths, dtype=object)[indices]
    return indices[np.lexsort((paths, -confidence))]


def misclassified(evalset: EvalSet) -> np.ndarray:
    """Indices of the images whose decision differs from their label, most confident first."""
    wrong = np.flatnonzero(decisions(evalset) != evalset.labels)
    return by_confidence(evalset, wrong)


def mistake_records(evalset: EvalSet) -> list[dict]:
    """One record per misclassified image, most confident first, as ``errors --json`` prints."""
    root = Path(evalset.root) if evalset.root else None
    patients = evalset.patients
    called = decisions(evalset)
    margins = margin(evalset.probs, evalset.threshold)
    return [
        {
            "image": str(root / evalset.paths[i]) if root else evalset.paths[i],
            "path": evalset.paths[i],
            "patient": patients[i],
            "label": CLASSES[int(evalset.labels[i])],
            "predicted": CLASSES[int(called[i])],
            "probability": round(float(evalset.probs[i]), 6),
            "threshold": round(evalset.threshold, 6),
            "margin": round(float(margins[i]), 4),
        }
        for i in misclassified(evalset)
    ]
