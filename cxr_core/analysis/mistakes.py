"""The images a run gets wrong on an evaluation set, most confident first, as the
``errors`` verb (:mod:`cxr_core.cli.evaluate`) lists them.

Decisions are the metrics' own (PNEUMONIA when the probability is at or above the run's
threshold), so the number of mistakes is always the off-diagonal of the confusion matrix
``evaluate`` prints for the same set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import UserError
from cxr_core.predict.evalsets import EvalSet
from cxr_core.scoring.metrics import decide
from cxr_core.settings import CLASSES

_EPS = 1e-7


def decisions(evalset: EvalSet) -> np.ndarray:
    """1 (PNEUMONIA) where the probability reaches the run's threshold, else 0."""
    return decide(evalset.probs, evalset.threshold)


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


def _aligned(set_a: EvalSet, set_b: EvalSet) -> np.ndarray:
    """Where each of ``set_a``'s images sits in ``set_b`` (matched by file): a set's order
    is its scoring's, so two runs may list the same images in different orders."""
    if set_a.key != set_b.key:
        raise UserError("the two runs were scored on different images; pick a shared set")
    position = {path: i for i, path in enumerate(set_b.paths)}
    return np.array([position[path] for path in set_a.paths], dtype=int)


def paired_correct(set_a: EvalSet, set_b: EvalSet) -> tuple[np.ndarray, np.ndarray]:
    """Whether each run is right on each image, image for image in ``set_a``'s order, each
    at its own threshold: McNemar's input (``stats.mcnemar_exact``)."""
    order = _aligned(set_a, set_b)
    right_b = decisions(set_b) == set_b.labels
    return decisions(set_a) == set_a.labels, right_b[order]


def discordant(set_a: EvalSet, set_b: EvalSet) -> pd.DataFrame:
    """The images one run gets right and the other wrong (McNemar's discordant pairs),
    the wrong run's most confident mistakes first (ties by file). Columns: file, truth,
    each run's probability and decision (``probability_a``, ``decision_b`` ...), ``right``
    ("A" or "B": the run that is right) and ``confidence``: the wrong run's margin."""
    order = _aligned(set_a, set_b)
    right_a, right_b = paired_correct(set_a, set_b)
    names = np.asarray(CLASSES)
    margin_b = margin(set_b.probs, set_b.threshold)[order]
    pairs = pd.DataFrame(
        {
            "file": set_a.paths,
            "truth": names[set_a.labels.astype(int)],
            "probability_a": set_a.probs.astype(float),
            "decision_a": names[decisions(set_a)],
            "probability_b": set_b.probs[order].astype(float),
            "decision_b": names[decisions(set_b)[order]],
            "right": np.where(right_a, "A", "B"),
            "confidence": np.where(right_a, margin_b, margin(set_a.probs, set_a.threshold)),
        }
    )
    differ = right_a != right_b
    return pairs[differ].sort_values(["confidence", "file"], ascending=[False, True])


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
