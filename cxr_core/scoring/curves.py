"""ROC and precision-recall points and the per-class report, in numpy.

They give scikit-learn's arrays and dict exactly (``tests/test_metrics.py`` checks them
against it), without the second or two scikit-learn's import costs a page or a scoring
process on two cores.
"""

from __future__ import annotations

import math

import numpy as np

from cxr_core.settings import CLASSES


def _at_thresholds(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    """False and true positives at each distinct score taken as the threshold, highest
    first, and those scores: scikit-learn's ``confusion_matrix_at_thresholds``."""
    order = np.argsort(probs, kind="mergesort")[::-1]
    scores, hits = probs[order], labels[order]
    last = np.append(np.flatnonzero(np.diff(scores)), len(scores) - 1)
    tps = np.cumsum(hits)[last].astype(float)
    return 1 + last - tps, tps, scores[last]


def roc_points(
    labels: np.ndarray, probs: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) from (0, 0) at threshold inf, as scikit-learn's ``roc_curve``:
    ``drop_intermediate`` leaves out points collinear with their neighbours."""
    fps, tps, thresholds = _at_thresholds(np.asarray(labels), np.asarray(probs, dtype=float))
    if drop_intermediate and len(fps) > 2:
        bends = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
        corner = np.flatnonzero(np.r_[True, bends, True])
        fps, tps, thresholds = fps[corner], tps[corner], thresholds[corner]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, math.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, math.nan)
    return fpr, tpr, np.r_[math.inf, thresholds]


def pr_points(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall), recall decreasing to (1, 0), as scikit-learn's
    ``precision_recall_curve``."""
    fps, tps, _ = _at_thresholds(np.asarray(labels), np.asarray(probs, dtype=float))
    called = tps + fps
    precision = np.divide(tps, called, out=np.zeros_like(tps), where=called != 0)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


_REPORT_KEYS = ("precision", "recall", "f1-score", "support")


def class_report(labels: np.ndarray, pred: np.ndarray) -> dict:
    """Precision, recall, F1 and support per class, their accuracy and macro and support-
    weighted means: scikit-learn's ``classification_report(output_dict=True,
    zero_division=0)`` over both classes."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    report: dict = {}
    rows = []
    for value, name in enumerate(CLASSES):
        tp = float(np.count_nonzero((pred == value) & (labels == value)))
        called, support = (
            float(np.count_nonzero(pred == value)),
            float(np.count_nonzero(labels == value)),
        )
        row = [
            tp / called if called else 0.0,
            tp / support if support else 0.0,
            2 * tp / (called + support) if called + support else 0.0,
        ]
        rows.append(row)
        report[name] = dict(zip(_REPORT_KEYS, [*row, support], strict=True))
    supports = np.array([report[name]["support"] for name in CLASSES])
    total = float(supports.sum())
    report["accuracy"] = float(np.mean(pred == labels)) if len(labels) else 0.0
    macro = np.mean(rows, axis=0)
    weighted = np.average(rows, axis=0, weights=supports) if total else np.zeros(3)
    report["macro avg"] = dict(zip(_REPORT_KEYS, [*map(float, macro), total], strict=True))
    report["weighted avg"] = dict(zip(_REPORT_KEYS, [*map(float, weighted), total], strict=True))
    return report
