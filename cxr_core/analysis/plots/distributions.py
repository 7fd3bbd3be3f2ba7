"""How images spread: per class and split (bars), over the model's scores (histograms
with the thresholds), and over calibration bins (the reliability diagram)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxr_core.analysis.plots._palette import color
from cxr_core.settings import CLASSES


def class_counts(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Grouped bars: images per class for each split of a counts table."""
    fig = go.Figure()
    for i, cls in enumerate(CLASSES):
        fig.add_bar(x=table["split"], y=table[cls], name=cls, marker_color=color(i))
    fig.update_layout(
        barmode="group",
        title=title,
        height=300,
        yaxis_title="images",
        margin={"t": 40, "b": 10, "l": 10, "r": 10},
    )
    return fig


def _threshold_marks(marks: Mapping[str, float]) -> tuple[list[dict], list[dict]]:
    """A vertical line and a label per threshold, the first one bold."""
    shapes, notes = [], []
    for i, (name, threshold) in enumerate(marks.items()):
        line = {"color": "black" if i == 0 else color(i + 2), "width": 2 if i == 0 else 1}
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": threshold,
                "x1": threshold,
                "y0": 0,
                "y1": 1,
                "line": {**line, "dash": "solid" if i == 0 else "dash"},
            }
        )
        notes.append(
            {
                "x": threshold,
                "y": 1 - 0.08 * i,
                "xref": "x",
                "yref": "paper",
                "text": name,
                "showarrow": False,
                "xanchor": "left",
                "font": {"size": 11},
            }
        )
    return shapes, notes


def score_distributions(
    labels: Sequence[int], probs: Sequence[float], marks: Mapping[str, float]
) -> go.Figure:
    """How the run scores each true class (histograms of P(pneumonia), counts on a log
    axis: most images sit near 0 or 1), with a vertical line at each threshold in
    ``marks`` (name -> threshold)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    fig = go.Figure()
    for label, cls in enumerate(CLASSES):
        fig.add_histogram(
            x=probs[labels == label],
            xbins={"start": 0, "end": 1.0001, "size": 0.02},
            name=f"true {cls}",
            marker_color=color(label),
            opacity=0.6,
        )
    shapes, notes = _threshold_marks(marks)
    fig.update_layout(
        barmode="overlay",
        shapes=shapes,
        annotations=notes,
        height=320,
        xaxis={"title": "P(pneumonia)", "range": [0, 1]},
        yaxis={"title": "images", "type": "log", "dtick": 1},
        margin={"t": 20, "b": 10, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.25, "yanchor": "top"},
    )
    return fig


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def normal_scores(
    sets: Mapping[str, tuple[Sequence[int], Sequence[float]]], threshold: float
) -> go.Figure:
    """P(pneumonia) of the normal films of each set (name -> (labels, probabilities)),
    with the run's threshold, on a log-odds axis: most normal films score near 0, where a
    linear axis squashes them."""
    fig = go.Figure()
    for i, (name, (labels, probs)) in enumerate(sets.items()):
        normal = np.asarray(labels) == 0
        fig.add_histogram(
            x=_logit(np.asarray(probs)[normal]),
            name=f"{name} ({int(np.sum(normal))} normal films)",
            histnorm="percent",
            xbins={"start": -9.25, "end": 9.25, "size": 0.5},
            marker_color=color(i),
            opacity=0.6,
        )
    fig.add_vline(
        x=float(_logit(threshold)),
        line={"color": "black", "dash": "dash"},
        annotation_text=f"threshold {threshold:.3f} (chosen on val)",
        annotation_position="top right",
    )
    ticks = [0.0001, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999]
    fig.update_layout(
        barmode="overlay",
        height=360,
        margin={"t": 30, "b": 10, "l": 10, "r": 10},
        xaxis={
            "title": "P(pneumonia) of the NORMAL films (log-odds scale)",
            "tickvals": _logit(np.array(ticks)).tolist(),
            "ticktext": [f"{t:g}" for t in ticks],
            "range": [-9.5, 9.5],
        },
        yaxis={"title": "% of the set's normal films"},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def _reliability_traces(i: int, name: str, bins: Sequence[Mapping], runs: int) -> list:
    """One curve's bins: observed against predicted (top), image counts as bars (below),
    the bars of ``runs`` curves side by side within each bin."""
    full = [b for b in bins if b["count"]]
    curve = go.Scatter(
        x=[b["mean_predicted"] for b in full],
        y=[b["observed_fraction"] for b in full],
        customdata=[[b["count"], b["bin_lo"], b["bin_hi"]] for b in full],
        mode="lines+markers",
        line={"color": color(i)},
        marker={"size": [6 + 2 * np.log1p(b["count"]) for b in full]},
        name=name,
        legendgroup=name,
        hovertemplate=f"{name}<br>bin %{{customdata[1]:.1f}}-%{{customdata[2]:.1f}}: "
        "%{customdata[0]} images<br>predicted %{x:.3f}, observed %{y:.3f}<extra></extra>",
    )
    bars = go.Bar(
        x=[(b["bin_lo"] + b["bin_hi"]) / 2 for b in bins],
        y=[b["count"] for b in bins],
        width=[(b["bin_hi"] - b["bin_lo"]) / max(runs, 1) * 0.9 for b in bins],
        offset=[(b["bin_hi"] - b["bin_lo"]) * (i / max(runs, 1) - 0.5) for b in bins],
        marker_color=color(i),
        name=f"{name}: images per bin",
        legendgroup=name,
        showlegend=False,
        hovertemplate="%{y} images<extra></extra>",
    )
    return [curve, bars]


def reliability(curves: Mapping[str, Sequence[Mapping]], title: str = "") -> go.Figure:
    """A reliability diagram: per bin, the observed share of pneumonia against the mean
    predicted probability (on the diagonal: calibrated), the bins' image counts as bars
    below. ``curves`` maps a name ("before", "after temperature scaling", a run) to its
    bins as :func:`cxr_core.scoring.calibration.reliability_bins` returns them."""
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.05
    )
    traces = [
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"color": "gray", "dash": "dot"},
            name="calibrated",
            hoverinfo="skip",
        )
    ]
    for i, (name, bins) in enumerate(curves.items()):
        traces += _reliability_traces(i, name, bins, len(curves))
    rows = [1] + [1, 2] * len(curves)
    fig.add_traces(traces, rows=rows, cols=[1] * len(rows))
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(range=[0, 1], title_text="mean predicted P(pneumonia)", row=2, col=1)
    fig.update_yaxes(range=[-0.02, 1.02], title_text="observed share of pneumonia", row=1, col=1)
    fig.update_yaxes(title_text="images", type="log", dtick=1, row=2, col=1)
    fig.update_layout(
        title=title,
        height=560,
        margin={"t": 40 if title else 20, "b": 10, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.12, "yanchor": "top", "x": 0},
        barmode="overlay",
    )
    return fig
