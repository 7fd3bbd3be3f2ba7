"""Reliability bins, ECE, Brier score and temperature scaling, on simulated probabilities whose
calibration is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from cxr_core.errors import UserError
from cxr_core.scoring.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def _calibrated(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with exactly the stated probability: calibrated by construction."""
    rng = np.random.default_rng(seed)
    probs = expit(rng.normal(0.5, 1.5, n))
    return (rng.random(n) < probs).astype(int), probs


def _over_confident(probs: np.ndarray, sharpness: float = 3.0) -> np.ndarray:
    """The same ranking, logits stretched: what a network trained to zero loss reports."""
    return expit(sharpness * logit(probs))


def test_reliability_bins_worked_by_hand():
    bins = reliability_bins([0, 1, 0, 1, 1], [0.0, 0.15, 0.15, 0.2, 1.0], n_bins=10)
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [1, 3, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[1] == pytest.approx(
        {
            "bin_lo": 0.1,
            "bin_hi": 0.2,
            "count": 3,  # 0.2 sits on an edge: it belongs to (0.1, 0.2], as in sklearn
            "mean_predicted": 0.5 / 3,
            "observed_fraction": 2 / 3,
        }
    )
    assert bins[2]["mean_predicted"] is None and bins[2]["observed_fraction"] is None
    # ECE = (1 * |0 - 0| + 3 * |1/6 - 2/3| + 1 * |1 - 1|) / 5
    ece = expected_calibration_error([0, 1, 0, 1, 1], [0.0, 0.15, 0.15, 0.2, 1.0])
    assert ece == pytest.approx(1.5 / 5)


def test_reliability_bins_agree_with_sklearn_calibration_curve():
    labels, probs = _calibrated(0, 2000)
    probs = np.round(probs, 1)  # many values on bin edges
    bins = [b for b in reliability_bins(labels, probs, n_bins=10) if b["count"]]
    observed, predicted = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
    assert [b["observed_fraction"] for b in bins] == pytest.approx(observed)
    assert [b["mean_predicted"] for b in bins] == pytest.approx(predicted)
    assert sum(b["count"] for b in bins) == 2000


def test_calibrated_probabilities_have_ece_near_zero_and_over_confident_ones_do_not():
    labels, probs = _calibrated(1, 200_000)
    assert expected_calibration_error(labels, probs) < 0.005
    sharp = _over_confident(probs)
    assert expected_calibration_error(labels, sharp) > 0.05
    assert brier_score(labels, sharp) > brier_score(labels, probs)


def test_temperature_fitted_on_validation_undoes_over_confidence_on_held_out_data():
    val_labels, val_probs = _calibrated(2, 5000)
    test_labels, test_probs = _calibrated(3, 5000)
    temperature = fit_temperature(val_labels, _over_confident(val_probs, 3.0))
    assert temperature == pytest.approx(3.0, rel=0.1)  # the stretch it has to undo
    test_sharp = _over_confident(test_probs, 3.0)
    scaled = apply_temperature(test_sharp, temperature)
    assert log_loss(test_labels, scaled) < log_loss(test_labels, test_sharp) - 0.05
    assert expected_calibration_error(test_labels, scaled) < expected_calibration_error(
        test_labels, test_sharp
    )
    # Scaling by a positive temperature never reorders images.
    assert roc_auc_score(test_labels, scaled) == pytest.approx(
        roc_auc_score(test_labels, test_sharp)
    )


def test_under_confident_probabilities_get_a_temperature_below_one():
    labels, probs = _calibrated(4, 5000)
    assert fit_temperature(labels, _over_confident(probs, 0.5)) < 1


def test_apply_temperature_one_is_the_identity_within_the_clip():
    probs = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    assert apply_temperature(probs, 1.0) == pytest.approx([1e-6, 0.2, 0.5, 0.9, 1 - 1e-6])
    assert apply_temperature([0.9], 2.0)[0] == pytest.approx(expit(logit(0.9) / 2))


def test_brier_score_matches_sklearn_and_a_hand_computation():
    assert brier_score([0, 1, 1], [0.1, 0.8, 0.4]) == pytest.approx((0.01 + 0.04 + 0.36) / 3)
    labels, probs = _calibrated(5, 1000)
    assert brier_score(labels, probs) == pytest.approx(brier_score_loss(labels, probs))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fit_temperature([1, 1, 1], [0.2, 0.7, 0.9]), "both classes"),
        (lambda: apply_temperature([0.5], 0.0), "positive"),
        (lambda: reliability_bins([0, 1], [0.5, 1.5]), "between 0 and 1"),
        (lambda: expected_calibration_error([0, 1], [0.5]), "2 labels but 1"),
        (lambda: brier_score([0, 2], [0.5, 0.5]), "0 \\(NORMAL\\) and 1"),
    ],
)
def test_bad_input_is_a_user_error(call, match):
    with pytest.raises(UserError, match=match):
        call()
