"""Whether a run's probabilities mean what they say, and temperature scaling to fix them.

A temperature is fitted on validation probabilities only: fitted on the set it is then
judged on, it would flatter the run exactly as tuning on test does. numpy only, but for
scipy's bounded search, imported when a temperature is fitted (the Compare page reads
calibration on every visit and fits only on request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cxr_core.errors import UserError

# Probabilities are clipped this far from 0 and 1 before taking logits: a float32 sigmoid
# saturates to exactly 1.0, whose logit is infinite.
EPS = 1e-6


def _logit(probs: np.ndarray) -> np.ndarray:
    return np.log(probs) - np.log1p(-probs)


def _expit(z: np.ndarray) -> np.ndarray:
    """The logistic function 1 / (1 + e^-z), without overflow or cancellation at either end."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=float)))


def _arrays(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise UserError("labels must be a flat list of 0 (NORMAL) and 1 (PNEUMONIA)")
    if probs.shape != labels.shape:
        raise UserError(f"{len(labels)} labels but {probs.size} probabilities")
    if not len(labels):
        raise UserError("no images to assess calibration on")
    if not ((probs >= 0) & (probs <= 1)).all():
        raise UserError("probabilities must lie between 0 and 1")
    return labels.astype(int), probs


def reliability_bins(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, n_bins: int = 10
) -> list[dict]:
    """Equal-width bins over [0, 1], each (lo, hi] as in sklearn's calibration_curve (0 falls
    in the first): edges, image count, mean predicted probability and observed fraction of
    PNEUMONIA. Empty bins are kept, with None for the means, so a diagram shows where the
    run never predicts."""
    labels, probs = _arrays(labels, probs)
    if n_bins < 1:
        raise UserError(f"n_bins must be at least 1, not {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], probs, side="left")
    counts = np.bincount(which, minlength=n_bins)
    prob_sums = np.bincount(which, weights=probs, minlength=n_bins)
    positives = np.bincount(which, weights=labels, minlength=n_bins)
    return [
        {
            "bin_lo": float(edges[b]),
            "bin_hi": float(edges[b + 1]),
            "count": int(counts[b]),
            "mean_predicted": float(prob_sums[b] / counts[b]) if counts[b] else None,
            "observed_fraction": float(positives[b] / counts[b]) if counts[b] else None,
        }
        for b in range(n_bins)
    ]


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, n_bins: int = 10
) -> float:
    """ECE: the count-weighted mean gap between predicted and observed over the bins."""
    bins = reliability_bins(labels, probs, n_bins)
    total = sum(b["count"] for b in bins)
    return float(
        sum(
            b["count"] * abs(b["mean_predicted"] - b["observed_fraction"])
            for b in bins
            if b["count"]
        )
        / total
    )


def brier_score(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """Mean squared error of the probabilities (lower is better; 0.25 is a coin's)."""
    labels, probs = _arrays(labels, probs)
    return float(np.mean((probs - labels) ** 2))


def apply_temperature(probs: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): T > 1 softens over-confident probabilities, T < 1 sharpens.
    The order of the images, hence the ROC curve, is unchanged."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise UserError(f"temperature must be a positive number, not {temperature}")
    probs = np.clip(np.asarray(probs, dtype=float), EPS, 1 - EPS)
    return _expit(_logit(probs) / temperature)


def fit_temperature(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> float:
    """The temperature minimising the negative log-likelihood of VALIDATION probabilities.

    Searched over log T in [-5, 5] (T from about 0.007 to 150), so that T stays positive
    and a run that separates its validation set perfectly gets a bounded answer.
    """
    labels, probs = _arrays(labels, probs)
    if len(np.unique(labels)) < 2:
        raise UserError("fitting a temperature needs validation images of both classes")
    from scipy.optimize import minimize_scalar

    logits = _logit(np.clip(probs, EPS, 1 - EPS))

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    result = minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded")
    return float(math.exp(result.x))
