"""The shared report: the whole comparison of runs on one image set (see
:mod:`cxr_core.analysis.comparison`) as one self-contained HTML file that says it all
offline (Plotly's JavaScript embedded once)."""

from __future__ import annotations

import html
import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import plotly.io as pio

from cxr_core.analysis import plots
from cxr_core.analysis.comparison import (
    FACT_LABELS,
    HEADLINE,
    compare_table,
    curve_report,
    operating_points,
    paired,
    pairs_table,
    readable_table,
    run_facts,
    shift_names,
    shift_table,
    shifts,
    shows_reference,
)
from cxr_core.analysis.run_calibration import calibration_summaries, calibration_table
from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_bytes
from cxr_core.predict.evalsets import EvalSet, fingerprint
from cxr_core.settings import CLASSES
from cxr_core.store.runs import Run

# --------------------------------------------------------------------------- the HTML file

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#1f2430;line-height:1.45}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #d7dae0;padding:.25rem .5rem;text-align:left;vertical-align:top;
white-space:nowrap}.scroll{overflow-x:auto}
th{background:#f3f4f7}.note{color:#5a6070;font-size:.9rem}.grid{display:flex;flex-wrap:wrap;
gap:1rem}.grid>div{flex:1 1 360px}.warn{background:#fff4e0;border-left:4px solid #f0a020;
padding:.5rem .8rem}code{background:#f3f4f7;padding:0 .2rem}
"""


class _Figures:
    """Plotly figures as HTML fragments; the first one carries plotly.js, the rest reuse it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig) -> str:
        self.count += 1
        return pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=self.count == 1,
            include_mathjax=False,
            config={"displaylogo": False, "responsive": True},
            div_id=f"figure-{self.count}",
        )


def _table(frame: pd.DataFrame) -> str:
    html_table = frame.to_html(index=False, escape=True, border=0, na_rep="-")
    return f"<div class='scroll'>{html_table}</div>"


def _versions() -> dict[str, str]:
    """The software that made the report (each run's own is in its env.json)."""
    out = {"python": platform.python_version()}
    for package in ("torch", "numpy", "scikit-learn", "scipy", "statsmodels", "plotly"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def _training_data(run: Run) -> str:
    """The run's training data and the fingerprint of its train split's images."""
    manifest = run.manifest()
    train = [s.path for s in manifest.splits.get("train", [])] if manifest else []
    data = run.config().get("data") or "?"
    return f"{data} (train images {fingerprint(train)})" if train else str(data)


def html_report(runs: list[Run], sets: dict[str, EvalSet]) -> str:
    """The whole comparison of ``runs`` on their shared image set (``sets`` by run id) as
    one HTML page that needs no network: runs and configs, the data and its fingerprint,
    software versions, metrics with 95% intervals, paired tests, ROC/PR, confusion
    matrices, operating points, calibration, the shift and learning curves."""
    if not runs:
        raise UserError("a report needs at least one run")
    first = next(iter(sets.values()))
    if any(s.key != first.key for s in sets.values()):
        raise UserError("the runs of a report must be scored on the same images")
    figure = _Figures()
    parts = [
        f"<h1>CXR Lab: {len(runs)} run(s) compared</h1>",
        f"<p class='note'>Made {time.strftime('%Y-%m-%d %H:%M')}. Not a medical device: for "
        "learning and research only.</p>",
        *_images_section(first),
        *_runs_section(runs),
        *_metrics_section(runs, sets, figure),
        *_paired_section(sets),
        *_curves_section(runs, sets, figure),
        *_calibration_section(runs, sets, figure),
        *_shift_section(runs, first, figure),
    ]
    histories = {r.id: r.history() for r in runs}
    if any(histories.values()):
        parts += ["<h2>Learning curves</h2>", figure(plots.learning_curves(histories))]
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>CXR Lab report: {html.escape(first.name)}</title><style>{_CSS}</style>"
        f"</head><body>{body}</body></html>"
    )


def _images_section(first: EvalSet) -> list[str]:
    """The compared image set: its size, classes, patients and fingerprint."""
    esc, n_pos = html.escape, int(first.labels.sum())
    parts = [
        "<h2>The images</h2>",
        f"<p><b>{esc(first.name)}</b>: {first.n} images ({first.n - n_pos} {CLASSES[0]}, "
        f"{n_pos} {CLASSES[1]}), {len(set(first.patients))} patients; image-set fingerprint "
        f"<code>{esc(first.key)}</code>"
        + (f", folder <code>{esc(first.root)}</code>" if first.root else "")
        + ".</p>",
    ]
    if first.internal:
        parts.append(
            "<p class='warn'>An internal split, carved from the training folder: the "
            "training distribution, easier than an outside test set.</p>"
        )
    return parts


def _made_by(run: Run) -> str:
    """The command that made the run, or how it was made without one (an ensemble made on
    the Compare page, a run launched from the Train page records none)."""
    command = run.config().get("command")
    if command:
        return f"<code>{html.escape(str(command))}</code>"
    return "Made in the app (no command line)."


