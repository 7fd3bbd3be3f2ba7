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


def _steps_per_epoch(steps: pd.DataFrame, epochs: pd.DataFrame) -> float:
    """Logged steps in a whole epoch: the last step of an epoch that ended (an epoch still
    running has not reached it), else the furthest step logged so far."""
    done = steps[steps["epoch"].isin(epochs["epoch"])] if "epoch" in epochs else steps[:0]
    return float(max((done if len(done) else steps)["step"].max(), 1))


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
    panels = [(2, 1), (2, 2), (3, 1), (3, 2)]
    # Added in one call: trace by trace, Plotly re-validates the figure each time (0.7 s
    # for 20 runs' 260 traces).
    traces, cells = [], []
    for i, (name, history) in enumerate(histories.items()):
        c, in_legend = color(i), True
        steps, epochs = step_frame(history), epoch_frame(history)
        if len(steps) and "step" in steps:
            x = steps["epoch"] - 1 + steps["step"] / _steps_per_epoch(steps, epochs)
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
                cells.append((1, 1))
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
            cells.append((1, 1))
            in_legend = False
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
                        name=name if in_legend else f"{name} · {part}",
                        legendgroup=name,
                        showlegend=in_legend,
                        hovertemplate=f"{name} · {part}: %{{y:.3f}}<extra></extra>",
                    )
                )
                cells.append(cell)
                in_legend = False
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
    last_epoch = max((r.get("epoch", 0) for h in histories.values() for r in h), default=0)
    for row, col in [(1, 1), *panels]:
        # Whole epochs only; let Plotly thin the ticks out for long runs.
        fig.update_xaxes(
            row=row, col=col, rangemode="tozero", dtick=1 if last_epoch <= 20 else None
        )
    fig.update_xaxes(title_text="epoch", title_standoff=4, row=1, col=1)
    for _, col in panels[2:]:
        fig.update_xaxes(title_text="epoch", row=3, col=col)
    rows_of_legend = 1 + len(histories) // 3
    fig.update_layout(
        height=height or 760 + 22 * rows_of_legend,
        margin={"t": 40, "b": 20, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.06, "yanchor": "top"},
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


def forest(table: pd.DataFrame, keys: Sequence[str]) -> go.Figure:
    """A forest plot: each run's value and 95% interval (error bars), one panel per metric
    of the catalogue, the runs down a shared axis, each x axis fitted to its intervals.
    ``table`` holds ``run``, ``<key>``, ``<key>_lo`` and ``<key>_hi`` per metric."""
    from cxr_core.scoring.metrics import CATALOGUE

    fig = make_subplots(
        rows=1,
        cols=len(keys),
        shared_yaxes=True,
        horizontal_spacing=0.03,
        subplot_titles=[CATALOGUE[k].label for k in keys],
    )
    runs = list(table["run"])
    colors = [color(i) for i in range(len(runs))]
    traces = []
    for col, key in enumerate(keys, start=1):
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
            row=1,
            col=col,
        )
    fig.add_traces(traces, rows=[1] * len(traces), cols=list(range(1, len(traces) + 1)))
    fig.update_yaxes(categoryorder="array", categoryarray=runs[::-1], automargin=True)
    fig.update_layout(
        height=110 + 34 * len(runs),
        margin={"t": 40, "b": 10, "l": 10, "r": 10},
        hovermode="closest",
    )
    return fig


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
    rows = [1]
    for i, (name, bins) in enumerate(curves.items()):
        full = [b for b in bins if b["count"]]
        traces.append(
            go.Scatter(
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
        )
        rows.append(1)
        traces.append(
            go.Bar(
                x=[(b["bin_lo"] + b["bin_hi"]) / 2 for b in bins],
                y=[b["count"] for b in bins],
                width=[(b["bin_hi"] - b["bin_lo"]) / max(len(curves), 1) * 0.9 for b in bins],
                offset=[
                    (b["bin_hi"] - b["bin_lo"]) * (i / max(len(curves), 1) - 0.5) for b in bins
                ],
                marker_color=color(i),
                name=f"{name}: images per bin",
                legendgroup=name,
                showlegend=False,
                hovertemplate="%{y} images<extra></extra>",
            )
        )
        rows.append(2)
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


def shift(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Each run on its internal test split (grey circles) and on an outside set (red
    diamonds), joined by a line, with 95% intervals; one panel per metric, the runs down a
    shared axis, each x axis fitted to the intervals. ``frames`` maps a run to its
    :func:`cxr_core.analysis.report.shift_frame`."""
    from cxr_core.scoring.metrics import CATALOGUE

    keys = list(dict.fromkeys(k for f in frames.values() for k in f["metric"]))
    fig = make_subplots(
        rows=1,
        cols=len(keys),
        shared_yaxes=True,
        horizontal_spacing=0.03,
        subplot_titles=[CATALOGUE[k].label for k in keys],
    )
    runs = list(frames)
    style = {
        "internal": ("internal test split", "#7f7f7f", "circle"),
        "outside": ("outside set", "#d62728", "diamond"),
    }
    traces, cols = [], []
    for col, key in enumerate(keys, start=1):
        rows = pd.concat(
            [f[f["metric"] == key].assign(run=run) for run, f in frames.items()]
        ).set_index(["run", "where"])
        joins_x, joins_y = [], []
        for run in runs:
            joins_x += [
                rows.loc[(run, "internal"), "value"],
                rows.loc[(run, "outside"), "value"],
                None,
            ]
            joins_y += [run, run, None]
        traces.append(
            go.Scatter(
                x=joins_x,
                y=joins_y,
                mode="lines",
                showlegend=False,
                line={"color": "#bbbbbb", "width": 2},
                hoverinfo="skip",
            )
        )
        cols.append(col)
        for where, (label, c, symbol) in style.items():
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
                    showlegend=col == 1,
                    text=part["name"],
                    hovertemplate="%{y}: %{x:.3f} on %{text}<extra></extra>",
                )
            )
            cols.append(col)
        info = CATALOGUE[key]
        fig.update_xaxes(
            range=_fitted_range(rows["lo"].tolist() + rows["value"].tolist(), rows["hi"].tolist()),
            tickformat=".0%" if info.percent else ".2f",
            nticks=5,
            row=1,
            col=col,
        )
    fig.add_traces(traces, rows=[1] * len(cols), cols=cols)
    fig.update_yaxes(categoryorder="array", categoryarray=runs[::-1], automargin=True)
    fig.update_layout(
        height=150 + 34 * len(runs),
        margin={"t": 40, "b": 10, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.08, "yanchor": "top", "x": 0},
        hovermode="closest",
    )
    return fig
