"""Saying when validation cannot choose: the paired verdict between the best and the
runner-up on constructed score sets, a sweep's best point, an ensemble against its best
member, and the epoch early stopping keeps."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.execution.sweeps import SWEEP_KEY, choose_point, describe, summarize, sweep_jobs
from cxr_core.scoring.metrics import full_report
from cxr_core.scoring.selection import Selection, paired_auc_difference, select
from cxr_core.scoring.stats import delong_test
from cxr_core.store.runs import RunStore
from cxr_core.training.config import TrainConfig
from cxr_core.training.engine import _replaces_kept_epoch

LABELS = np.r_[np.zeros(150, int), np.ones(150, int)]


def scores(separation: float, seed: int, n: int = 300) -> np.ndarray:
    """Probabilities whose classes overlap less as ``separation`` grows."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(separation * (LABELS[:n] - 0.5), 1.0)
    return 1 / (1 + np.exp(-logits))


def tied_and_distinct() -> dict[str, np.ndarray]:
    """ "good" and "twin" differ only by noise far below the split's sampling error (their
    AUCs differ in the fourth decimal); "weak" separates the classes much less."""
    good = scores(3.0, 0)
    rng = np.random.default_rng(1)
    return {
        "good": good,
        "twin": np.clip(good + rng.normal(0, 0.03, good.shape), 0, 1),
        "weak": scores(0.8, 2),
    }


def test_two_candidates_tied_on_validation_cannot_be_chosen_between():
    probs = tied_and_distinct()
    ranked = sorted(
        ("good", "twin"), key=lambda k: -delong_test(LABELS, probs[k], probs[k])["auc_a"]
    )
    choice = select(
        *ranked, [(LABELS, probs[ranked[0]], probs[ranked[1]])], {"good": (2,), "twin": (1,)}
    )
    assert choice.cannot_choose and choice.p > 0.05
    assert choice.ci95[0] < 0 < choice.ci95[1]
    assert abs(choice.auc_diff) < 0.005
    assert choice.chosen == "twin"  # the simpler of the two, by the declared rule
    sentence = choice.sentence()
    assert sentence.startswith(f"Validation cannot tell {ranked[0]} from {ranked[1]}")
    assert f"AUC difference {choice.auc_diff:.4f}, 95% CI {choice.ci95[0]:.4f} to " in sentence
    assert "by the rule declared in advance (the simpler one: fewer parameters" in sentence
    assert sentence.endswith("twin is chosen.")


def test_two_candidates_that_clearly_differ_are_told_apart():
    probs = tied_and_distinct()
    choice = select(
        "good", "weak", [(LABELS, probs["good"], probs["weak"])], {"good": (2,), "weak": (1,)}
    )
    assert not choice.cannot_choose and choice.p < 0.001 and choice.ci95[0] > 0
    assert choice.chosen == "good"  # the simpler one is worse: no rule needed
    assert choice.sentence().startswith("good is better than weak on validation (AUC difference")
    assert "cannot tell" not in choice.sentence()


def test_a_runner_up_with_the_higher_auc_is_not_beaten():
    """Ranked first on another metric, yet significantly lower in AUC: the rule applies."""
    probs = tied_and_distinct()
    choice = select(
        "weak", "good", [(LABELS, probs["weak"], probs["good"])], {"weak": (2,), "good": (1,)}
    )
    assert choice.cannot_choose and choice.chosen == "good"
    assert choice.sentence().startswith("On validation, good has the higher AUC")


def test_too_few_images_for_a_paired_test_keep_the_best_and_say_so():
    choice = select(
        "a", "b", [([0, 1, 1], [0.1, 0.8, 0.9], [0.2, 0.7, 0.6])], {"a": (2,), "b": (1,)}
    )
    assert choice.p is None and not choice.cannot_choose and choice.chosen == "a"
    assert "too few validation images" in choice.sentence()
    assert Selection.from_dict(choice.to_dict()).sentence() == choice.sentence()


