"""Runs side by side with their 95% intervals: a forest plot per metric, the shift from
the internal test split to an outside set, and what a score costs in latency and size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxr_core.analysis.plots._palette import color
from cxr_core.predict.adaptation_catalogue import INDUCTIVE
from cxr_core.scoring.metrics import CATALOGUE

_SHIFT_STYLE = {
    "internal": ("internal test split", "#7f7f7f", "circle"),
    "outside": ("outside set", "#d62728", "diamond"),
}
"""Where a run was scored -> (legend label, colour, marker) in the shift plot."""


def tradeoff(table: pd.DataFrame, score: str = "roc_auc", label: str | None = None) -> go.Figure:
    """Score (with its 95% interval when the table has ``<score>_lo``/``_hi``) against
    inference latency, marker size by weights file size: what a point costs. Runs are
    named in the legend beside the chart: labels on the points collide and get clipped."""
    data = table.dropna(subset=[score, "latency_ms"])
    fig = go.Figure()
    for i, row in enumerate(data.to_dict("records")):
        size = float(row.get("size_mb") or 0)
        error = None
        if f"{score}_lo" in row and np.isfinite(row[f"{score}_lo"]):
            error = {
                "type": "data",
                "array": [row[f"{score}_hi"] - row[score]],
                "arrayminus": [row[score] - row[f"{score}_lo"]],
                "thickness": 1.5,
            }
        fig.add_scatter(
            x=[row["latency_ms"]],
            y=[row[score]],
            error_y=error,
            mode="markers",
            marker={"size": 10 + 4 * np.sqrt(size), "color": color(i), "opacity": 0.85},
            name=f"{row['run']} ({size:.1f} MB)",
        )
    fig.update_layout(
        xaxis_title="latency per image (ms)",
        yaxis_title=label or score,
        height=max(380, 120 + 22 * len(data)),
        margin={"t": 30, "b": 10, "l": 10, "r": 10},
        legend={"x": 1.02, "y": 1, "xanchor": "left"},
    )
    return fig


def _fitted_range(lows: Sequence[float], highs: Sequence[float]) -> list[float]:
    """An axis range that holds every interval with a small margin, inside [0, 1] plus that
    margin: a fixed 0..1 axis would make 0.95 and 0.99 look alike."""
    values = [v for v in (*lows, *highs) if v is not None and np.isfinite(v)]
    if not values:
        return [0.0, 1.0]
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.12, 0.005)
    return [max(lo - pad, -0.01), min(hi + pad, 1.01)]


PANELS_PER_ROW = 2
"""Forest panels side by side: beside the runs' names, four panels on a narrow page left
each too little room for its title (they overlapped at 800 px)."""


def _cell(i: int) -> tuple[int, int]:
    """The (row, col) of the ``i``-th panel (from 0), both counted from 1 as Plotly does."""
    return i // PANELS_PER_ROW + 1, i % PANELS_PER_ROW + 1


def _panels(keys: Sequence[str], n_runs: int, extra: int) -> go.Figure:
    """One panel per metric, two to a row, the runs down each row's shared y axis; the
    figure's height fits ``n_runs`` rows per panel plus ``extra`` pixels (a legend), and a
    panel's title keeps 100 px clear of the panel above (its tick labels; Streamlit's theme
    draws them larger than Plotly's)."""
    rows, cols = _cell(len(keys) - 1)[0], min(len(keys), PANELS_PER_ROW)
    height = extra + rows * (100 + 34 * n_runs)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        shared_yaxes=True,
        horizontal_spacing=0.06,
        vertical_spacing=min(100 / height, 0.3) if rows > 1 else 0.0,
        subplot_titles=[CATALOGUE[k].label for k in keys],
    )
    fig.update_layout(height=height)
    return fig


def _run_labels(table: pd.DataFrame) -> list[str]:
    """Each row's run, marked where its figures are not inductive (a run adapted without
    labels), so a chart never shows them as the others'."""
    figures = table["figures"] if "figures" in table else [INDUCTIVE] * len(table)
    return [r if f == INDUCTIVE else f"{r} ({f})" for r, f in zip(table["run"], figures)]


