"""Confidence intervals and paired tests: against published reference values, slow textbook
implementations, hand computations and a coverage simulation."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score

from cxr_core.errors import UserError
from cxr_core.scoring import stats
from cxr_core.scoring.metrics import CATALOGUE, roc_auc

METRICS = {key: info.compute for key, info in CATALOGUE.items()}


def _numbers(text: str) -> np.ndarray:
    return np.array(text.split(), dtype=float)


# pROC's aSAH data (Turck et al. 2010, 113 patients; outcome Poor = 1), as shipped in
# pROC's data/aSAH.RData, and the values pROC's own tests expect of it
# (tests/testthat/test-roc.test.R and test-ci.auc.R).
ASAH_OUTCOME = np.array(
    list(
        "00001101001011001011101000000000100110110000000001100010001010011101101111000110100"
        "000010000000000001111110001000"
    ),
    dtype=int,
)
ASAH_WFNS = np.array(
    list(
        "11113254125255125225211112121134214541425511241125521251222151125214524414121421232"
        "421451154221113125225552445111"
    ),
    dtype=float,
)
ASAH_S100B = _numbers(
    """0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04
    0.07 0.33 0.09 0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35
    0.48 0.09 0.96 0.25 0.5 0.46 0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 0.06 0.13
    2.07 0.1 0.14 0.15 0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 0.27 0.71
    0.08 0.26 0.08 0.16 0.09 0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 0.22 0.07 0.05
    0.24 0.38 0.1 0.15 0.08 0.14 0.1 0.07 0.04 0.19 0.56 0.14 0.58 0.32 0.82 0.74 0.15 0.47
    0.17 0.44 0.15 0.5 0.48"""
)
ASAH_NDKA = _numbers(
    """3.01 8.54 8.09 10.42 17.4 12.75 6 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 11.6
    16.11 32.37 54.82 32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 9.85 18.21
    5.03 14.04 21.93 8.02 7.42 8.38 6.59 9.63 13.12 7.96 14.34 41.43 7.63 7.06 12.59 13.56
    3.87 9.44 7.66 12.98 419.19 27.19 22.27 9.95 21.22 11.73 10.4 58.83 6.39 11.09 12.22
    13.67 17.21 22.63 12.9 9.7 21.57 8.23 72.57 15.54 10.51 10.6 14.57 5.19 9.63 4.61 21.48
    17.3 12.71 9.44 11.07 19.46 10.83 5.37 11.97 7.75 9.83 10.55 28.49 8.53 12.57 12.9 46.83
    11.68 12.67 9.01 9.57 34.06 11.72 14.26 47.61 11.67 24.58 10.33 13.87 15.89 22.43 6.79
    13.45"""
)


# DeLong ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "z", "p", "ci"),
    [
        (
            ASAH_WFNS,
            ASAH_S100B,
            2.20898359144091,
            0.0271757822291882,
            (0.0104061769564846, 0.174214419249478),
        ),
        (
            ASAH_WFNS,
            ASAH_NDKA,
            2.79777591868904,
            0.00514557970691098,
            (0.0634011709339876, 0.3600405634833566),
        ),
        (
            ASAH_NDKA,
            ASAH_S100B,
            -1.39077002573558,
            0.164295175223054,
            (-0.2876917446341914, 0.0488706064228094),
        ),
    ],
)
def test_delong_reproduces_proc_on_its_asah_example(a, b, z, p, ci):
    assert len(ASAH_OUTCOME) == len(ASAH_WFNS) == len(ASAH_S100B) == len(ASAH_NDKA) == 113
    result = stats.delong_test(ASAH_OUTCOME, a, b)
    assert result["z"] == pytest.approx(z, abs=1e-9)
    assert result["p"] == pytest.approx(p, abs=1e-12)
    assert result["diff_ci95"] == pytest.approx(ci, abs=1e-9)
    # pROC prints these AUCs for the single curves: wfns 0.8237, s100b 0.7314.
    assert stats.delong_test(ASAH_OUTCOME, ASAH_WFNS, ASAH_S100B)["auc_a"] == pytest.approx(
        0.8237, abs=5e-5
    )


def test_delong_auc_ci_reproduces_proc_ci_auc():
    result = stats.delong_auc_ci(ASAH_OUTCOME, ASAH_NDKA)
    assert result["auc"] == pytest.approx(0.611957994579946, abs=1e-12)
    assert result["ci"] == pytest.approx((0.501244999271703, 0.722670989888189), abs=1e-9)


def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _slow_delong(labels, score_sets):
    """DeLong, DeLong & Clarke-Pearson (1988) as written: every positive against every
    negative, one comparison at a time, for the structural components V10 and V01."""
    pos = [i for i, label in enumerate(labels) if label == 1]
    neg = [i for i, label in enumerate(labels) if label == 0]
    v10, v01 = [], []
    for scores in score_sets:
        table = [[_psi(scores[i], scores[j]) for j in neg] for i in pos]
        v10.append([sum(row) / len(neg) for row in table])
        v01.append([sum(row[c] for row in table) / len(pos) for c in range(len(neg))])
    aucs = [sum(v) / len(v) for v in v10]

    def covariance(u, v):
        mean_u, mean_v = sum(u) / len(u), sum(v) / len(v)
        return sum((a - mean_u) * (b - mean_v) for a, b in zip(u, v, strict=True)) / (len(u) - 1)

    k = range(len(score_sets))
    cov = [
        [covariance(v10[r], v10[c]) / len(pos) + covariance(v01[r], v01[c]) / len(neg) for c in k]
        for r in k
    ]
    return aucs, cov


@pytest.mark.parametrize("seed", range(4))
def test_fast_delong_equals_the_slow_pairwise_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 120))
    labels = rng.integers(0, 2, n)
    labels[:2], labels[2:4] = 0, 1
    shared = rng.normal(size=n)
    # Two correlated models; rounding makes ties within and across classes.
    a = np.round(expit(shared + labels * 1.2 + rng.normal(0, 0.5, n)), 1)
    b = np.round(expit(shared + labels * 0.8 + rng.normal(0, 0.8, n)), 2)
    assert len(np.unique(a)) < n  # ties are present

    (auc_a, auc_b), cov = _slow_delong(labels.tolist(), [a.tolist(), b.tolist()])
    se = math.sqrt(cov[0][0] + cov[1][1] - 2 * cov[0][1])
    p = 2 * norm.sf(abs(auc_a - auc_b) / se)

    fast = stats.delong_test(labels, a, b)
    assert fast["auc_a"] == pytest.approx(auc_a, abs=1e-12)
    assert fast["auc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert fast["auc_a"] == pytest.approx(roc_auc_score(labels, a), abs=1e-12)
    assert fast["se"] ** 2 == pytest.approx(se**2, abs=1e-12)
    assert fast["p"] == pytest.approx(p, abs=1e-9)
    assert stats.delong_auc_ci(labels, b)["se"] == pytest.approx(math.sqrt(cov[1][1]), abs=1e-12)


def test_delong_on_a_model_against_itself_is_no_difference():
    result = stats.delong_test(ASAH_OUTCOME, ASAH_S100B, ASAH_S100B)
    assert result["diff"] == 0 and result["z"] == 0 and result["p"] == 1


@pytest.mark.parametrize("labels", [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 2, 1]])
def test_delong_refuses_what_it_cannot_estimate(labels):
    with pytest.raises(UserError):
        stats.delong_test(labels, [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])


# McNemar and Holm -------------------------------------------------------------------------


def _decisions(both: int, only_a: int, only_b: int, neither: int):
    """Paired correctness arrays with the given 2x2 counts."""
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_mcnemar_exact_against_a_binomial_worked_by_hand():
    # 2 images only B got right (n01), 9 only A got right (n10): under H0 each discordant
    # pair is a fair coin, p = 2 * P(X <= 2), X ~ Bin(11, 1/2) = 2 * (1 + 11 + 55) / 2048.
    a, b = _decisions(both=40, only_a=9, only_b=2, neither=7)
    result = stats.mcnemar_exact(a, b)
    assert (result["n01"], result["n10"]) == (2, 9)
    assert result["p"] == pytest.approx(134 / 2048, abs=1e-15)
    assert result["p"] == pytest.approx(binomtest(2, 11, 0.5).pvalue, abs=1e-15)
    # Concordant pairs carry no information.
    assert stats.mcnemar_exact(*_decisions(0, 9, 2, 0))["p"] == result["p"]


@pytest.mark.parametrize(
    ("only_a", "only_b", "p"),
    [(5, 0, 2 / 32), (0, 5, 2 / 32), (4, 4, 1.0), (0, 0, 1.0), (10, 1, 2 * 12 / 2048)],
)
def test_mcnemar_exact_known_cases(only_a, only_b, p):
    assert stats.mcnemar_exact(*_decisions(30, only_a, only_b, 3))["p"] == pytest.approx(p)


def test_holm_against_a_hand_worked_example():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06
    # (adjusted p-values never decrease along the sorted order); capped at 1.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]
    assert stats.holm([]) == []
    adjusted = stats.holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])


# The patient bootstrap -----------------------------------------------------------------------


def _all_patients_whole(labels, probs, _threshold):
    """1 when each image value appears a multiple of 2 times: true if patients of two
    images (one value per patient) are always drawn whole."""
    _, counts = np.unique(probs, return_counts=True)
    return float(np.all(counts % 2 == 0))


def test_a_drawn_patient_brings_all_their_images():
    patients = np.repeat([f"p{i}" for i in range(30)], 2)
    probs = np.repeat(np.linspace(0.01, 0.99, 30), 2)
    labels = np.tile([0, 1], 30)
    metric = {"whole": _all_patients_whole}
    assert stats.patient_bootstrap(labels, probs, patients, 0.5, metric)["whole"] == (1.0, 1.0)
    # Image by image, patients are split in most resamples.
    assert stats.patient_bootstrap(labels, probs, None, 0.5, metric)["whole"] == (0.0, 0.0)


def test_images_without_a_patient_id_are_patients_of_their_own():
    probs, labels = np.array([0.2, 0.2, 0.4, 0.6]), np.array([0, 1, 0, 1])

    def unknowns_drawn_together(labels, probs, _threshold):
        return float(np.sum(probs == 0.4) == np.sum(probs == 0.6))

    metric = {"together": unknowns_drawn_together}
    for missing in ("", None, math.nan):
        patients = ["a", "a", missing, missing]
        assert stats.patient_bootstrap(labels, probs, patients, 0.5, metric)["together"] == (
            0.0,
            1.0,
        )
    lumped = ["a", "a", "b", "b"]
    assert stats.patient_bootstrap(labels, probs, lumped, 0.5, metric)["together"] == (1.0, 1.0)


def test_bootstrap_equals_the_plain_loop_over_drawn_patients():
    """The vectorised resampling is the obvious algorithm: draw patients, gather their images."""
    rng = np.random.default_rng(5)
    patients = rng.integers(0, 40, 100).astype(str)
    labels = rng.integers(0, 2, 100)
    probs = np.round(rng.random(100), 2)
    metrics = {k: METRICS[k] for k in ("accuracy", "roc_auc", "sensitivity")}
    got = stats.patient_bootstrap(labels, probs, patients, 0.4, metrics, n_resamples=200, seed=3)

    ids = sorted(set(patients))
    images_of = [np.flatnonzero(patients == p) for p in ids]
    draws = np.random.default_rng(3).integers(0, len(ids), size=(200, len(ids)))
    for name, metric in metrics.items():
        values = []
        for row in draws:
            index = np.concatenate([images_of[p] for p in row])
            values.append(metric(labels[index], probs[index], 0.4))
        values = np.array(values)
        expected = np.percentile(values[np.isfinite(values)], [2.5, 97.5])
        assert got[name] == pytest.approx(tuple(expected), abs=1e-12), name


def test_bootstrap_is_seeded_and_drops_undefined_resamples():
    rng = np.random.default_rng(0)
    labels = np.array([1] + [0] * 19)  # one positive: most resamples have no positive
    probs = np.where(labels == 1, 0.9, rng.random(20) * 0.5)
    metrics = {
        "sensitivity": METRICS["sensitivity"],
        "accuracy": METRICS["accuracy"],
        "never": lambda *_: math.nan,
    }
    first = stats.patient_bootstrap(labels, probs, None, 0.5, metrics, seed=1)
    assert first["sensitivity"] == (1.0, 1.0)  # defined only when the positive is drawn
    assert first["accuracy"] == (1.0, 1.0)
    assert all(math.isnan(v) for v in first["never"])
    noisy = np.where(labels == 1, 0.9, rng.random(20))
    a = stats.patient_bootstrap(labels, noisy, None, 0.5, metrics, seed=1)
    assert stats.patient_bootstrap(labels, noisy, None, 0.5, metrics, seed=1) == a
    assert stats.patient_bootstrap(labels, noisy, None, 0.5, metrics, seed=2) != a


def test_bootstrap_refuses_mismatched_inputs():
    metric = {"accuracy": METRICS["accuracy"]}
    with pytest.raises(UserError, match="patient ids"):
        stats.patient_bootstrap([0, 1], [0.2, 0.8], ["a"], 0.5, metric)
    with pytest.raises(UserError, match="probabilities"):
        stats.patient_bootstrap([0, 1], [0.2], None, 0.5, metric)


# Clustered data: patients of 1-3 films whose scores share a patient effect. The score of an
# image is MU * label + patient effect + image noise, normal, so the population AUC (a random
# PNEUMONIA film against a random NORMAL one, always different patients) is
# Phi(MU / sqrt(2 (SD_PATIENT^2 + SD_IMAGE^2))).
MU, SD_PATIENT, SD_IMAGE = 1.5, 1.0, 0.35
TRUE_AUC = float(norm.cdf(MU / math.sqrt(2 * (SD_PATIENT**2 + SD_IMAGE**2))))


def _clustered(rng, n_patients):
    label = (rng.random(n_patients) < 0.6).astype(int)
    films = rng.integers(1, 4, n_patients)
    patient = np.repeat(np.arange(n_patients), films)
    effect = rng.normal(0, SD_PATIENT, n_patients)
    score = MU * label[patient] + effect[patient] + rng.normal(0, SD_IMAGE, len(patient))
    return label[patient], expit(score), patient


def test_patient_bootstrap_covers_the_true_auc_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    big_labels, big_probs, _ = _clustered(rng, 100_000)
    assert roc_auc(big_labels, big_probs) == pytest.approx(TRUE_AUC, abs=0.003)

    auc = {"roc_auc": METRICS["roc_auc"]}
    covered = {"patients": 0, "images": 0}
    n_datasets = 200
    for seed in range(n_datasets):
        labels, probs, patient = _clustered(rng, 120)  # about 240 films
        for kind, ids in (("patients", patient), ("images", None)):
            lo, hi = stats.patient_bootstrap(
                labels, probs, ids, 0.5, auc, n_resamples=500, seed=seed
            )["roc_auc"]
            covered[kind] += lo <= TRUE_AUC <= hi
    coverage = {k: v / n_datasets for k, v in covered.items()}
    # Seeded: patient-level 0.96 here (0.958 over 600 datasets), image-level 0.83.
    assert 0.88 <= coverage["patients"] <= 0.99, coverage
    # Resampling films as if independent understates the uncertainty of clustered data.
    assert coverage["images"] < 0.88 and coverage["images"] < coverage["patients"] - 0.08


# Paired comparisons -------------------------------------------------------------------------


def _two_runs(seed: int, gap: float, n: int = 400):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    better = expit(2.5 * (labels - 0.5) + shared + rng.normal(0, 0.5, n))
    worse = expit((2.5 - gap) * (labels - 0.5) + shared + rng.normal(0, 0.5, n))
    return labels, better, worse


def test_paired_comparison_reports_both_tests_and_names_the_better_run():
    labels, better, worse = _two_runs(0, gap=1.5)
    result = stats.paired_comparison(labels, worse, 0.5, better, 0.5, names=("small", "big"))
    assert {
        "n",
        "accuracy_diff",
        "mcnemar_p",
        "roc_auc_diff",
        "roc_auc_diff_ci95",
        "delong_p",
    } <= result.to_dict().keys()
    delong = stats.delong_test(labels, worse, better)
    assert result.roc_auc_diff == delong["diff"] < 0
    assert result.roc_auc_diff_ci95 == delong["diff_ci95"]
    assert result.delong_p == delong["p"] < 0.05
    correct_a, correct_b = (worse >= 0.5) == labels, (better >= 0.5) == labels
    assert result.mcnemar_p == stats.mcnemar_exact(correct_a, correct_b)["p"]
    assert result.accuracy_diff == pytest.approx(correct_a.mean() - correct_b.mean())
    assert result.n == 400
    # B is better: the verdict names it and turns the CI round to a positive gain.
    lo, hi = delong["diff_ci95"]
    gain = stats.format_ci(-delong["diff"], (-hi, -lo), percent=False)
    assert result.verdict.startswith(f"big: AUC higher by {gain}, p ")


def test_paired_comparison_of_near_identical_runs_finds_no_evidence():
    labels, better, _ = _two_runs(1, gap=0.0)
    rng = np.random.default_rng(1)
    jittered = np.clip(better + rng.normal(0, 0.01, len(better)), 0, 1)
    result = stats.paired_comparison(labels, better, 0.5, jittered, 0.5)
    assert result.delong_p > 0.05 and result.mcnemar_p > 0.05
    assert "AUC: no evidence of a difference (p = " in result.verdict
    assert "accuracy: no evidence of a difference (McNemar p = " in result.verdict


def test_pairwise_table_holm_corrects_across_all_pairs():
    labels, better, worse = _two_runs(2, gap=1.0)
    middle = (better + worse) / 2
    probs = {"a": better, "b": middle, "c": worse}
    thresholds = {"a": 0.5, "b": 0.45, "c": 0.55}
    rows = stats.pairwise_table(["a", "b", "c"], labels, probs, thresholds)
    assert [(r.a, r.b) for r in rows] == list(combinations("abc", 2))
    for row in rows:
        single = stats.paired_comparison(
            labels, probs[row.a], thresholds[row.a], probs[row.b], thresholds[row.b]
        )
        assert row.delong_p == single.delong_p
        assert row.mcnemar_p == single.mcnemar_p
        assert "Holm-adjusted p" in row.verdict
    assert [r.delong_p_holm for r in rows] == stats.holm([r.delong_p for r in rows])
    assert [r.mcnemar_p_holm for r in rows] == stats.holm([r.mcnemar_p for r in rows])
    assert all(r.delong_p_holm >= r.delong_p for r in rows)
    assert list(rows[0].to_dict()) == [
        "a",
        "b",
        "n",
        "accuracy_a",
        "accuracy_b",
        "accuracy_diff",
        "n01",
        "n10",
        "mcnemar_p",
        "roc_auc_a",
        "roc_auc_b",
        "roc_auc_diff",
        "roc_auc_diff_ci95",
        "delong_p",
        "verdict",
        "mcnemar_p_holm",
        "delong_p_holm",
    ]
    with pytest.raises(UserError, match="only once"):
        stats.pairwise_table(["a", "a"], labels, probs, thresholds)
    with pytest.raises(UserError, match="no probabilities or threshold for: d"):
        stats.pairwise_table(["a", "d"], labels, probs, thresholds)


@pytest.mark.parametrize(
    ("args", "kwargs", "text"),
    [
        ((0.912, (0.889, 0.933)), {}, "91.2% (88.9-93.3)"),
        ((0.984, (0.976, 0.991)), {"percent": False}, "0.984 (0.976-0.991)"),
        ((-0.028, (-0.045, -0.012)), {"percent": False}, "-0.028 (-0.045 to -0.012)"),
        ((0.5, (math.nan, math.nan)), {}, "50.0%"),
        ((0.98766, (0.9, 1.0)), {"digits": 2}, "98.77% (90.00-100.00)"),
    ],
)
def test_format_ci(args, kwargs, text):
    assert stats.format_ci(*args, **kwargs) == text


def test_format_p():
    assert [stats.format_p(p) for p in (0.41, 0.0271, 0.0004)] == [
        "p = 0.41",
        "p = 0.027",
        "p < 0.001",
    ]


@pytest.mark.parametrize("n", [6, 40, 500])
def test_every_resample_at_once_equals_one_resample_at_a_time(n):
    """The catalogue's drawn metrics (a thousand resamples in a few matrix products) give
    the intervals of calling each metric on each resample's repeated images: ties,
    patients with several films, and small sets whose resamples miss a class (NaN)."""
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 2, n)
    probs = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.25), 0, 1), 1)
    patients = [f"p{i // 3}" for i in range(n)]
    at_once = {k: info.drawn for k, info in CATALOGUE.items()}
    assert all(at_once.values())
    expected = stats.patient_bootstrap(labels, probs, patients, 0.5, METRICS, 300, 1)
    got = stats.patient_bootstrap(labels, probs, patients, 0.5, {}, 300, 1, drawn=at_once)
    assert got.keys() == expected.keys()
    for key, interval in expected.items():
        np.testing.assert_allclose(got[key], interval, rtol=0, atol=1e-12, err_msg=key)