def test_splits_of_several_seeds_pool_their_differences():
    """Three seeds' splits, each a tie: the mean difference's interval is narrower than
    one split's, by about the square root of three."""
    probs = tied_and_distinct()
    one = delong_test(LABELS, probs["good"], probs["twin"])
    diff, (lo, hi), _ = paired_auc_difference([(LABELS, probs["good"], probs["twin"])] * 3)
    assert diff == pytest.approx(one["diff"])
    width = one["diff_ci95"][1] - one["diff_ci95"][0]
    assert hi - lo == pytest.approx(width / np.sqrt(3))
    round_trip = Selection.from_dict(
        select(
            "good", "twin", [(LABELS, probs["good"], probs["twin"])], {"good": (1,), "twin": (1,)}
        ).to_dict()
    )
    assert round_trip.chosen == "good"  # equally simple: the best stays


@pytest.mark.parametrize("tied", [True, False])
def test_a_sweep_says_whether_validation_can_choose_its_best_point(isolated_store, tied):
    """Two grid points, two seeds each, every run scored on its seed's validation split
    (shared by the points). Tied points: the cheaper one (fewer parameters) is chosen."""
    store = RunStore(isolated_store, include_bundled=False)
    base = {"small_cnn": TrainConfig(arch="small_cnn", data="synthetic:20").to_dict()}
    _, jobs = sweep_jobs(base, {"lr": [1e-3, 3e-3]}, [0, 1])
    probs = tied_and_distinct()
    paths = [
        f"train/{'PNEUMONIA' if y else 'NORMAL'}/person{i}_x.jpeg" for i, y in enumerate(LABELS)
    ]
    for job in jobs:
        tag = job.extra[SWEEP_KEY]
        first = tag["point"]["lr"] == 1e-3
        chosen = probs["good"] if first else probs["twin" if tied else "weak"]
        report = full_report(LABELS, np.clip(chosen + 1e-4 * tag["seed"], 0, 1), 0.5, paths)
        run = store.create(job.record(), job.run_id)
        run.save_evaluation(
            {"splits": {"val": report}, "params": 200 if first else 100, "epochs_run": 5}
        )
        run.set_status("completed")
    runs = [store.get(job.run_id) for job in jobs]
    summary = summarize(runs)
    choice = choose_point(runs, summary)
    best = next(s for s in summary if s["best"])
    assert choice.best == describe(best["point"])
    assert choice.cannot_choose is tied
    chosen = next(s for s in summary if s["chosen"])
    if tied:
        assert "Validation cannot tell" in choice.sentence()
        assert describe(chosen["point"]) == choice.chosen == "arch=small_cnn lr=0.003"
    else:
        assert "cannot tell" not in choice.sentence()
        assert chosen is best and describe(best["point"]) == "arch=small_cnn lr=0.001"


def test_early_stopping_keeps_the_earlier_epoch_when_validation_cannot_tell():
    probs = tied_and_distinct()
    state: dict = {}
    assert _replaces_kept_epoch(state, 1, LABELS, probs["weak"], True)  # the first epoch is kept
    assert _replaces_kept_epoch(state, 2, LABELS, probs["good"], True)  # clearly better: replaces
    assert state["best_epoch"] == 2
    assert (
        Selection.from_dict(state["epoch_choice"])
        .sentence()
        .startswith("epoch 2 is better than epoch 1")
    )
    # monitoring the loss, which the paired AUC test does not measure, the loss decides
    assert _replaces_kept_epoch(dict(state), 3, LABELS, probs["twin"], False)
    assert not _replaces_kept_epoch(state, 3, LABELS, probs["twin"], True)  # a tie: 2 stays
    assert state["best_epoch"] == 2 and state["kept_val"]["epoch"] == 2
    said = Selection.from_dict(state["epoch_choice"]).sentence()
    assert said.startswith("Validation cannot tell epoch 3 from epoch 2")
    assert said.endswith("(the shorter-trained one: the earlier epoch), epoch 2 is chosen.")
