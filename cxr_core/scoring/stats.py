"""Uncertainty and paired tests for binary classifiers scored on the same images.

Pure numpy on arrays of labels (0/1), probabilities and patient ids: no torch, no runs.
Confidence intervals resample patients, not images, because a patient's films are correlated
and an image-level bootstrap would claim more certainty than the data holds. scipy's ranks
and statsmodels' McNemar and Holm are imported by the tests that use them: ``evaluate``
needs neither, and importing both costs it over a second.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist

import numpy as np

from cxr_core.errors import UserError
from cxr_core.scoring.metrics import DrawnMetric, Metric, decide

ALPHA = 0.05  # the significance level the plain-language verdicts use


def normal_half_width(se: float, level: float = 0.95) -> float:
    """Half the width of a normal interval with standard error ``se`` at ``level``."""
    return NormalDist().inv_cdf(0.5 + level / 2) * se


def two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z; erfc keeps it exact far in the tail."""
    return math.erfc(abs(z) / math.sqrt(2))


def _binary_arrays(labels, *score_arrays) -> tuple[np.ndarray, ...]:
    """Labels as 0/1 ints and scores as floats, all of one length, or a UserError."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise UserError("labels must be a flat list of 0 (NORMAL) and 1 (PNEUMONIA)")
    out = [labels.astype(int)]
    for scores in score_arrays:
        scores = np.asarray(scores, dtype=float)
        if scores.shape != labels.shape:
            raise UserError(f"{len(labels)} labels but {scores.size} probabilities")
        if not np.isfinite(scores).all():
            raise UserError("probabilities must be finite numbers (found NaN or infinity)")
        out.append(scores)
    return tuple(out)


def _missing_id(patient) -> bool:
    """None, an empty string or a NaN (pandas' empty cell) means the patient is unknown."""
    return patient is None or str(patient) in ("", "nan", "None")


def _patient_codes(patients: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    """One integer per image naming its patient; an image with no id is a patient of its own."""
    if patients is None or len(patients) == 0:
        return np.arange(n)
    if len(patients) != n:
        raise UserError(f"{n} images but {len(patients)} patient ids")
    known = [i for i, p in enumerate(patients) if not _missing_id(p)]
    codes = np.empty(n, dtype=int)
    _, codes[known] = np.unique([str(patients[i]) for i in known], return_inverse=True)
    unknown = np.setdiff1d(np.arange(n), known)
    codes[unknown] = codes[known].max(initial=-1) + 1 + np.arange(len(unknown))
    return codes


def patient_bootstrap(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    patients: Sequence[str | None] | np.ndarray | None,
    threshold: float,
    metrics: Mapping[str, Metric],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    drawn: Mapping[str, DrawnMetric] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals from a cluster bootstrap over patients.

    Each resample draws as many patients as there are, with replacement, and takes all
    their images (a patient drawn twice counts twice). A resample where a metric is
    undefined (NaN, e.g. one class only) is dropped for that metric; a metric never
    defined gets (nan, nan). ``drawn`` metrics take every resample at once from how often
    each image is drawn (:data:`~cxr_core.scoring.metrics.DrawnMetric`); ``metrics`` are
    called once per resample.
    """
    labels, probs = _binary_arrays(labels, probs)
    if n_resamples < 1:
        raise UserError(f"n_resamples must be at least 1, not {n_resamples}")
    if not 0 < level < 1:
        raise UserError(f"level must lie between 0 and 1, not {level}")
    codes = _patient_codes(patients, len(labels))
    n_patients = int(codes.max(initial=-1)) + 1
    if n_patients == 0:
        raise UserError("no images to resample")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    offsets = (np.arange(n_resamples) * n_patients)[:, None]
    times_drawn = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_patients)
    times_drawn = times_drawn.reshape(n_resamples, n_patients)
    images = np.arange(len(labels))
    draws = times_drawn[:, codes].astype(float)  # [resample, image]
    rows = {
        name: np.asarray(metric(labels, probs, threshold, draws))
        for name, metric in (drawn or {}).items()
    }
    values = np.empty((len(metrics), n_resamples))
    if metrics:
        for r in range(n_resamples):
            index = np.repeat(images, times_drawn[r, codes])
            resampled_labels, resampled_probs = labels[index], probs[index]
            for m, metric in enumerate(metrics.values()):
                values[m, r] = metric(resampled_labels, resampled_probs, threshold)
    rows |= dict(zip(metrics, values, strict=True))
    tail = 100 * (1 - level) / 2
    out = {}
    for name, row in rows.items():
        row = row[np.isfinite(row)]
        if not len(row):
            out[name] = (math.nan, math.nan)
            continue
        lo, hi = np.percentile(row, [tail, 100 - tail])
        out[name] = (float(lo), float(hi))
    return out


def _delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of each row of ``scores`` and their covariance, by Sun & Xu's fast DeLong.

    Midranks within positives, within negatives and over both give DeLong's structural
    components V10 (per positive) and V01 (per negative) in O(n log n), not O(n_pos n_neg).
    """
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos < 2 or n_neg < 2:
        raise UserError(
            f"DeLong's method needs at least 2 images of each class; got {n_pos} PNEUMONIA "
            f"and {n_neg} NORMAL"
        )
    from scipy.stats import rankdata

    x, y = scores[:, pos], scores[:, ~pos]
    rank_x = rankdata(x, axis=1)
    rank_y = rankdata(y, axis=1)
    rank_all = rankdata(np.hstack([x, y]), axis=1)
    aucs = (rank_all[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    v10 = (rank_all[:, :n_pos] - rank_x) / n_neg
    v01 = 1 - (rank_all[:, n_pos:] - rank_y) / n_pos
    cov = np.atleast_2d(np.cov(v10)) / n_pos + np.atleast_2d(np.cov(v01)) / n_neg
    return aucs, cov


def delong_auc_ci(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, level: float = 0.95
) -> dict:
    """One model's AUC with DeLong's standard error and normal CI (clipped to [0, 1])."""
    labels, probs = _binary_arrays(labels, probs)
    aucs, cov = _delong_covariance(labels, probs[None, :])
    auc, se = float(aucs[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
    half = normal_half_width(se, level)
    return {"auc": auc, "se": se, "ci": (max(auc - half, 0.0), min(auc + half, 1.0))}


def beats_chance(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, level: float = 0.95
) -> bool | None:
    """Whether the AUC's DeLong interval lies above 0.5 (None with one class only): a
    model whose interval includes 0.5 is no better than chance on these images, however
    its point estimate ranks against others'."""
    labels, probs = _binary_arrays(labels, probs)
    if labels.min() == labels.max():
        return None
    return delong_auc_ci(labels, probs, level)["ci"][0] > 0.5


def delong_test(
    labels: Sequence[int] | np.ndarray,
    probs_a: Sequence[float] | np.ndarray,
    probs_b: Sequence[float] | np.ndarray,
) -> dict:
    """DeLong's test of two correlated AUCs (same images): the difference a - b, its 95% CI
    and the two-sided p-value. Identical AUCs with zero variance give z = 0, p = 1."""
    labels, probs_a, probs_b = _binary_arrays(labels, probs_a, probs_b)
    aucs, cov = _delong_covariance(labels, np.vstack([probs_a, probs_b]))
    diff = float(aucs[0] - aucs[1])
    se = float(math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    z = diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0
    half = normal_half_width(se)
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "z": z,
        "diff_ci95": (diff - half, diff + half),
        "p": two_sided_p(z),
    }


def mcnemar_exact(
    correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray
) -> dict:
    """McNemar's exact test on paired decisions.

    n01: images A got wrong and B right; n10: A right and B wrong. Only these discordant
    pairs carry information; p is the two-sided binomial tail of min(n01, n10) at 1/2.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise UserError(f"paired decisions differ in length: {a.size} and {b.size}")
    n01, n10 = int(np.count_nonzero(~a & b)), int(np.count_nonzero(a & ~b))
    both, neither = int(np.count_nonzero(a & b)), int(np.count_nonzero(~a & ~b))
    result = mcnemar([[both, n10], [n01, neither]], exact=True)
    return {"n01": n01, "n10": n10, "p": float(result.pvalue)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given; NaN entries stay NaN and do
    not count as tests."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return [float(v) for v in out]


def format_p(p: float, label: str = "p") -> str:
    """'p = 0.41', 'p = 0.003', 'p < 0.001' (``label`` names an adjusted p)."""
    if not math.isfinite(p):
        return f"{label} = n/a"
    if p < 0.001:
        return f"{label} < 0.001"
    return f"{label} = {p:.3f}" if p < 0.1 else f"{label} = {p:.2f}"


def format_ci(
    value: float, ci: Sequence[float], percent: bool = True, digits: int | None = None
) -> str:
    """'91.2% (88.9-93.3)' for a proportion, '0.984 (0.976-0.991)' otherwise.

    Bounds below zero are joined with ' to ' so a minus sign never meets the dash.
    """
    scale, unit = (100, "%") if percent else (1, "")
    digits = (1 if percent else 3) if digits is None else digits
    text = f"{value * scale:.{digits}f}{unit}" if math.isfinite(value) else "n/a"
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return text
    sep = " to " if min(lo, hi) < 0 else "-"
    return f"{text} ({lo * scale:.{digits}f}{sep}{hi * scale:.{digits}f})"


def _verdict(
    names: tuple[str, str],
    auc_diff: float,
    auc_ci: tuple[float, float],
    delong_p: float,
    accuracy_diff: float,
    mcnemar_p: float,
    p_label: str = "p",
) -> str:
    """One plain sentence on AUC (DeLong) and accuracy (McNemar), naming the better run."""
    if delong_p < ALPHA:
        better, sign = (names[0], 1) if auc_diff > 0 else (names[1], -1)
        lo, hi = sorted((sign * auc_ci[0], sign * auc_ci[1]))
        auc = f"{better}: AUC higher by {format_ci(sign * auc_diff, (lo, hi), percent=False)}"
        auc += f", {format_p(delong_p, p_label)}"
    else:
        auc = f"AUC: no evidence of a difference ({format_p(delong_p, p_label)})"
    mcnemar = format_p(mcnemar_p, p_label)
    if mcnemar_p < ALPHA:
        better = names[0] if accuracy_diff > 0 else names[1]
        points = abs(accuracy_diff) * 100
        acc = f"{better}: accuracy higher by {points:.1f} points (McNemar {mcnemar})"
    else:
        acc = f"accuracy: no evidence of a difference (McNemar {mcnemar})"
    return f"{auc}; {acc}."


@dataclass(frozen=True)
class PairedResult:
    """Two runs on the same images: McNemar on their decisions at their own thresholds and
    DeLong on their AUCs. Differences are a - b; ``verdict`` says it in one sentence. The
    Holm-adjusted p-values are set when the pair is one of many (:func:`pairwise_table`)."""

    a: str
    b: str
    n: int
    accuracy_a: float
    accuracy_b: float
    accuracy_diff: float
    n01: int
    n10: int
    mcnemar_p: float
    roc_auc_a: float
    roc_auc_b: float
    roc_auc_diff: float
    roc_auc_diff_ci95: tuple[float, float]
    delong_p: float
    verdict: str
    mcnemar_p_holm: float | None = None
    delong_p_holm: float | None = None

    def to_dict(self) -> dict:
        """The result as JSON keys (what ``compare --json`` prints under "paired"); the
        Holm-adjusted p-values only where they were computed."""
        out = asdict(self)
        return {k: v for k, v in out.items() if not (k.endswith("_holm") and v is None)}

    def p_values(self, adjusted: bool) -> tuple[float, float]:
        """(McNemar, DeLong) p-values, Holm-adjusted when ``adjusted`` (and computed)."""
        if adjusted and self.mcnemar_p_holm is not None and self.delong_p_holm is not None:
            return self.mcnemar_p_holm, self.delong_p_holm
        return self.mcnemar_p, self.delong_p


def paired_comparison(
    labels: Sequence[int] | np.ndarray,
    probs_a: Sequence[float] | np.ndarray,
    thr_a: float,
    probs_b: Sequence[float] | np.ndarray,
    thr_b: float,
    names: tuple[str, str] = ("A", "B"),
) -> PairedResult:
    """Two runs (``names``) on the same images, as a :class:`PairedResult`."""
    labels, probs_a, probs_b = _binary_arrays(labels, probs_a, probs_b)
    correct_a = decide(probs_a, thr_a) == labels
    correct_b = decide(probs_b, thr_b) == labels
    paired = mcnemar_exact(correct_a, correct_b)
    delong = delong_test(labels, probs_a, probs_b)
    accuracy_diff = float(correct_a.mean() - correct_b.mean())
    return PairedResult(
        a=names[0],
        b=names[1],
        n=len(labels),
        accuracy_a=float(correct_a.mean()),
        accuracy_b=float(correct_b.mean()),
        accuracy_diff=accuracy_diff,
        n01=paired["n01"],
        n10=paired["n10"],
        mcnemar_p=paired["p"],
        roc_auc_a=delong["auc_a"],
        roc_auc_b=delong["auc_b"],
        roc_auc_diff=delong["diff"],
        roc_auc_diff_ci95=delong["diff_ci95"],
        delong_p=delong["p"],
        verdict=_verdict(
            names,
            delong["diff"],
            delong["diff_ci95"],
            delong["p"],
            accuracy_diff,
            paired["p"],
        ),
    )


def pairwise_table(
    names: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    probs_by_name: Mapping[str, Sequence[float] | np.ndarray],
    thresholds_by_name: Mapping[str, float],
) -> list[PairedResult]:
    """Every pair of runs as a :class:`PairedResult`, with Holm-adjusted p-values over all
    pairs (raw ones kept); the verdict uses the adjusted ones, as a table of many tests
    must."""
    if len(set(names)) != len(names):
        raise UserError("each run may appear only once in a comparison")
    missing = [n for n in names if n not in probs_by_name or n not in thresholds_by_name]
    if missing:
        raise UserError(f"no probabilities or threshold for: {', '.join(missing)}")
    rows = [
        paired_comparison(
            labels,
            probs_by_name[a],
            thresholds_by_name[a],
            probs_by_name[b],
            thresholds_by_name[b],
            names=(a, b),
        )
        for a, b in itertools.combinations(names, 2)
    ]
    mcnemar_holm = holm([row.mcnemar_p for row in rows])
    delong_holm = holm([row.delong_p for row in rows])
    return [
        replace(
            row,
            mcnemar_p_holm=p_mcnemar,
            delong_p_holm=p_delong,
            verdict=_verdict(
                (row.a, row.b),
                row.roc_auc_diff,
                row.roc_auc_diff_ci95,
                p_delong,
                row.accuracy_diff,
                p_mcnemar,
                p_label="Holm-adjusted p",
            ),
        )
        for row, p_mcnemar, p_delong in zip(rows, mcnemar_holm, delong_holm, strict=True)
    ]
