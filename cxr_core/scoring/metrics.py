"""Binary classification metrics and the decision threshold, computed from probabilities.

numpy only (the curves and the per-class report come from :mod:`cxr_core.scoring.curves`):
scoring a set or drawing a page needs no scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cxr_core.scoring.curves import class_report, pr_points, roc_points
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


CountMetric = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(TP, FP, FN, TN) -> value, element-wise over arrays of counts; NaN where undefined."""
DrawnMetric = Callable[[np.ndarray, np.ndarray, float, np.ndarray], np.ndarray]
"""(labels, probabilities, threshold, draws) -> one value per row of ``draws``
``[resample, image]`` (how often each image is drawn): the metric on every bootstrap
resample at once, equal to :data:`Metric` on each resample's repeated images."""


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.full(num.shape, math.nan), where=den != 0)


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


def _drawn_roc_auc(
    labels: np.ndarray, probs: np.ndarray, _threshold: float, draws: np.ndarray
) -> np.ndarray:
    """:func:`roc_auc` of each resample: each positive's drawn negatives below (and half
    those tied), from cumulative draws over the sorted negatives, weighted by its draws."""
    pos = labels == 1
    order = np.argsort(probs[~pos], kind="stable")
    negatives, x = probs[~pos][order], probs[pos]
    below = np.hstack([np.zeros((len(draws), 1)), np.cumsum(draws[:, ~pos][:, order], axis=1)])
    lo, hi = np.searchsorted(negatives, x, "left"), np.searchsorted(negatives, x, "right")
    pairs = (draws[:, pos] * (below[:, lo] + below[:, hi])).sum(axis=1)
    n_pos, n_neg = draws[:, pos].sum(axis=1), draws[:, ~pos].sum(axis=1)
    return _ratio(pairs, 2 * n_pos * n_neg)


