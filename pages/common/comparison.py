"""The Compare page's words and choices, without Streamlit: how an image set is named,
which folder to offer for scoring, and one operating point in a sentence."""

from __future__ import annotations

from cxr_core.data.sources import is_synthetic_spec
from cxr_core.errors import UserError
from cxr_core.execution.scoring_jobs import Target, target
from cxr_core.predict.evalsets import EvalSet


def set_label(evalset: EvalSet) -> str:
    """How the "Evaluated on" choice names a set: "test/ of /data/chest_xray (624 images)",
    "internal_test: carved from the training folder (784 images)"."""
    if evalset.internal:
        return f"{evalset.split}: carved from the training folder ({evalset.n} images)"
    return evalset.name


def default_target(spec: str | None, split: str = "test") -> Target | None:
    """The folder to offer for scoring: the Data page's, when it holds labelled images for
    ``split`` (a test/ folder, say); None otherwise, when it cannot be read, or when it is
    the synthetic demo (its scores say nothing about radiographs)."""
    if not spec or is_synthetic_spec(spec):
        return None
    try:
        found = target(spec, split)
    except UserError:
        return None
    folder = "val" if split == "official_val" else split
    return found if found.name.startswith(f"{folder}/") else None


def per_1000(point: dict) -> str:
    """One operating point for people: what it means for 1000 children like these."""
    return (
        f"Per 1000 children at this set's prevalence ({100 * point['prevalence']:.1f}% "
        f"pneumonia): **{point['missed_per_1000']:.0f} missed pneumonias**, "
        f"**{point['false_alarms_per_1000']:.0f} false alarms**."
    )
