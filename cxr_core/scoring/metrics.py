"""Binary classification metrics and the decision threshold, computed from probabilities."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
    precision_recall_curve,
    roc_curve,
)

from cxr_core.settings import CLASSES

Metric = Callable[[np.ndarray, np.ndarray, float], float]
"""(labels, probabilities, threshold) -> value; NaN where it is undefined."""


def decide(probs: np.ndarray | Sequence[float] | float, threshold: float) -> np.ndarray:
    """The decision rule, written once: 1 (PNEUMONIA) where the probability is at or above
    the threshold, else 0. Every count, label and gallery reads its decisions here, so they
    always agree with the confusion matrix. A scalar gives a 0-d array (``int()`` it); the
    probabilities keep their dtype, as float32 scores are compared in float32."""
    return (np.asarray(probs) >= threshold).astype(int)


def decided_class(probability: float, threshold: float) -> str:
    """The class name :func:`decide` gives one probability: "PNEUMONIA" or "NORMAL"."""
    return CLASSES[int(decide(probability, threshold))]


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _counts(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[int, ...]:
    pred = decide(probs, threshold)
    pos = labels == 1
    tp = int(np.count_nonzero(pred & pos))
    fp = int(np.count_nonzero(pred & ~pos))
    fn = int(np.count_nonzero(pos)) - tp
    tn = len(labels) - tp - fp - fn
    return tp, fp, fn, tn


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mann-Whitney AUC, ties counting one half; NaN with one class only.

    Counts the negatives below (and tied with) each positive by binary search: several
    times cheaper than ranking, which matters a thousand resamples over.
    """
    pos = labels == 1
    x, y = probs[pos], np.sort(probs[~pos])
    if not len(x) or not len(y):
        return math.nan
    below = np.searchsorted(y, x, "left").sum() + np.searchsorted(y, x, "right").sum()
    return float(below / (2 * len(x) * len(y)))


def average_precision(labels: np.ndarray, probs: np.ndarray) -> float:
    """Step-wise average precision, as sklearn's average_precision_score; NaN without positives.

    Kept in numpy because a bootstrap calls it a thousand times and sklearn's input
    checks cost more than the sum itself.
    """
    n_pos = int(np.count_nonzero(labels == 1))
    if not n_pos or n_pos == len(labels):
        return math.nan
    order = np.argsort(-probs)
    sorted_probs, hits = probs[order], labels[order] == 1
    last_of_tie = np.flatnonzero(np.append(np.diff(sorted_probs), -1.0))
    tp = np.cumsum(hits)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_gain = np.diff(tp, prepend=0) / n_pos
    return float(np.sum(recall_gain * precision))


def _accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    tp, _, _, tn = _counts(labels, probs, threshold)
    return _ratio(tp + tn, len(labels))


def _precision(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    tp, fp, _, _ = _counts(labels, probs, threshold)
    return _ratio(tp, tp + fp)


def _npv(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    _, _, fn, tn = _counts(labels, probs, threshold)
    return _ratio(tn, tn + fn)


def _sensitivity(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    tp, _, fn, _ = _counts(labels, probs, threshold)
    return _ratio(tp, tp + fn)


def _specificity(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    _, fp, _, tn = _counts(labels, probs, threshold)
    return _ratio(tn, tn + fp)


def _f1(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    tp, fp, fn, _ = _counts(labels, probs, threshold)
    return _ratio(2 * tp, 2 * tp + fp + fn)


@dataclass(frozen=True)
class MetricInfo:
    """One entry of the catalogue: how a metric is named, shown, explained and computed."""

    key: str
    label: str
    compute: Metric
    glossary: str
    percent: bool = True
    """Shown as 91.2% (else as 0.984)."""
    thresholded: bool = True
    """Depends on the decision threshold (AUCs do not)."""


CATALOGUE: dict[str, MetricInfo] = {}
"""Every metric CXR Lab reports, in display order: the CLI, the Runs and Compare pages,
the README table and the confidence intervals all read this. Add a metric here, and it
appears everywhere, for old and bundled runs too: metrics are computed when read, from
the per-image probabilities every evaluation stores."""


def register_metric(info: MetricInfo) -> None:
    if info.key in CATALOGUE:
        raise ValueError(f"metric {info.key!r} is registered twice")
    CATALOGUE[info.key] = info


for _info in (
    MetricInfo(
        "accuracy", "accuracy", _accuracy, "Share of images labelled correctly at the threshold."
    ),
    MetricInfo(
        "sensitivity",
        "sensitivity",
        _sensitivity,
        "Share of pneumonia images the model calls pneumonia (recall, true positive rate). "
        "Low sensitivity means missed cases.",
    ),
    MetricInfo(
        "specificity",
        "specificity",
        _specificity,
        "Share of normal images the model calls normal (true negative rate). Low "
        "specificity means false alarms.",
    ),
    MetricInfo(
        "precision",
        "PPV",
        _precision,
        "Positive predictive value (precision): of the images called pneumonia, the share "
        "that are. Depends on the prevalence of the set.",
    ),
    MetricInfo(
        "npv",
        "NPV",
        _npv,
        "Negative predictive value: of the images called normal, the share that are.",
    ),
    MetricInfo("f1", "F1", _f1, "Harmonic mean of PPV and sensitivity.", percent=False),
    MetricInfo(
        "roc_auc",
        "AUC",
        lambda labels, probs, _threshold: roc_auc(labels, probs),
        "Area under the ROC curve: the chance that a random pneumonia image scores higher "
        "than a random normal one. 0.5 is guessing, 1.0 is perfect ranking; it does not "
        "depend on the decision threshold.",
        percent=False,
        thresholded=False,
    ),
    MetricInfo(
        "pr_auc",
        "AP",
        lambda labels, probs, _threshold: average_precision(labels, probs),
        "Average precision (area under the precision-recall curve). A random model scores "
        "the share of pneumonia images.",
        percent=False,
        thresholded=False,
    ),
):
    register_metric(_info)


def summary(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every catalogue metric at ``threshold`` (NaN where undefined)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    return {key: info.compute(labels, probs, threshold) for key, info in CATALOGUE.items()}


def confusion(labels: np.ndarray, probs: np.ndarray, threshold: float) -> list[list[int]]:
    """``[[TN, FP], [FN, TP]]``: rows are the true class, columns the decision."""
    tp, fp, fn, tn = _counts(np.asarray(labels).astype(int), np.asarray(probs, float), threshold)
    return [[tn, fp], [fn, tp]]


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
    pred = decide(probs, threshold)
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
        "probs": probs.tolist(),  # exact: metrics read back from the record agree
    }
    if paths is not None:
        report["paths"] = list(paths)
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, probs)
        precision, recall, _ = precision_recall_curve(labels, probs)
        report["roc"] = {"fpr": _thin(fpr), "tpr": _thin(tpr)}
        report["pr"] = {"recall": _thin(recall[::-1]), "precision": _thin(precision[::-1])}
    return report