def _drawn_average_precision(
    labels: np.ndarray, probs: np.ndarray, _threshold: float, draws: np.ndarray
) -> np.ndarray:
    """:func:`average_precision` of each resample: the tie groups of the scores, highest
    first, with each resample's drawn hits and films summed per group; a group not drawn
    adds no recall."""
    order = np.argsort(-probs, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(probs[order]) != 0])
    hits = np.add.reduceat(draws[:, order] * (labels[order] == 1), starts, axis=1)
    films = np.add.reduceat(draws[:, order], starts, axis=1)
    tp, called = np.cumsum(hits, axis=1), np.cumsum(films, axis=1)
    n_pos, n = tp[:, -1], called[:, -1]
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    gain = np.divide(hits, n_pos[:, None], out=np.zeros_like(hits), where=n_pos[:, None] > 0)
    return np.where((n_pos > 0) & (n_pos < n), (gain * precision).sum(axis=1), math.nan)


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
    drawn: DrawnMetric | None = None
    """The same metric on many resamples at once: the bootstrap then takes a thousand
    resamples in a few matrix products instead of a loop (else it calls ``compute``)."""

    @classmethod
    def of_counts(
        cls, key: str, label: str, counts: CountMetric, glossary: str, **kw: bool
    ) -> MetricInfo:
        """A metric of the confusion counts alone (accuracy, sensitivity, ...)."""

        def compute(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
            return float(counts(*map(np.float64, _counts(labels, probs, threshold))))

        def drawn(labels: np.ndarray, probs: np.ndarray, threshold: float, draws: np.ndarray):
            called, positive = decide(probs, threshold).astype(bool), labels == 1
            cells = (called & positive, called & ~positive, ~called & positive, ~called & ~positive)
            return counts(*(draws @ cell for cell in cells))

        return cls(key, label, compute, glossary, drawn=drawn, **kw)


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
    MetricInfo.of_counts(
        "accuracy",
        "accuracy",
        lambda tp, fp, fn, tn: _ratio(tp + tn, tp + fp + fn + tn),
        "Share of images labelled correctly at the threshold.",
    ),
    MetricInfo.of_counts(
        "sensitivity",
        "sensitivity",
        lambda tp, fp, fn, tn: _ratio(tp, tp + fn),
        "Share of pneumonia images the model calls pneumonia (recall, true positive rate). "
        "Low sensitivity means missed cases.",
    ),
    MetricInfo.of_counts(
        "specificity",
        "specificity",
        lambda tp, fp, fn, tn: _ratio(tn, tn + fp),
        "Share of normal images the model calls normal (true negative rate). Low "
        "specificity means false alarms.",
    ),
    MetricInfo.of_counts(
        "precision",
        "PPV",
        lambda tp, fp, fn, tn: _ratio(tp, tp + fp),
        "Positive predictive value (precision): of the images called pneumonia, the share "
        "that are. Depends on the prevalence of the set.",
    ),
    MetricInfo.of_counts(
        "npv",
        "NPV",
        lambda tp, fp, fn, tn: _ratio(tn, tn + fn),
        "Negative predictive value: of the images called normal, the share that are.",
    ),
    MetricInfo.of_counts(
        "f1",
        "F1",
        lambda tp, fp, fn, tn: _ratio(2 * tp, 2 * tp + fp + fn),
        "Harmonic mean of PPV and sensitivity.",
        percent=False,
    ),
    MetricInfo(
        "roc_auc",
        "AUC",
        lambda labels, probs, _threshold: roc_auc(labels, probs),
        "Area under the ROC curve: the chance that a random pneumonia image scores higher "
        "than a random normal one. 0.5 is guessing, 1.0 is perfect ranking; it does not "
        "depend on the decision threshold.",
        percent=False,
        thresholded=False,
        drawn=_drawn_roc_auc,
    ),
    MetricInfo(
        "pr_auc",
        "AP",
        lambda labels, probs, _threshold: average_precision(labels, probs),
        "Average precision (area under the precision-recall curve). A random model scores "
        "the share of pneumonia images.",
        percent=False,
        thresholded=False,
        drawn=_drawn_average_precision,
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


CRITERIA = {
    "youden": "Youden's J",
    "plateau": "Youden's J",
    "sensitivity": "specificity at the target sensitivity",
    "specificity": "sensitivity at the target specificity",
}
"""What each threshold rule maximises on validation (its plateau is judged on it)."""
_EPS = 1e-6  # probabilities are kept this far from 0 and 1 (a logit must stay finite)


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold chosen on validation and its plateau: every threshold from ``low`` to
    ``high`` scores within one standard error of the best on the rule's criterion, so the
    split cannot tell them apart. None for the bounds where nothing was chosen (the fixed
    rule, one class), and in records written before plateaus were kept."""

    threshold: float
    low: float | None
    high: float | None
    rule: str

    def record(self) -> dict:
        """The bounds as evaluation.json keeps them beside ``threshold``."""
        return {"threshold_low": self.low, "threshold_high": self.high}

    @classmethod
    def from_record(cls, evaluation: dict | None) -> ThresholdChoice | None:
        """What an evaluation record kept, or None for one without bounds."""
        evaluation = evaluation or {}
        low, high = evaluation.get("threshold_low"), evaluation.get("threshold_high")
        if low is None or high is None or "threshold" not in evaluation:
            return None
        method = evaluation.get("threshold_method", "youden")
        return cls(float(evaluation["threshold"]), float(low), float(high), method)

    def sentence(self) -> str:
        """'any threshold from 0.09 to 0.71 gives the same validation Youden's J ...'."""
        criterion = CRITERIA.get(self.rule, "criterion")
        return (
            f"any threshold from {_shown(self.low)} to {_shown(self.high)} gives the same "
            f"validation {criterion}, within its sampling noise (one standard error)"
        )


def _shown(p: float | None) -> str:
    """Three decimals, or as many more as keep a value off 0 and 1 (0.99997, not 1.000)."""
    for digits in range(3, 9):
        text = f"{p:.{digits}f}"
        if 0 < float(text) < 1:
            return text
    return f"{p:.3g}"


def _binomial_se(successes: float, n: int) -> float:
    """Standard error of a proportion with one pseudo-success and one pseudo-failure
    (Agresti-Coull style): a split scored perfectly still has sampling noise."""
    p = (successes + 1) / (n + 2)
    return math.sqrt(p * (1 - p) / n)


def _plateau(criterion: np.ndarray, allowed: np.ndarray, se: float) -> tuple[int, int, int]:
    """(best, first, last): the allowed point of highest criterion (the first of ties) and
    the contiguous stretch of allowed points around it within ``se`` of it."""
    best = int(np.flatnonzero(allowed)[np.argmax(criterion[allowed])])
    near = allowed & (criterion >= criterion[best] - se - 1e-12)
    first, last = best, best
    while first > 0 and near[first - 1]:
        first -= 1
    while last + 1 < len(near) and near[last + 1]:
        last += 1
    return best, first, last


def threshold_choice(
    labels: np.ndarray,
    probs: np.ndarray,
    method: str,
    target_sensitivity: float = 0.95,
    target_specificity: float = 0.90,
) -> ThresholdChoice:
    """Threshold from validation data, with its plateau (:class:`ThresholdChoice`).

    Rules: Youden's J (max sens + spec - 1); the highest threshold that still reaches
    ``target_sensitivity`` (maximising specificity), or the lowest that keeps
    ``target_specificity`` (maximising sensitivity); "fixed" keeps 0.5. The plateau is
    the stretch of thresholds whose criterion lies within one binomial standard error
    (at the split's class counts) of the best: Breiman's one-standard-error rule, so on
    a saturated split, where many thresholds tie, it is wide. "plateau" takes the centre
    of Youden's plateau in log-odds, away from both edges; a temperature (which scales
    log-odds) moves it with the scores, so it keeps the same decisions.

    The other rules return a threshold midway between the chosen score and the next
    lower one (or 0): the same decisions on validation, but no image sits on the
    threshold, where another CPU's arithmetic (a change in the 7th decimal) would flip
    its label.
    """
    if method == "fixed" or len(np.unique(labels)) < 2:
        return ThresholdChoice(0.5, None, None, method)
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    fpr, tpr, thresholds = (points[1:] for points in roc_points(labels, probs, False))
    n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
    if method == "sensitivity":  # thresholds fall along the curve: allowed is a suffix
        allowed, criterion = tpr >= target_sensitivity, 1 - fpr
        se = _binomial_se(n_neg * criterion[np.argmax(allowed)], n_neg)
    elif method == "specificity":  # allowed is a prefix, its last point the best
        allowed, criterion = 1 - fpr >= target_specificity, tpr
        se = _binomial_se(n_pos * criterion[np.flatnonzero(allowed)[-1]], n_pos)
    else:
        allowed, criterion = np.ones(len(tpr), bool), tpr - fpr
        top = int(np.argmax(criterion))
        se = math.hypot(
            _binomial_se(n_pos * tpr[top], n_pos), _binomial_se(n_neg * (1 - fpr[top]), n_neg)
        )
    best, first, last = _plateau(criterion, allowed, se)
    if method == "specificity":  # the lowest threshold keeping the target, of equal tpr
        best = int(np.flatnonzero(allowed)[-1])
    below = np.append(thresholds[1:], 0.0)
    low, high = float(below[last]), float(thresholds[first])
    if method == "plateau":
        log_odds = [math.log(p / (1 - p)) for p in np.clip([low, high], _EPS, 1 - _EPS)]
        chosen = 1 / (1 + math.exp(-sum(log_odds) / 2))
    else:
        chosen = (thresholds[best] + below[best]) / 2
    return ThresholdChoice(float(np.clip(chosen, _EPS, 1 - _EPS)), low, high, method)


def choose_threshold(
    labels: np.ndarray, probs: np.ndarray, *rule: str | float, **options: float
) -> float:
    """The threshold alone of :func:`threshold_choice` (the same arguments)."""
    return threshold_choice(labels, probs, *rule, **options).threshold


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
        "confusion_matrix": confusion(labels, probs, threshold),
        "classification_report": class_report(labels, pred),
        "labels": labels.tolist(),
        "probs": probs.tolist(),  # exact: metrics read back from the record agree
    }
    if paths is not None:
        report["paths"] = list(paths)
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_points(labels, probs)
        precision, recall = pr_points(labels, probs)
        report["roc"] = {"fpr": _thin(fpr), "tpr": _thin(tpr)}
        report["pr"] = {"recall": _thin(recall[::-1]), "precision": _thin(precision[::-1])}
    return report
