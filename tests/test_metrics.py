"""The decision threshold chosen on validation, and the report drawn from it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxr_core.scoring.metrics import (
    CATALOGUE,
    MetricInfo,
    choose_threshold,
    decide,
    decided_class,
    full_report,
    register_metric,
)


def _decisions_at_every_score(labels, probs):
    """(score, sensitivity, specificity) for each distinct score as the threshold."""
    out = []
    for score in np.unique(probs):
        pred = probs >= score
        out.append((score, pred[labels == 1].mean(), 1 - pred[labels == 0].mean()))
    return out


def _scores(seed: int, n: int = 400):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # Overlapping classes, float32 like a model's sigmoid, some ties.
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).astype(np.float32)
    probs[:20] = probs[20:40]
    return labels, probs.astype(float)


def test_thresholds_on_a_small_case_worked_by_hand():
    labels, probs = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    # J is 0.5 at 0.8 and at 0.35; the higher score wins, and the threshold sits midway
    # to the next lower score, 0.4.
    assert choose_threshold(labels, probs, "youden") == pytest.approx(0.6)
    # Sensitivity 1 first at 0.35; midway to 0.1.
    assert choose_threshold(labels, probs, "sensitivity", 0.95) == pytest.approx(0.225)
    assert choose_threshold(labels, probs, "fixed") == 0.5
    assert choose_threshold(np.ones(4), probs, "youden") == 0.5  # one class: nothing to pick


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_keeps_the_best_decisions_with_no_score_on_it(seed):
    labels, probs = _scores(seed)
    threshold = choose_threshold(labels, probs, "youden")
    best = max(sens + spec for _, sens, spec in _decisions_at_every_score(labels, probs))
    pred = probs >= threshold
    assert pred[labels == 1].mean() + 1 - pred[labels == 0].mean() == pytest.approx(best)
    # Midway between two neighbouring scores: equally far from the nearest on each side.
    above, below = probs[probs > threshold].min(), probs[probs < threshold].max()
    assert threshold - below == pytest.approx(above - threshold)
    # So a change far smaller than that gap (another CPU's rounding) flips no label.
    wobble = np.random.default_rng(seed).uniform(-1e-6, 1e-6, probs.shape)
    gap = above - below
    assert ((probs + wobble * gap) >= threshold).tolist() == pred.tolist()


@pytest.mark.parametrize("target", [0.8, 0.95, 1.0])
def test_sensitivity_threshold_is_the_highest_that_reaches_the_target(target):
    labels, probs = _scores(7)
    threshold = choose_threshold(labels, probs, "sensitivity", target)
    reaching = [s for s, sens, _ in _decisions_at_every_score(labels, probs) if sens >= target]
    assert ((probs >= threshold) == (probs >= max(reaching))).all()
    assert not np.isin(threshold, probs)


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_specificity_threshold_is_the_lowest_that_keeps_the_target(target):
    labels, probs = _scores(8)
    threshold = choose_threshold(labels, probs, "specificity", target_specificity=target)
    keeping = [s for s, _, spec in _decisions_at_every_score(labels, probs) if spec >= target]
    assert ((probs >= threshold) == (probs >= min(keeping))).all()
    assert not np.isin(threshold, probs)


def test_full_report_counts_at_the_threshold():
    labels, probs = _scores(3, n=100)
    threshold = choose_threshold(labels, probs)
    report = full_report(labels, probs, threshold, [f"img{i}.png" for i in range(100)])
    (tn, fp), (fn, tp) = report["confusion_matrix"]
    pred = probs >= threshold
    assert (tp, fn) == (int(pred[labels == 1].sum()), int((~pred[labels == 1]).sum()))
    assert (tn, fp) == (int((~pred[labels == 0]).sum()), int(pred[labels == 0].sum()))
    assert report["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert report["specificity"] == pytest.approx(tn / (tn + fp))
    assert report["n"] == 100 and report["threshold"] == threshold


@pytest.mark.parametrize("seed", range(3))
def test_catalogue_agrees_with_sklearn(seed):
    """The catalogue's numpy metrics (fast enough for a thousand bootstrap resamples)
    give sklearn's values, ties included."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    probs = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)
    pred = (probs >= 0.5).astype(int)
    reference = {
        "accuracy": accuracy_score(labels, pred),
        "sensitivity": recall_score(labels, pred),
        "specificity": recall_score(1 - labels, 1 - pred),
        "precision": precision_score(labels, pred),
        "npv": precision_score(1 - labels, 1 - pred),
        "f1": f1_score(labels, pred),
        "roc_auc": roc_auc_score(labels, probs),
        "pr_auc": average_precision_score(labels, probs),
    }
    assert set(CATALOGUE) == set(reference)
    for key, info in CATALOGUE.items():
        assert info.compute(labels, probs, 0.5) == pytest.approx(reference[key], abs=1e-12), key


def test_catalogue_metrics_are_nan_where_undefined_not_zero():
    labels, probs = np.zeros(5, dtype=int), np.array([0.1, 0.2, 0.6, 0.7, 0.9])
    for key in ("sensitivity", "roc_auc", "pr_auc"):
        assert np.isnan(CATALOGUE[key].compute(labels, probs, 0.5)), key
    assert np.isnan(CATALOGUE["precision"].compute(labels, probs, 0.95))
    assert CATALOGUE["specificity"].compute(labels, probs, 0.5) == pytest.approx(0.4)


def test_a_metric_is_registered_once():
    with pytest.raises(ValueError, match="twice"):
        register_metric(MetricInfo("accuracy", "again", CATALOGUE["accuracy"].compute, ""))


def test_decide_is_at_or_above_the_threshold_for_arrays_and_scalars():
    probs = np.array([0.1, 0.3, 0.30001, 0.9])
    assert decide(probs, 0.3).tolist() == [0, 1, 1, 1]
    assert decide(probs, 0.3).dtype.kind == "i"
    assert int(decide(0.3, 0.3)) == 1 and int(decide(0.29, 0.3)) == 0
    assert (decided_class(0.3, 0.3), decided_class(0.29, 0.3)) == ("PNEUMONIA", "NORMAL")
    # float32 scores are compared in float32: 0.3 as float32 is the threshold 0.3 there
    assert int(decide(np.float32(0.3), 0.3)) == 1
    assert decide(np.array([0.3], dtype=np.float32), 0.3).tolist() == [1]


def test_the_decision_rule_is_written_once():
    """Counts, labels, galleries and badges all decide through :func:`decide`."""
    root = Path(__file__).resolve().parents[1]
    rule = re.compile(r"(>=|<)\s*[\w.]*(threshold|thr_\w)\b")
    found = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("cxr_core", "pages")
        for path in sorted((root / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if rule.search(line)
    ]
    assert [f.split(":")[0] for f in found] == ["cxr_core/scoring/metrics.py"], found
