"""The decision threshold chosen on validation, and the report drawn from it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from cxr_core.scoring.calibration import apply_temperature
from cxr_core.scoring.curves import class_report, pr_points, roc_points
from cxr_core.scoring.metrics import (
    CATALOGUE,
    MetricInfo,
    ThresholdChoice,
    choose_threshold,
    decide,
    decided_class,
    full_report,
    register_metric,
    threshold_choice,
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
    threshold = choose_threshold(labels, probs, "plateau")
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


def _plateau_scores(*highest_normals: float):
    """100 NORMAL films (98 at 0.001-0.01, then 0.02 and 0.05) and 100 PNEUMONIA (0.6,
    0.7, then 98 at 0.8-0.99): perfectly separated. ``highest_normals`` replace the top
    NORMAL scores."""
    normal = np.r_[np.linspace(0.001, 0.01, 98), 0.02, 0.05]
    if highest_normals:
        normal[-len(highest_normals) :] = highest_normals
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    return labels, np.r_[normal, 0.6, 0.7, np.linspace(0.8, 0.99, 98)]


def _log_odds_centre(low: float, high: float) -> float:
    centre = (np.log(low / (1 - low)) + np.log(high / (1 - high))) / 2
    return float(1 / (1 + np.exp(-centre)))


@pytest.mark.parametrize(("highest_normals", "youden"), [((), 0.325), ((0.3,), 0.45)])
def test_plateau_rule_takes_the_centre_of_a_known_plateau_in_log_odds(highest_normals, youden):
    """J's standard error at 100 films a class (with one pseudo-count each) is 0.014: one
    error (0.01 of J) is within it, two are not. So every threshold in (0.02, 0.7] ties:
    (0.05, 0.6] is perfect, (0.02, 0.05] calls one NORMAL film pneumonia, (0.6, 0.7]
    misses one pneumonia. A NORMAL film at 0.3 moves Youden's edge rule up beside it;
    the plateau, and its log-odds centre (0.179), stay."""
    labels, probs = _plateau_scores(*highest_normals)
    choice = threshold_choice(labels, probs, "plateau")
    assert (choice.low, choice.high) == pytest.approx((0.02, 0.7))
    assert choice.threshold == pytest.approx(_log_odds_centre(0.02, 0.7))
    edge = threshold_choice(labels, probs, "youden")
    assert (edge.low, edge.high) == (choice.low, choice.high)
    assert edge.threshold == pytest.approx(youden)
    assert "from 0.020 to 0.700 gives the same validation Youden's J" in choice.sentence()


def test_plateau_stops_where_errors_exceed_the_noise():
    """Three NORMAL films at 0.3 cost 0.03 of J below 0.3, beyond its standard error."""
    labels, probs = _plateau_scores(0.3, 0.3, 0.3)
    choice = threshold_choice(labels, probs, "plateau")
    assert (choice.low, choice.high) == pytest.approx((0.3, 0.7))
    assert choice.threshold == pytest.approx(_log_odds_centre(0.3, 0.7))


def test_plateau_centre_keeps_its_decisions_under_a_temperature():
    """A temperature scales log-odds, so the log-odds centre moves with the scores: the
    decisions on any other films are the same with or without it."""
    labels, probs = _scores(11)
    others = np.random.default_rng(1).uniform(0.001, 0.999, 500)
    raw = threshold_choice(labels, probs, "plateau").threshold
    for temperature in (0.5, 2.0):
        scaled = threshold_choice(labels, apply_temperature(probs, temperature), "plateau")
        assert (
            (apply_temperature(others, temperature) >= scaled.threshold) == (others >= raw)
        ).all()


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("youden", {}),
        ("plateau", {}),
        ("sensitivity", {"target_sensitivity": 0.9}),
        ("specificity", {"target_specificity": 0.8}),
    ],
)
def test_every_threshold_on_the_plateau_meets_the_rule_within_noise(method, kwargs):
    """Inside the bounds the criterion stays within a standard error of the best (about
    0.05 at 200 films a class); the scores just outside fall further or break the target."""
    labels, probs = _scores(5)
    choice = threshold_choice(labels, probs, method, **kwargs)
    assert choice.low < choice.threshold <= choice.high
    assert choose_threshold(labels, probs, method, **kwargs) == choice.threshold
    value = {
        "youden": lambda sens, spec: sens + spec,
        "plateau": lambda sens, spec: sens + spec,
        "sensitivity": lambda sens, spec: spec if sens >= 0.9 else -1,
        "specificity": lambda sens, spec: sens if spec >= 0.8 else -1,
    }[method]
    points = {s: value(sens, spec) for s, sens, spec in _decisions_at_every_score(labels, probs)}
    best = max(points.values())
    inside = [best - v for s, v in points.items() if choice.low < s <= choice.high]
    assert len(inside) > 1 and max(inside) < 0.06
    just_outside = [choice.low, min(s for s in points if s > choice.high)]
    assert all(best - points[s] > max(inside) for s in just_outside)


def test_bounds_are_recorded_and_read_back_and_old_records_have_none():
    labels, probs = _plateau_scores()
    choice = threshold_choice(labels, probs, "plateau")
    record = {"threshold": choice.threshold, "threshold_method": "plateau", **choice.record()}
    assert ThresholdChoice.from_record(record) == choice
    assert ThresholdChoice.from_record({"threshold": 0.3, "threshold_method": "youden"}) is None
    assert threshold_choice(labels, probs, "fixed") == ThresholdChoice(0.5, None, None, "fixed")


@pytest.mark.parametrize("seed", range(4))
def test_curves_and_the_class_report_are_sklearns(seed):
    """ROC and PR points and the per-class report are computed in numpy (scikit-learn's
    import costs a page a second or two) and give scikit-learn's arrays and dict exactly:
    ties, collinear points, one class only, a decision rule calling no one."""
    rng = np.random.default_rng(seed)
    n = (300, 40, 7, 25)[seed]
    labels = rng.integers(0, 2, n) if seed != 3 else np.ones(n, int)
    probs = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), (2, 1, 3, 2)[seed])
    if seed != 3:
        for drop in (True, False):
            for mine, theirs in zip(
                roc_points(labels, probs, drop), roc_curve(labels, probs, drop_intermediate=drop)
            ):
                np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(pr_points(labels, probs), precision_recall_curve(labels, probs)):
        np.testing.assert_array_equal(mine, theirs)
    for threshold in (0.5, 2.0):
        pred = decide(probs, threshold)
        expected = classification_report(
            labels, pred, labels=[0, 1], target_names=["NORMAL", "PNEUMONIA"],
            output_dict=True, zero_division=0,
        )  # fmt: skip
        mine = class_report(labels, pred)
        assert mine.keys() == expected.keys()
        for key, value in expected.items():
            assert mine[key] == pytest.approx(value, abs=1e-15), key
