"""A site's prevalence, estimated from a model's probabilities without labels, and the
decision threshold moved by it (label shift: the films of each class look the same, only
their shares differ).

Saerens, Latinne and Decaestecker (2002), "Adjusting the outputs of a classifier to new a
priori probabilities": the posteriors are re-weighted by the ratio of the new prior to
the one the model learned, and the new prior is the mean of the re-weighted posteriors,
iterated to a fixed point (EM). It assumes calibrated probabilities: a model that is
over-confident on the site's films moves the estimate.
"""

from __future__ import annotations

import math

import numpy as np

from cxr_core.errors import UserError

_EPS = 1e-6
EDGE = 0.01
"""An EM prevalence this close to 0 or 1 says the probabilities are not calibrated on the
films (or that they hold one class only): no threshold should be moved by it."""


def _logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def reweighted(probs: np.ndarray, learned_prior: float, new_prior: float) -> np.ndarray:
    """Posteriors under ``new_prior`` from those a model gives under ``learned_prior``:
    the log-odds moved by the difference of the priors' log-odds."""
    shift = _logit(new_prior) - _logit(learned_prior)
    p = np.clip(np.asarray(probs, dtype=float), _EPS, 1 - _EPS)
    return 1 / (1 + np.exp(-(np.log(p / (1 - p)) + shift)))


def em_prevalence(
    probs: np.ndarray, learned_prior: float, tol: float = 1e-8, max_iter: int = 1000
) -> float:
    """The share of positives among the films scored ``probs``, by EM (Saerens et al.
    2002) from ``learned_prior``, the prevalence the model's probabilities assume."""
    probs = np.asarray(probs, dtype=float)
    if probs.size == 0:
        raise UserError("no scores to estimate a prevalence from")
    if not 0 < learned_prior < 1:
        raise UserError(f"the learned prevalence {learned_prior!r} is not strictly in (0, 1)")
    prior = float(learned_prior)
    for _ in range(max_iter):
        new = float(np.mean(reweighted(probs, learned_prior, prior)))
        new = min(max(new, _EPS), 1 - _EPS)
        if abs(new - prior) < tol:
            return new
        prior = new
    return prior


def shifted_threshold(threshold: float, learned_prior: float, new_prior: float) -> float:
    """The threshold on the model's own probabilities that decides as ``threshold`` does
    on the posteriors re-weighted to ``new_prior``: a rarer disease needs more evidence."""
    shift = _logit(new_prior) - _logit(learned_prior)
    return 1 / (1 + math.exp(-(_logit(threshold) - shift)))