def _runs_section(runs: list[Run]) -> list[str]:
    """What each run is, its configuration, and the software it and the report ran on."""
    esc = html.escape
    facts = pd.DataFrame([run_facts(r) | {"trained on": _training_data(r)} for r in runs])
    facts = facts.rename(columns=FACT_LABELS)
    parts = ["<h2>Runs</h2>", _table(facts), "<details><summary>Configurations</summary>"]
    for run in runs:
        config = {k: v for k, v in run.config().items() if k != "command"}
        parts.append(
            f"<h3>{esc(run.id)}</h3><p>{_made_by(run)}</p>"
            f"<pre>{esc(json.dumps(config, indent=1))}</pre>"
        )
    parts.append("</details>")
    env = pd.DataFrame([{"run": r.id, **r.environment()} for r in runs])
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    return [
        *parts,
        "<h2>Software</h2>",
        f"<p>Report made with {esc(versions)}. Each run was trained with:</p>",
        _table(env),
    ]


def _metrics_section(runs: list[Run], sets: dict[str, EvalSet], figure: _Figures) -> list[str]:
    """Every metric with its 95% interval, as a table and a forest plot."""
    table = compare_table(runs, sets)
    return [
        "<h2>Metrics with 95% confidence intervals</h2>",
        "<p class='note'>Intervals from 1000 bootstrap resamples of patients (a patient's "
        "images go together), at each run's own threshold, chosen on its validation split."
        "</p>",
        _table(readable_table(table).assign(n=table["n"])),
        figure(plots.forest(table, HEADLINE)),
    ]


def _paired_section(sets: dict[str, EvalSet]) -> list[str]:
    """McNemar and DeLong for each pair of runs, and their verdicts (none for one run)."""
    if len(sets) < 2:
        return []
    esc, pairs = html.escape, paired(sets)
    return [
        "<h2>Paired tests</h2>",
        "<p class='note'>McNemar's exact test on the decisions, DeLong's test on the AUCs"
        + (", p-values adjusted by Holm over all pairs" if len(pairs) > 1 else "")
        + ".</p>",
        _table(pairs_table(pairs)),
        "<ul>"
        + "".join(f"<li><b>{esc(p.a)} vs {esc(p.b)}</b>: {esc(p.verdict)}</li>" for p in pairs)
        + "</ul>",
    ]


def _curves_section(runs: list[Run], sets: dict[str, EvalSet], figure: _Figures) -> list[str]:
    """ROC and PR curves, confusion matrices and each run's operating points."""
    first = next(iter(sets.values()))
    n_pos = int(first.labels.sum())
    reports = {run_id: curve_report(s) for run_id, s in sets.items()}
    parts = [
        "<h2>ROC and precision-recall</h2>",
        figure(plots.roc_pr(reports, reference=shows_reference(first))),
        "<h2>Confusion matrices</h2><div class='grid'>",
    ]
    for run_id, report in reports.items():
        title = f"{run_id} (threshold {report['threshold']:.3f})"
        parts.append(
            f"<div>{figure(plots.confusion_matrix(report['confusion_matrix'], False, title))}</div>"
        )
    parts += [
        "</div><h2>Operating points</h2>",
        "<p class='note'>Where each run's threshold, and thresholds chosen on its validation "
        "split, land on these images; per 1000 children at this set's prevalence "
        f"({100 * n_pos / max(first.n, 1):.1f}% pneumonia).</p>",
    ]
    for run in runs:
        parts += [f"<h3>{html.escape(run.id)}</h3>", _table(operating_points(run, sets[run.id]))]
    return parts


def _calibration_section(runs: list[Run], sets: dict[str, EvalSet], figure: _Figures) -> list[str]:
    """ECE and Brier of each run, before and after a temperature fitted on validation."""
    summaries = calibration_summaries(runs, sets)
    table = calibration_table(summaries).round(4)
    if "temperature" in table:
        table["temperature"] = table["temperature"].round(3)
    table = table.rename(columns={"temperature": "temperature (fitted on val)"})
    curves = {run_id: summary["before"]["bins"] for run_id, summary in summaries.items()}
    return [
        "<h2>Calibration</h2>",
        "<p class='note'>Does P(pneumonia) = 0.8 come true 80% of the time? ECE: the mean "
        "gap between predicted and observed over 10 bins; Brier: mean squared error of the "
        "probabilities. A temperature is only ever fitted on a run's validation split.</p>",
        _table(table),
        figure(plots.reliability(curves)),
    ]


def _shift_section(runs: list[Run], compared: EvalSet, figure) -> list[str]:
    """Internal test split against an outside set, for the runs that have both."""
    frames = shifts(runs, compared)
    if not frames:
        return []
    parts = [
        "<h2>The shift</h2><p class='note'>Each run on its internal test split (carved from "
        "the training folder) and on images from outside it.</p>",
        figure(plots.shift(frames)),
    ]
    for run_id, frame in frames.items():
        parts += [
            f"<h3>{html.escape(run_id)}</h3>",
            f"<p class='note'>{html.escape(shift_names(frame))}</p>",
            _table(shift_table(frame)),
        ]
    return parts


def write_report(runs: list[Run], sets: dict[str, EvalSet], out: Path | str) -> Path:
    """Write :func:`html_report` to ``out`` (whole or not at all); returns the file."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder; name the report file, e.g. {out / 'report.html'}")
    atomic_write_bytes(out, html_report(runs, sets).encode())
    return out
