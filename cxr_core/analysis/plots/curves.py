"""Training curves: the loss per logged step and the epoch metrics, train against
validation, from the records of a run's history.jsonl."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxr_core.analysis.plots._palette import color

CURVES = {
    "loss": ("train_loss", "val_loss"),
    "accuracy": ("train_accuracy", "val_accuracy"),
    "F1": ("train_f1", "val_f1"),
    "AUC": ("train_roc_auc", "val_roc_auc"),
}
"""Panel name -> (train key, val key) in the history's epoch records."""

_PANELS = [(2, 1), (2, 2), (3, 1), (3, 2)]
"""The (row, column) of each of CURVES' panels, under the full-width step panel."""


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
    """Step records (the last one wins if a step was logged twice)."""
    rows = [r for r in history if r.get("type") == "step"]
    if not rows:
        return pd.DataFrame(columns=["global_step", "loss"])
    return pd.DataFrame(rows).drop_duplicates("global_step", keep="last").sort_values("global_step")


def _steps_per_epoch(steps: pd.DataFrame, epochs: pd.DataFrame) -> float:
    """Logged steps in a whole epoch: the last step of an epoch that ended (an epoch still
    running has not reached it), else the furthest step logged so far."""
    done = steps[steps["epoch"].isin(epochs["epoch"])] if "epoch" in epochs else steps[:0]
    return float(max((done if len(done) else steps)["step"].max(), 1))


def _step_traces(
    name: str, c: str, steps: pd.DataFrame, epochs: pd.DataFrame, smoothing: float
) -> list[go.Scatter]:
    """A run's loss per step on an axis of epochs: the raw loss faint when smoothed."""
    x = steps["epoch"] - 1 + steps["step"] / _steps_per_epoch(steps, epochs)
    traces = []
    if smoothing > 0:
        traces.append(
            go.Scatter(
                x=x,
                y=steps["loss"],
                mode="lines",
                line={"color": c, "width": 1},
                opacity=0.25,
                legendgroup=name,
                showlegend=False,
                hoverinfo="skip",
            )
        )
    traces.append(
        go.Scatter(
            x=x,
            y=smooth(steps["loss"], smoothing),
            mode="lines",
            line={"color": c},
            name=name,
            legendgroup=name,
            hovertemplate=f"{name}<br>epoch %{{x:.2f}}: loss %{{y:.3f}}<extra></extra>",
        )
    )
    return traces


def _epoch_traces(
    name: str, c: str, epochs: pd.DataFrame, smoothing: float, in_legend: bool
) -> tuple[list[go.Scatter], list[tuple[int, int]]]:
    """A run's epoch metrics, train dashed and validation solid, and their panels; the
    first one gets the run's legend entry when ``in_legend``."""
    traces, cells = [], []
    for (train_key, val_key), cell in zip(CURVES.values(), _PANELS):
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
                    name=name if in_legend else f"{name} · {part}",
                    legendgroup=name,
                    showlegend=in_legend,
                    hovertemplate=f"{name} · {part}: %{{y:.3f}}<extra></extra>",
                )
            )
            cells.append(cell)
            in_legend = False
    return traces, cells


def learning_curves(
    histories: Mapping[str, list[dict]], smoothing: float = 0.0, height: int | None = None
) -> go.Figure:
    """Training loss per logged step, then loss, accuracy, F1 and AUC per epoch, train
    (dashed) against validation (solid); one colour and one legend entry per run.

    Every x axis counts epochs (a step is a fraction of its epoch), so runs with different
    batch sizes line up; the y axes fit the data. Train accuracy/F1/AUC are running values
    over the epoch's augmented batches."""
    fig = make_subplots(
        rows=3,
        cols=2,
        specs=[[{"colspan": 2}, None], [{}, {}], [{}, {}]],
        subplot_titles=["training loss per step", *CURVES],
        vertical_spacing=0.1,
        horizontal_spacing=0.08,
    )
    # Added in one call: trace by trace, Plotly re-validates the figure each time (0.7 s
    # for 20 runs' 260 traces).
    traces, cells = [], []
    for i, (name, history) in enumerate(histories.items()):
        steps, epochs = step_frame(history), epoch_frame(history)
        has_steps = bool(len(steps)) and "step" in steps
        if has_steps:
            traces += _step_traces(name, color(i), steps, epochs, smoothing)
            cells += [(1, 1)] * (len(traces) - len(cells))
        more, where = _epoch_traces(name, color(i), epochs, smoothing, not has_steps)
        traces, cells = traces + more, cells + where
    for dash, part in (("dash", "train (dashed)"), ("solid", "validation (solid)")):
        # Legend entries for the two line styles, so runs get one entry each.
        traces.append(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                line={"color": "gray", "dash": dash},
                name=part,
                hoverinfo="skip",
            )
        )
        cells.append((2, 1))
    fig.add_traces(traces, rows=[r for r, _ in cells], cols=[c for _, c in cells])
    _epoch_axes(fig, histories)
    rows_of_legend = 1 + len(histories) // 3
    fig.update_layout(
        height=height or 760 + 22 * rows_of_legend,
        margin={"t": 40, "b": 20, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.06, "yanchor": "top"},
        hovermode="x unified",
    )
    return fig


def _epoch_axes(fig: go.Figure, histories: Mapping[str, list[dict]]) -> None:
    """Every x axis in whole epochs from 0; Plotly thins the ticks out for long runs."""
    last_epoch = max((r.get("epoch", 0) for h in histories.values() for r in h), default=0)
    for row, col in [(1, 1), *_PANELS]:
        fig.update_xaxes(
            row=row, col=col, rangemode="tozero", dtick=1 if last_epoch <= 20 else None
        )
    fig.update_xaxes(title_text="epoch", title_standoff=4, row=1, col=1)
    for _, col in _PANELS[2:]:
        fig.update_xaxes(title_text="epoch", row=3, col=col)
