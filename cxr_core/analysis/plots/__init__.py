"""Plotly figures for the app, the HTML report and tests, all from one place: training
curves (curves), ROC/PR (roc), heat maps of confusion matrices and sweep grids (heatmaps),
class, score and calibration distributions (distributions), and runs compared with their
intervals (intervals). Inputs are the plain records of the run store (history.jsonl,
evaluation.json) or tables built from them, so nothing here needs Streamlit; a run keeps
its colour (``color``) from chart to chart."""

from cxr_core.analysis.plots._palette import color
from cxr_core.analysis.plots.curves import learning_curves, smooth
from cxr_core.analysis.plots.distributions import (
    class_counts,
    normal_scores,
    reliability,
    score_distributions,
)
from cxr_core.analysis.plots.heatmaps import (
    clickable_confusion_matrix,
    confusion_matrix,
    grid_value,
    mean_sd,
    sweep_heatmap,
)
from cxr_core.analysis.plots.intervals import forest, shift, tradeoff
from cxr_core.analysis.plots.roc import KERMANY_2018, roc_curves, roc_pr

__all__ = [
    "KERMANY_2018",
    "class_counts",
    "clickable_confusion_matrix",
    "color",
    "confusion_matrix",
    "forest",
    "grid_value",
    "learning_curves",
    "mean_sd",
    "normal_scores",
    "reliability",
    "roc_curves",
    "roc_pr",
    "score_distributions",
    "shift",
    "smooth",
    "sweep_heatmap",
    "tradeoff",
]
