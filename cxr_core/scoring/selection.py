"""Choosing a best on validation, and saying when validation cannot choose.

Wherever CXR Lab picks a best (a sweep's grid point, an ensemble against its best member,
the epoch early stopping keeps), the winner on validation is tested against the runner-up
on the same validation images: DeLong's paired test on the AUC, the threshold-free
headline. Over several seeds (each with its own validation split) the per-split
differences are averaged, the splits counted as independent samples. When the difference
is not significant (p >= 0.05), validation cannot choose between them, and a rule
declared here, before any result is seen, picks: the simpler candidate, with fewer
parameters, then fewer training epochs (:data:`TIE_RULE`). On a saturated validation
split (every candidate above 0.999 AUC) that is most choices, and the simpler model is
the one least likely to have fitted the split's quirks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cxr_core.errors import UserError
from cxr_core.scoring.stats import ALPHA, delong_test, format_p, normal_half_width, two_sided_p

TIE_RULE = "the simpler one: fewer parameters, then fewer training epochs"
"""What is chosen when validation cannot tell the best from the runner-up."""

Pair = tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]
"""(labels, best's probabilities, runner-up's probabilities) on one validation split."""


@dataclass(frozen=True)
class Selection:
    """The best on validation against the runner-up: their paired AUC difference (best
    minus runner-up), its 95% interval and p-value (None where a split has too few images
    of a class for the test), and the ``chosen`` one after the tie rule."""

    best: str
    runner_up: str
    chosen: str
    auc_diff: float
    ci95: tuple[float, float]
    p: float | None
    rule: str = TIE_RULE

    @property
    def cannot_choose(self) -> bool:
        """Validation does not show the best to be better: no significant AUC gain (a
        best ranked on another metric, or a loss, may even have the lower AUC)."""
        return self.p is not None and not (self.p < ALPHA and self.auc_diff > 0)

    def to_dict(self) -> dict:
        """As a record keeps it (evaluation.json's ``selection``)."""
        return {**asdict(self), "ci95": list(self.ci95)}

    @classmethod
    def from_dict(cls, data: Mapping | None) -> Selection | None:
        """What a record kept (None for a record without one)."""
        if not data:
            return None
        return cls(**{**data, "ci95": tuple(data["ci95"])})

    def sentence(self) -> str:
        """The verdict in one sentence, with the difference, its interval and p."""
        if self.p is None:
            return (
                f"{self.best} ranks above {self.runner_up} on validation; too few validation "
                "images of each class for a paired test."
            )
        figures = (
            f"AUC difference {self.auc_diff:.4f}, 95% CI {self.ci95[0]:.4f} to "
            f"{self.ci95[1]:.4f}, {format_p(self.p)}"
        )
        if not self.cannot_choose:
            return f"{self.best} is better than {self.runner_up} on validation ({figures})."
        verdict = (
            f"Validation cannot tell {self.best} from {self.runner_up}"
            if self.p >= ALPHA
            else f"On validation, {self.runner_up} has the higher AUC"
        )
        rule = f"by the rule declared in advance ({self.rule}), {self.chosen} is chosen"
        return f"{verdict} ({figures}); {rule}."


def paired_auc_difference(pairs: Sequence[Pair]) -> tuple[float, tuple[float, float], float]:
    """DeLong's paired AUC difference (a - b) on each split, averaged over the splits:
    the mean, its 95% interval and two-sided p. A UserError when a split has fewer than
    two images of a class."""
    if not pairs:
        raise UserError("no validation split shared by the two candidates")
    tests = [delong_test(labels, a, b) for labels, a, b in pairs]
    diff = float(np.mean([t["diff"] for t in tests]))
    se = math.sqrt(sum(t["se"] ** 2 for t in tests)) / len(tests)
    z = diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0
    half = normal_half_width(se)
    return diff, (diff - half, diff + half), two_sided_p(z)


def select(
    best: str,
    runner_up: str,
    pairs: Sequence[Pair],
    cost: Mapping[str, tuple[float, ...]],
    rule: str = TIE_RULE,
) -> Selection:
    """Whether validation can tell ``best`` from ``runner_up`` (their validation scores in
    ``pairs``), and which is chosen: ``best``, unless validation cannot tell them apart
    and ``runner_up`` costs less (``cost``: lower is simpler, compared in order)."""
    try:
        diff, ci, p = paired_auc_difference(pairs)
    except UserError:
        return Selection(best, runner_up, best, math.nan, (math.nan, math.nan), None, rule)
    tied = Selection(best, runner_up, best, diff, ci, p, rule).cannot_choose
    chosen = runner_up if tied and cost[runner_up] < cost[best] else best
    return Selection(best, runner_up, chosen, diff, ci, p, rule)