def forest(table: pd.DataFrame, keys: Sequence[str]) -> go.Figure:
    """A forest plot: each run's value and 95% interval (error bars), one panel per metric
    of the catalogue, the runs down a shared axis, each x axis fitted to its intervals.
    ``table`` holds ``run``, ``<key>``, ``<key>_lo`` and ``<key>_hi`` per metric."""
    runs = _run_labels(table)
    fig = _panels(keys, len(runs), extra=20)
    colors = [color(i) for i in range(len(runs))]
    traces = []
    for i, key in enumerate(keys):
        info = CATALOGUE[key]
        scale, unit, digits = (100, "%", 1) if info.percent else (1, "", 3)
        values = table[key].to_numpy(dtype=float)
        lo = table[f"{key}_lo"].to_numpy(dtype=float)
        hi = table[f"{key}_hi"].to_numpy(dtype=float)
        has_ci = np.isfinite(lo) & np.isfinite(hi)
        text = [
            f"{v * scale:.{digits}f}{unit}"
            + (f" ({a * scale:.{digits}f}-{b * scale:.{digits}f})" if ok else "")
            for v, a, b, ok in zip(values, lo, hi, has_ci)
        ]
        # One trace per panel (colours per point): a trace per run and metric costs
        # Plotly a validation each, 0.3 s for 10 runs.
        traces.append(
            go.Scatter(
                x=values,
                y=runs,
                error_x={
                    "type": "data",
                    "array": np.where(has_ci, hi - values, 0),
                    "arrayminus": np.where(has_ci, values - lo, 0),
                    "thickness": 2,
                    "width": 5,
                    "color": "#555",
                },
                mode="markers",
                marker={"color": colors, "size": 10, "symbol": "diamond"},
                text=text,
                name=info.label,
                showlegend=False,
                hovertemplate=f"%{{y}}<br>{info.label} %{{text}}<extra></extra>",
            )
        )
        fig.update_xaxes(
            range=_fitted_range([*lo, *values], [*hi]),
            tickformat=(".0%" if np.nanmax(hi) - np.nanmin(lo) > 0.04 else ".1%")
            if info.percent
            else ".3f",
            nticks=4,
            row=_cell(i)[0],
            col=_cell(i)[1],
        )
    cells = [_cell(i) for i in range(len(traces))]
    fig.add_traces(traces, rows=[r for r, _ in cells], cols=[c for _, c in cells])
    fig.update_yaxes(categoryorder="array", categoryarray=runs[::-1], automargin=True)
    fig.update_layout(
        margin={"t": 40, "b": 10, "l": 10, "r": 10},
        hovermode="closest",
    )
    return fig


def _shift_traces(rows: pd.DataFrame, runs: list[str], first: bool) -> list[go.Scatter]:
    """One metric's panel: a grey line joining each run's two points, then the internal
    and outside points with their intervals (in the legend on the ``first`` panel only).
    ``rows`` is indexed by (run, where)."""
    joins_x, joins_y = [], []
    for run in runs:
        joins_x += [rows.loc[(run, "internal"), "value"], rows.loc[(run, "outside"), "value"]]
        joins_x.append(None)
        joins_y += [run, run, None]
    traces = [
        go.Scatter(
            x=joins_x,
            y=joins_y,
            mode="lines",
            showlegend=False,
            line={"color": "#bbbbbb", "width": 2},
            hoverinfo="skip",
        )
    ]
    for where, (label, c, symbol) in _SHIFT_STYLE.items():
        part = rows.xs(where, level="where").loc[runs]
        if part["name"].nunique() == 1:  # name the set once, where all runs share it
            label = f"{label}: {part['name'].iloc[0]}"
        traces.append(
            go.Scatter(
                x=part["value"],
                y=runs,
                error_x={
                    "type": "data",
                    "array": part["hi"] - part["value"],
                    "arrayminus": part["value"] - part["lo"],
                    "thickness": 1.5,
                    "width": 4,
                    "color": c,
                },
                mode="markers",
                marker={"color": c, "size": 9, "symbol": symbol},
                name=label,
                legendgroup=where,
                showlegend=first,
                text=part["name"],
                hovertemplate="%{y}: %{x:.3f} on %{text}<extra></extra>",
            )
        )
    return traces


def shift(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Each run on its internal test split (grey circles) and on an outside set (red
    diamonds), joined by a line, with 95% intervals; one panel per metric, the runs down a
    shared axis, each x axis fitted to the intervals. ``frames`` maps a run to its
    :func:`cxr_core.analysis.comparison.shift_frame`."""
    keys = list(dict.fromkeys(k for f in frames.values() for k in f["metric"]))
    runs = list(frames)
    fig = _panels(keys, len(runs), extra=60)
    traces, cells = [], []
    for i, key in enumerate(keys):
        rows = pd.concat(
            [f[f["metric"] == key].assign(run=run) for run, f in frames.items()]
        ).set_index(["run", "where"])
        panel = _shift_traces(rows, runs, first=i == 0)
        traces, cells = traces + panel, cells + [_cell(i)] * len(panel)
        fig.update_xaxes(
            range=_fitted_range(rows["lo"].tolist() + rows["value"].tolist(), rows["hi"].tolist()),
            tickformat=".0%" if CATALOGUE[key].percent else ".2f",
            nticks=5,
            row=_cell(i)[0],
            col=_cell(i)[1],
        )
    fig.add_traces(traces, rows=[r for r, _ in cells], cols=[c for _, c in cells])
    fig.update_yaxes(categoryorder="array", categoryarray=runs[::-1], automargin=True)
    fig.update_layout(
        margin={"t": 40, "b": 10, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.08, "yanchor": "top", "x": 0},
        hovermode="closest",
    )
    return fig
