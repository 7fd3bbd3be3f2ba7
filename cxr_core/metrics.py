"""Binary classification metrics and the decision threshold, computed from probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxr_core.settings import CLASSES


def _safe_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")


def summary(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, sensitivity (recall), specificity, F1, ROC-AUC, PR-AUC."""
    labels = np.asarray(labels).astype(int)
    pred = (np.asarray(probs) >= threshold).astype(int)
    tp = int(((pred == 1) & (labels == 1)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / max(len(labels), 1),
        "precision": precision,
        "sensitivity": recall,
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": _safe_auc(labels, probs),
        "pr_auc": (
            float(average_precision_score(labels, probs))
            if len(np.unique(labels)) == 2
            else float("nan")
        ),
    }


def choose_threshold(
    labels: np.ndarray,
    probs: np.ndarray,
    method: str = "youden",
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.90,
) -> float:
    """Threshold from validation data: Youden's J (max sens + spec - 1), the highest
    threshold that still reaches ``target_sensitivity``, or the lowest one that keeps
    ``target_specificity`` (fewer false alarms where the test films look unlike the
    training ones); "fixed" keeps 0.5.

    The ROC curve's thresholds are validation scores themselves. The one returned lies
    midway between the chosen score and the next lower one (or 0): the same decisions on
    validation, but no image sits on the threshold, where another CPU's arithmetic (a
    change in the 7th decimal) would flip its label.
    """
    if method == "fixed" or len(np.unique(labels)) < 2:
        return 0.5
    probs = np.asarray(probs, dtype=float)
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if method == "sensitivity":
        index = int(np.argmax(tpr >= target_sensitivity))
    elif method == "specificity":
        index = int(np.flatnonzero(1 - fpr >= target_specificity)[-1])
    else:
        index = int(np.argmax(tpr - fpr))
    chosen = thresholds[index]
    below = probs[probs < chosen].max(initial=0.0)
    return float(np.clip((chosen + below) / 2, 1e-6, 1 - 1e-6))


def _thin(points: np.ndarray, most: int = 400) -> list[float]:
    """Keep curves light in JSON: at most ``most`` points, ends included."""
    if len(points) <= most:
        return [round(float(v), 5) for v in points]
    keep = np.unique(np.linspace(0, len(points) - 1, most).round().astype(int))
    return [round(float(v), 5) for v in points[keep]]


def full_report(
    labels: np.ndarray, probs: np.ndarray, threshold: float, paths: list[str] | None = None
) -> dict:
    """Everything the Compare page draws: metrics, confusion matrix, ROC/PR points,
    the per-class report and per-sample probabilities."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    pred = (probs >= threshold).astype(int)
    report = {
        "n": len(labels),
        "threshold": threshold,
        **summary(labels, probs, threshold),
        "confusion_matrix": confusion_matrix(labels, pred, labels=[0, 1]).tolist(),
        "classification_report": classification_report(
            labels,
            pred,
            labels=[0, 1],
            target_names=list(CLASSES),
            output_dict=True,
            zero_division=0,
        ),
        "labels": labels.tolist(),
        "probs": [round(float(p), 6) for p in probs],
    }
    if paths is not None:
        report["paths"] = list(paths)
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, probs)
        precision, recall, _ = precision_recall_curve(labels, probs)
        report["roc"] = {"fpr": _thin(fpr), "tpr": _thin(tpr)}
        report["pr"] = {"recall": _thin(recall[::-1]), "precision": _thin(precision[::-1])}
    return report
