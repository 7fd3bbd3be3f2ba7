"""ROC and precision-recall curves of runs on a set, each with its operating point, and
the published reference point drawn for orientation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxr_core.analysis.plots._palette import color

KERMANY_2018 = {
    "accuracy": 0.928,
    "sensitivity": 0.932,
    "specificity": 0.901,
    "auc": 0.968,
    "label": "Kermany et al. 2018 (another setup: their model, official test split)",
}
"""The published reference point (Cell 172(5), 2018), drawn for orientation only."""


def _roc_traces(
    reports: Mapping[str, dict], reference: bool, with_ap: bool = False
) -> list[go.Scatter]:
    """Chance, each run's ROC curve (its AUC, and AP if asked, in the legend) and its
    operating point at its threshold (a circle), and the published reference point,
    labelled as a different setup."""
    traces = [
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "gray", "dash": "dot"},
                   name="chance", hoverinfo="skip")
    ]  # fmt: skip
    for i, (name, report) in enumerate(reports.items()):
        if "roc" not in report:
            continue
        c = color(i)
        scores = f"AUC {report['roc_auc']:.3f}" + (
            f", AP {report['pr_auc']:.3f}" if with_ap else ""
        )
        traces.append(
            go.Scatter(
                x=report["roc"]["fpr"],
                y=report["roc"]["tpr"],
                mode="lines",
                line={"color": c},
                name=f"{name} ({scores})",
                legendgroup=name,
            )
        )
        traces.append(
            go.Scatter(
                x=[1 - report["specificity"]],
                y=[report["sensitivity"]],
                mode="markers",
                marker={"color": c, "size": 10, "symbol": "circle-open", "line": {"width": 2}},
                name=f"{name} at threshold {report['threshold']:.2f}",
                legendgroup=name,
                showlegend=False,
            )
        )
    if reference:
        ref = KERMANY_2018
        traces.append(
            go.Scatter(
                x=[1 - ref["specificity"]],
                y=[ref["sensitivity"]],
                mode="markers+text",
                marker={"symbol": "star", "size": 14, "color": "black"},
                text=["Kermany 2018"],
                textposition="bottom right",
                name=f"{ref['label']} (AUC {ref['auc']:.3f})",
            )
        )
    return traces


def _legend_below(fig: go.Figure, plot_px: int, per_row: int) -> None:
    """Legend under the plots, the figure growing with it (the plots keep their size)."""
    entries = sum(t.showlegend is not False for t in fig.data)
    fig.update_layout(
        height=plot_px + 24 * -(-entries // per_row),
        margin={"t": 30, "b": 10, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.1, "yanchor": "top", "x": 0},
    )


def roc_curves(reports: Mapping[str, dict], reference: bool = True) -> go.Figure:
    """One square ROC chart: each run's curve with its AUC and its operating point."""
    fig = go.Figure(_roc_traces(reports, reference))
    _legend_below(fig, 470, 1)
    fig.update_xaxes(
        title_text="1 - specificity (false positive rate)",
        range=[-0.015, 1.015],
        constrain="domain",
    )
    fig.update_yaxes(
        title_text="sensitivity (true positive rate)", range=[-0.015, 1.015], scaleanchor="x"
    )
    return fig


def roc_pr(
    reports: Mapping[str, dict], reference: bool = True, corner: float | None = None
) -> go.Figure:
    """ROC (left) and precision-recall (right) side by side, one legend entry per run
    below both (its AUC and AP; a click hides both its curves).

    Each plot is a square that keeps its size whatever the number of runs: the legend
    grows the figure, never squashes the plots. PR shows the share of pneumonia images (a
    random model's precision) as a dotted line. ``corner`` shows only that much of each
    axis near the perfect corner, where good runs' curves part."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["ROC", "Precision-recall"], horizontal_spacing=0.07
    )
    roc = _roc_traces(reports, reference, with_ap=True)
    pr, lines = [], []
    for i, (name, report) in enumerate(reports.items()):
        if "pr" not in report:
            continue
        pr.append(
            go.Scatter(
                x=report["pr"]["recall"],
                y=report["pr"]["precision"],
                mode="lines",
                line={"color": color(i)},
                name=f"{name} (AP {report['pr_auc']:.3f})",
                legendgroup=name,
                showlegend=False,
            )
        )
        prevalence = float(np.mean(report["labels"]))
        # One layout update for all of them: fig.add_hline per run costs 30 ms each.
        lines.append(
            {
                "type": "line",
                "xref": "x2 domain",
                "yref": "y2",
                "x0": 0,
                "x1": 1,
                "y0": prevalence,
                "y1": prevalence,
                "line": {"color": color(i), "dash": "dot", "width": 1},
            }
        )
    fig.add_traces([*roc, *pr], rows=1, cols=[1] * len(roc) + [2] * len(pr))
    fig.update_layout(shapes=lines)
    _legend_below(fig, 560, 2)
    side = corner or 1.0
    pad = side * 0.015
    near_one, near_zero = [1 - side - pad, 1 + pad], [-pad, side + pad]
    # Squares: each y axis scaled to its x axis, and whichever is longer gives up domain.
    fig.update_xaxes(constrain="domain", title_standoff=6)
    fig.update_yaxes(constrain="domain", title_standoff=4)
    fig.update_xaxes(range=near_zero, title_text="1 - specificity", row=1, col=1)
    fig.update_yaxes(range=near_one, scaleanchor="x", title_text="sensitivity", row=1, col=1)
    fig.update_xaxes(range=near_one, title_text="recall (sensitivity)", row=1, col=2)
    fig.update_yaxes(range=near_one, scaleanchor="x2", title_text="precision", row=1, col=2)
    return fig
