"""The label-free adaptation methods by name, and how an adapted run's figures are
labelled: what the CLI's choices and the pages need, without the torch that
:mod:`cxr_core.predict.adaptation` imports to carry them out."""

from __future__ import annotations

from cxr_core.store.runs import Run

METHODS = ("bn", "prior", "both")
"""bn: AdaBN, BatchNorm statistics re-estimated on the site's films; prior: the threshold
moved by the site's prevalence, estimated by EM; both: the two, in that order."""
ON_THESE_FILMS = "adapted on these films without their labels"
"""How an adapted run's figures on the films it was adapted on are labelled everywhere."""
INDUCTIVE = "inductive"


def is_adapted(run: Run) -> bool:
    return run.adaptation() is not None


def figures_label(run: Run, set_key: str | None = None) -> str:
    """What a run's figures on the image set ``set_key`` are: :data:`INDUCTIVE`, or
    :data:`ON_THESE_FILMS` (the set it was adapted on), or adapted on other films."""
    adaptation = run.adaptation()
    if adaptation is None:
        return INDUCTIVE
    site = adaptation.get("site", {})
    if set_key is None or set_key == site.get("fingerprint"):
        return ON_THESE_FILMS
    return f"adapted without labels on other films ({site.get('name')})"


def describe(run: Run) -> str:
    """One line on what an adapted run is ("" for an inductive run)."""
    adaptation = run.adaptation()
    if adaptation is None:
        return ""
    site = adaptation.get("site", {})
    return (
        f"adapted from {adaptation.get('source_run')} ({adaptation.get('method')}) on "
        f"{site.get('name')} without their labels"
    )
