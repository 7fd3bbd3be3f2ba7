"""Heat maps: the confusion matrix (plain, or with its cells clickable) and a sweep's
two-dimensional grid of validation scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from cxr_core.scoring.metrics import CATALOGUE
from cxr_core.settings import CLASSES


def confusion_matrix(cm: Sequence[Sequence[int]], normalise: bool, title: str = "") -> go.Figure:
    """Rows: true class, columns: predicted; normalised per true class (row)."""
    counts = np.asarray(cm, dtype=float)
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalise else counts
    text = [[f"{v:.1%}" if normalise else f"{int(v)}" for v in row_values] for row_values in values]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=[f"pred {c}" for c in CLASSES],
            y=[f"true {c}" for c in CLASSES],
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalise else None,
            showscale=False,
        ),
        layout={
            "title": title,
            "height": 300,
            "margin": {"t": 40, "b": 10, "l": 10, "r": 10},
            "yaxis": {"autorange": "reversed"},
        },
    )
    return fig


def clickable_confusion_matrix(
    cm: Sequence[Sequence[int]], cells: Mapping[tuple[str, str], str]
) -> go.Figure:
    """The confusion matrix in counts with an invisible marker on each cell: Plotly
    selects markers, not heat map cells, so a click on a cell selects its marker (x:
    ``pred <class>``, y: ``true <class>``). ``cells`` names each (true class, decision)."""
    fig = confusion_matrix(cm, False, "click a cell to see its images")
    x, y, text = [], [], []
    for (truth, decision), plain in cells.items():
        count = cm[CLASSES.index(truth)][CLASSES.index(decision)]
        x.append(f"pred {decision}")
        y.append(f"true {truth}")
        text.append(f"{count} {plain}")
    hidden = {"marker": {"opacity": 0}}
    fig.add_scatter(
        x=x,
        y=y,
        mode="markers",
        marker={"symbol": "square", "size": 90, "opacity": 0},
        selected=hidden,
        unselected=hidden,
        text=text,
        hovertemplate="%{text}: click to see them<extra></extra>",
        showlegend=False,
    )
    return fig


def grid_value(value: object) -> str:
    """A grid point's value of one dimension as shown: None is the option's default."""
    return "default" if value is None else str(value)


def mean_sd(point: Mapping, percent: bool) -> str:
    """A sweep point's metric over its seeds (as ``sweeps.summarize`` gives it): '91.2% ±
    1.3', '(1 seed)' with one, '-' before any run completed."""
    if point["mean"] is None:
        return "-"
    scale, unit, digits = (100, "%", 1) if percent else (1, "", 3)
    text = f"{point['mean'] * scale:.{digits}f}{unit}"
    if point["sd"] is None:
        return f"{text} (1 seed)"
    return f"{text} ± {point['sd'] * scale:.{digits}f}"


def sweep_heatmap(
    summary: Sequence[Mapping], grid: Mapping[str, list], dims: Sequence[str], metric: str
) -> go.Figure:
    """A sweep's validation ``metric`` over a two-dimensional grid (``dims``: rows, then
    columns): the mean over seeds as colour, mean +- sd written in each cell and the best
    point starred. ``summary`` is ``sweeps.summarize``'s."""
    info = CATALOGUE[metric]
    rows, cols = grid[dims[0]], grid[dims[1]]
    names = [d.removeprefix("augment.") for d in dims]
    z = [[None] * len(cols) for _ in rows]
    text = [[""] * len(cols) for _ in rows]
    for point in summary:
        i, j = rows.index(point["point"][dims[0]]), cols.index(point["point"][dims[1]])
        z[i][j] = point["mean"]
        text[i][j] = mean_sd(point, info.percent) + (" ★" if point["best"] else "")
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=[grid_value(v) for v in cols],
            y=[grid_value(v) for v in rows],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar={"title": {"text": f"val {info.label}"}},
            hovertemplate=f"{names[0]} %{{y}}<br>{names[1]} %{{x}}<br>%{{text}}<extra></extra>",
        )
    )
    figure.update_layout(
        xaxis={"title": {"text": names[1]}, "type": "category"},
        yaxis={"title": {"text": names[0]}, "type": "category", "autorange": "reversed"},
        height=max(260, 90 * len(rows) + 120),
        margin={"t": 30, "b": 10, "l": 10, "r": 10},
    )
    return figure
