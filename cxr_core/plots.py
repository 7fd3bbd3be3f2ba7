"""Plotly figures for the app (and for tests and benchmark reports): learning curves,
confusion matrices, ROC/PR overlays, data counts. Inputs are the plain records of the
run store (history.jsonl, evaluation.json), so nothing here needs Streamlit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from cxr_core.settings import CLASSES

PALETTE = qualitative.D3 + qualitative.Set2

KERMANY_2018 = {
    "accuracy": 0.928,
    "sensitivity": 0.932,
    "specificity": 0.901,
    "auc": 0.968,
    "label": "Kermany et al. 2018 (another setup: their model, official test split)",
}
"""The published reference point (Cell 172(5), 2018), drawn for orientation only."""

CURVES = {
    "loss": ("train_loss", "val_loss"),
    "accuracy": ("train_accuracy", "val_accuracy"),
    "F1": ("train_f1", "val_f1"),
    "AUC": ("train_roc_auc", "val_roc_auc"),
}
"""Panel name -> (train key, val key) in the history's epoch records."""


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average, debiased so the start is not pulled
    towards zero; ``weight`` 0 returns the values unchanged."""
    values = np.asarray(values, dtype=float)
    if weight <= 0 or len(values) == 0:
        return values
    out, last, norm = np.empty_like(values), 0.0, 0.0
    for i, v in enumerate(values):
        if not np.isfinite(v):
            out[i] = np.nan
            continue
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = last / norm
    return out


def epoch_frame(history: list[dict]) -> pd.DataFrame:
    """Epoch records (the last one wins if an epoch was logged twice)."""
    rows = [r for r in history if r.get("type") == "epoch"]
    if not rows:
        return pd.DataFrame(columns=["epoch"])
    return pd.DataFrame(rows).drop_duplicates("epoch", keep="last").sort_values("epoch")


def step_frame(history: list[dict]) -> pd.DataFrame:
    rows = [r for r in history if r.get("type") == "step"]
    if not rows:
        return pd.DataFrame(columns=["global_step", "loss"])
    return pd.DataFrame(rows).drop_duplicates("global_step", keep="last").sort_values("global_step")


def learning_curves(
    histories: Mapping[str, list[dict]], smoothing: float = 0.0, height: int = 760
) -> go.Figure:
    """Training loss per logged step, then loss, accuracy, F1 and AUC per epoch, train
    (dashed) against validation (solid); one colour per run, so runs overlay.

    Train accuracy/F1/AUC are running values over the epoch's augmented batches."""
    fig = make_subplots(
        rows=3,
        cols=2,
        specs=[[{"colspan": 2}, None], [{}, {}], [{}, {}]],
        subplot_titles=["training loss per step", *CURVES],
        vertical_spacing=0.12,
        horizontal_spacing=0.08,
    )
    panels = [(2, 1), (2, 2), (3, 1), (3, 2)]
    # Added in one call: trace by trace, Plotly re-validates the figure each time (0.7 s
    # for 20 runs' 260 traces).
    traces, cells = [], []
    for i, (name, history) in enumerate(histories.items()):
        c = color(i)
        steps = step_frame(history)
        if len(steps):
            if smoothing > 0:
                traces.append(
                    go.Scatter(
                        x=steps["global_step"],
                        y=steps["loss"],
                        mode="lines",
                        line={"color": c, "width": 1},
                        opacity=0.25,
                        legendgroup=name,
                        showlegend=False,
                        hoverinfo="skip",
                    )
                )
                cells.append((1, 1))
            traces.append(
                go.Scatter(
                    x=steps["global_step"],
                    y=smooth(steps["loss"], smoothing),
                    mode="lines",
                    line={"color": c},
                    name=f"{name} · train (steps)",
                    legendgroup=name,
                )
            )
            cells.append((1, 1))
        epochs = epoch_frame(history)
        for (train_key, val_key), cell in zip(CURVES.values(), panels):
            for key, dash, part in ((train_key, "dash", "train"), (val_key, "solid", "val")):
                if key not in epochs:
                    continue
                traces.append(
                    go.Scatter(
                        x=epochs["epoch"],
                        y=smooth(epochs[key], smoothing),
                        mode="lines+markers",
                        line={"color": c, "dash": dash},
                        marker={"size": 5},
                        name=f"{name} · {part}",
                        legendgroup=name,
                        showlegend=cell == (2, 1),
                    )
                )
                cells.append(cell)
    if traces:
        fig.add_traces(traces, rows=[r for r, _ in cells], cols=[c for _, c in cells])
    fig.update_xaxes(title_text="step", title_standoff=4, row=1, col=1)
    last_epoch = max((r.get("epoch", 0) for h in histories.values() for r in h), default=0)
    for row, col in panels:
        # Whole epochs only; let Plotly thin the ticks out for long runs.
        fig.update_xaxes(
            row=row, col=col, rangemode="tozero", dtick=1 if last_epoch <= 20 else None
        )
        if row == 3:
            fig.update_xaxes(title_text="epoch", row=row, col=col)
    for row, col in panels[1:]:
        fig.update_yaxes(range=[0, 1.02], row=row, col=col)
    fig.update_layout(
        height=height,
        margin={"t": 40, "b": 20, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.06},
        hovermode="x unified",
    )
    return fig


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


def _unit_square(fig: go.Figure, x_title: str, y_title: str) -> go.Figure:
    """The shared frame of ROC and PR charts: both axes 0..1, legend below."""
    fig.update_layout(
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=460,
        margin={"t": 30, "b": 10, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.18},
    )
    fig.update_xaxes(range=[-0.01, 1.01])
    fig.update_yaxes(range=[-0.01, 1.02])
    return fig


def roc_curves(reports: Mapping[str, dict], reference: bool = True) -> go.Figure:
    """ROC curve per run with its AUC in the legend and its operating point (the run's
    threshold); the published reference point, labelled as a different setup."""
    fig = go.Figure()
    fig.add_scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        line={"color": "gray", "dash": "dot"},
        name="chance",
        hoverinfo="skip",
    )
    for i, (name, report) in enumerate(reports.items()):
        if "roc" not in report:
            continue
        c = color(i)
        fig.add_scatter(
            x=report["roc"]["fpr"],
            y=report["roc"]["tpr"],
            mode="lines",
            line={"color": c},
            name=f"{name} (AUC {report['roc_auc']:.3f})",
            legendgroup=name,
        )
        fig.add_scatter(
            x=[1 - report["specificity"]],
            y=[report["sensitivity"]],
            mode="markers",
            marker={"color": c, "size": 10, "symbol": "circle-open", "line": {"width": 2}},
            name=f"{name} at threshold {report['threshold']:.2f}",
            legendgroup=name,
            showlegend=False,
        )
    if reference:
        ref = KERMANY_2018
        fig.add_scatter(
            x=[1 - ref["specificity"]],
            y=[ref["sensitivity"]],
            mode="markers+text",
            marker={"symbol": "star", "size": 14, "color": "black"},
            text=["Kermany 2018"],
            textposition="bottom right",
            name=f"{ref['label']} (AUC {ref['auc']:.3f})",
        )
    return _unit_square(
        fig, "1 - specificity (false positive rate)", "sensitivity (true positive rate)"
    )


def pr_curves(reports: Mapping[str, dict]) -> go.Figure:
    """Precision-recall curve per run with its average precision in the legend, and the
    share of pneumonia images (a random model's precision) as a dotted line."""
    fig, lines = go.Figure(), []
    for i, (name, report) in enumerate(reports.items()):
        if "pr" not in report:
            continue
        fig.add_scatter(
            x=report["pr"]["recall"],
            y=report["pr"]["precision"],
            mode="lines",
            line={"color": color(i)},
            name=f"{name} (AP {report['pr_auc']:.3f})",
        )
        if report.get("labels"):
            prevalence = float(np.mean(report["labels"]))
            lines.append(
                {
                    "type": "line",
                    "xref": "x domain",
                    "yref": "y",
                    "x0": 0,
                    "x1": 1,
                    "y0": prevalence,
                    "y1": prevalence,
                    "line": {"color": color(i), "dash": "dot", "width": 1},
                }
            )
    # One layout update: fig.add_hline per run costs 30 ms each.
    fig.update_layout(shapes=lines)
    return _unit_square(fig, "recall (sensitivity)", "precision")


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


def tradeoff(table: pd.DataFrame, score: str = "test_roc_auc") -> go.Figure:
    """Score against inference latency, marker size by model size: what a point costs."""
    data = table.dropna(subset=[score, "latency_ms"])
    fig = go.Figure()
    for i, row in enumerate(data.itertuples()):
        size = float(getattr(row, "size_mb", 0) or 0)
        fig.add_scatter(
            x=[row.latency_ms],
            y=[getattr(row, score)],
            mode="markers+text",
            text=[row.run],
            textposition="top center",
            marker={"size": 10 + 4 * np.sqrt(size), "color": color(i)},
            name=row.run,
            showlegend=False,
        )
    fig.update_layout(
        xaxis_title="latency per image (ms)",
        yaxis_title=score,
        height=360,
        margin={"t": 30, "b": 10, "l": 10, "r": 10},
    )
    return fig
