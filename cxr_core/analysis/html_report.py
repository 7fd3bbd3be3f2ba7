"""What runs scored on the same images say, for the Compare page and the shared report:
each metric with its interval, paired tests, operating points chosen on validation, the
calibration (and a temperature fitted on validation, kept beside the run), the shift from
the internal split to an outside set; and one self-contained HTML file that says it all
offline (Plotly's JavaScript embedded once).

Nothing here is fitted or chosen on the set being compared: thresholds and temperatures
come from each run's own validation split.
"""

from __future__ import annotations

import html
import json
import math
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio

from cxr_core.analysis import plots
from cxr_core.analysis.comparison import compare_table, run_facts
from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_bytes, atomic_write_json, read_json
from cxr_core.predict.evalsets import EvalSet, fingerprint, run_sets
from cxr_core.scoring import calibration, stats
from cxr_core.scoring.metrics import CATALOGUE, choose_threshold, confusion, full_report
from cxr_core.settings import CLASSES
from cxr_core.store.runs import Run

VAL_THRESHOLDS = {
    "Youden's J": {"method": "youden"},
    "95% sensitivity": {"method": "sensitivity", "target_sensitivity": 0.95},
    "90% specificity": {"method": "specificity", "target_specificity": 0.90},
}
"""Thresholds a run may be given, each chosen on its own validation scores."""

HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc")
"""The metrics of the shift table and the default forest plot."""

FACT_LABELS = {
    "run": "run",
    "arch": "architecture",
    "pretrained": "ImageNet weights",
    "img_size": "image px",
    "params_M": "parameters (M)",
    "size_mb": "weights (MB)",
    "train_min": "training (min)",
    "best_epoch": "best epoch",
    "latency_ms": "latency (ms/image)",
}
"""The columns of :func:`run_facts` as people read them."""


# --------------------------------------------------------------------------- sets

_SETS: dict[Path, tuple[tuple, dict[str, EvalSet]]] = {}


def scored_sets(run: Run) -> dict[str, EvalSet]:
    """:func:`run_sets`, read again only when one of the run's records changed: a page
    asks for them many times per rerun, and each read parses every record (evaluation.json
    alone is 140 KB). The sets are shared: read them, never change them."""
    files = [run.path / "evaluation.json", run.path / "split.json"]
    if run.evaluations_dir.is_dir():
        files += sorted(run.evaluations_dir.glob("*.json"))
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())
    cached = _SETS.get(run.path)
    if cached is None or cached[0] != stamp:
        if len(_SETS) > 256:
            _SETS.clear()
        cached = _SETS[run.path] = (stamp, run_sets(run))
    return cached[1]


def sets_on(runs: list[Run], key: str) -> dict[str, EvalSet]:
    """Each run's scores on the image set ``key`` (by run id); a UserError names the runs
    never scored on it."""
    found = {r.id: scored_sets(r).get(key) for r in runs}
    missing = [i for i, s in found.items() if s is None]
    if missing:
        raise UserError(f"not scored on that image set: {', '.join(missing)}")
    return found


def split_set(run: Run, split: str) -> EvalSet | None:
    """The run's scores on one of its own splits ("val", "internal_test"), or None."""
    found = [s for s in scored_sets(run).values() if s.split == split]
    return max(found, key=lambda s: s.n) if found else None


def outside_set(run: Run, prefer: str | None = None) -> EvalSet | None:
    """The run's scores on images from outside its training folder's split: the set
    ``prefer`` when it is one, else the biggest (the 16-film official val/ only when there
    is nothing else); None when it has none."""
    outside = [s for s in scored_sets(run).values() if not s.internal]
    for s in outside:
        if s.key == prefer:
            return s
    return max(outside, key=lambda s: (s.split != "official_val", s.n), default=None)


# --------------------------------------------------------------------------- numbers


def readable_table(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`compare_table` as people read it: one column per catalogue metric, named
    by its label, holding "91.2% (88.9-93.3)"; the headline metrics first (on a narrow
    screen the last columns are the ones scrolled out of sight)."""
    out = pd.DataFrame({"run": table["run"]})
    for key in dict.fromkeys([*HEADLINE, *CATALOGUE]):
        info = CATALOGUE[key]
        out[info.label] = [
            stats.format_ci(r[key], (r[f"{key}_lo"], r[f"{key}_hi"]), info.percent)
            for r in table.to_dict("records")
        ]
    out["threshold"] = table["threshold"].round(3)
    return out


def paired(sets: dict[str, EvalSet]) -> list[dict]:
    """Every pair of runs on the same images: McNemar, DeLong and a verdict (Holm-adjusted
    over the pairs when there are more than one)."""
    first = next(iter(sets.values()))
    return stats.pairwise_table(
        list(sets),
        first.labels,
        {i: s.probs for i, s in sets.items()},
        {i: s.threshold for i, s in sets.items()},
    )


def pairs_table(pairs: list[dict]) -> pd.DataFrame:
    """The pairwise comparisons as a readable table (differences are a - b)."""
    holm = len(pairs) > 1
    adjusted, suffix = ("_holm", " (Holm)") if holm else ("", "")
    rows = []
    for p in pairs:
        lo, hi = p["roc_auc_diff_ci95"]
        rows.append(
            {
                "a": p["a"],
                "b": p["b"],
                "accuracy a - b": f"{100 * p['accuracy_diff']:+.1f} points",
                f"McNemar p{suffix}": stats.format_p(p[f"mcnemar_p{adjusted}"]),
                "AUC a - b": stats.format_ci(p["roc_auc_diff"], (lo, hi), percent=False),
                f"DeLong p{suffix}": stats.format_p(p[f"delong_p{adjusted}"]),
                "verdict": p["verdict"],
            }
        )
    return pd.DataFrame(rows)


def curve_report(evalset: EvalSet) -> dict:
    """What the ROC/PR charts and the per-class report draw for one set."""
    return full_report(evalset.labels, evalset.probs, evalset.threshold)


def operating_point(evalset: EvalSet, threshold: float) -> dict:
    """The decisions at ``threshold`` on ``evalset``: confusion matrix, the rates, and per
    1000 children at the set's prevalence how many pneumonias are missed and how many
    normal films are called pneumonia."""
    (tn, fp), (fn, tp) = confusion(evalset.labels, evalset.probs, threshold)
    values = evalset.metrics(threshold)
    n = max(evalset.n, 1)
    return {
        "threshold": threshold,
        "confusion": [[tn, fp], [fn, tp]],
        "accuracy": values["accuracy"],
        "sensitivity": values["sensitivity"],
        "specificity": values["specificity"],
        "PPV": values["precision"],
        "NPV": values["npv"],
        "prevalence": float(np.mean(evalset.labels)) if evalset.n else math.nan,
        "missed_per_1000": 1000 * fn / n,
        "false_alarms_per_1000": 1000 * fp / n,
    }


def val_thresholds(run: Run) -> dict[str, float]:
    """The thresholds of :data:`VAL_THRESHOLDS`, chosen on the run's validation scores;
    empty when the run kept none."""
    val = split_set(run, "val")
    if val is None or len(np.unique(val.labels)) < 2:
        return {}
    return {
        name: choose_threshold(val.labels, val.probs, **kwargs)
        for name, kwargs in VAL_THRESHOLDS.items()
    }


def operating_points(run: Run, evalset: EvalSet) -> pd.DataFrame:
    """Where the run's own threshold and each validation-chosen one land on ``evalset``."""
    marks = {"run's threshold": evalset.threshold} | {
        f"{name} on val": t for name, t in val_thresholds(run).items()
    }
    rows = []
    for name, threshold in marks.items():
        point = operating_point(evalset, threshold)
        rows.append(
            {
                "threshold": name,
                "value": round(threshold, 4),
                **{k: _pct(point[k]) for k in ("sensitivity", "specificity", "PPV", "NPV")},
                "missed / 1000": round(point["missed_per_1000"]),
                "false alarms / 1000": round(point["false_alarms_per_1000"]),
            }
        )
    return pd.DataFrame(rows)


def shift_frame(internal: EvalSet, outside: EvalSet) -> pd.DataFrame:
    """The same run on its internal test split and on an outside set: per headline metric
    and set (``where``: internal or outside; ``name``), its ``value``, ``lo`` and ``hi``."""
    rows = []
    for where, evalset in (("internal", internal), ("outside", outside)):
        values, ci = evalset.metrics(), evalset.ci95()
        for key in HEADLINE:
            lo, hi = ci[key]
            rows.append(
                {
                    "metric": key,
                    "where": where,
                    "name": evalset.name,
                    "value": values[key],
                    "lo": lo,
                    "hi": hi,
                }
            )
    return pd.DataFrame(rows)


def shift_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A :func:`shift_frame` as people read it: per metric, both sets (named in the column
    headers) with their intervals, and the gap."""
    rows = []
    for key in HEADLINE:
        info = CATALOGUE[key]
        both = frame[frame["metric"] == key].set_index("where")
        row = {"metric": info.label}
        for where in ("internal", "outside"):
            r = both.loc[where]
            row[r["name"]] = stats.format_ci(r["value"], (r["lo"], r["hi"]), info.percent)
        gap = both.loc["outside", "value"] - both.loc["internal", "value"]
        row["gap"] = f"{100 * gap:+.1f} points" if info.percent else f"{gap:+.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def shifts(runs: list[Run], compared: EvalSet) -> dict[str, pd.DataFrame]:
    """:func:`shift_frame` of each run that has both an internal test split and an outside
    set (the compared one when it is outside)."""
    out = {}
    for run in runs:
        internal, outside = split_set(run, "internal_test"), outside_set(run, compared.key)
        if internal is not None and outside is not None:
            out[run.id] = shift_frame(internal, outside)
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%" if math.isfinite(value) else "n/a"


# --------------------------------------------------------------------------- calibration


def calibration_file(run: Run) -> Path:
    """Beside the run's added evaluation sets (a bundled run's in the writable store, so
    checkpoints/ is never written)."""
    return run.evaluations_dir.parent / "calibration.json"


def saved_temperature(run: Run) -> dict | None:
    """The temperature fitted on the run's validation scores, if one was: ``temperature``,
    ``fitted_on`` (the validation set's fingerprint), ``n``."""
    file = calibration_file(run)
    return read_json(file) if file.is_file() else None


def fit_temperature(run: Run) -> dict:
    """Fit a temperature on the run's VALIDATION scores (never a test set) and keep it
    beside the run; the saved run, its weights and threshold are unchanged."""
    val = split_set(run, "val")
    if val is None:
        raise UserError(f"run {run.id} kept no validation scores to fit a temperature on")
    record = {
        "temperature": calibration.fit_temperature(val.labels, val.probs),
        "fitted_on": val.key,
        "split": val.split,
        "n": val.n,
        "created": time.time(),
    }
    atomic_write_json(calibration_file(run), record)
    return record


def calibration_summary(evalset: EvalSet, temperature: float | None = None) -> dict:
    """Reliability bins, ECE and Brier score of ``evalset``, and the same after
    temperature scaling when a temperature is given (under ``after``)."""

    def assess(probs: np.ndarray) -> dict:
        return {
            "bins": calibration.reliability_bins(evalset.labels, probs),
            "ece": calibration.expected_calibration_error(evalset.labels, probs),
            "brier": calibration.brier_score(evalset.labels, probs),
        }

    out = {"before": assess(evalset.probs)}
    if temperature is not None:
        out["temperature"] = temperature
        out["after"] = assess(calibration.apply_temperature(evalset.probs, temperature))
    return out


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
    split = run.split() or {}
    train = [
        s["path"] if isinstance(s, dict) else s[0] for s in split.get("splits", {}).get("train", [])
    ]
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
    figure, esc = _Figures(), html.escape
    table = compare_table(runs, sets)
    n_pos = int(first.labels.sum())
    parts = [
        f"<h1>CXR Lab: {len(runs)} run(s) compared</h1>",
        f"<p class='note'>Made {time.strftime('%Y-%m-%d %H:%M')}. Not a medical device: for "
        "learning and research only.</p>",
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
    facts = pd.DataFrame([run_facts(r) | {"trained on": _training_data(r)} for r in runs])
    facts = facts.rename(columns=FACT_LABELS)
    parts += ["<h2>Runs</h2>", _table(facts), "<details><summary>Configurations</summary>"]
    for run in runs:
        config = {k: v for k, v in run.config().items() if k != "command"}
        parts.append(
            f"<h3>{esc(run.id)}</h3><p><code>{esc(run.config().get('command', ''))}</code></p>"
            f"<pre>{esc(json.dumps(config, indent=1))}</pre>"
        )
    parts.append("</details>")
    env = pd.DataFrame([{"run": r.id, **r.environment()} for r in runs])
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    parts += [
        "<h2>Software</h2>",
        f"<p>Report made with {esc(versions)}. Each run was trained with:</p>",
        _table(env),
    ]
    parts += [
        "<h2>Metrics with 95% confidence intervals</h2>",
        "<p class='note'>Intervals from 1000 bootstrap resamples of patients (a patient's "
        "images go together), at each run's own threshold, chosen on its validation split."
        "</p>",
        _table(readable_table(table).assign(n=table["n"])),
        figure(plots.forest(table, HEADLINE)),
    ]
    if len(sets) > 1:
        pairs = paired(sets)
        parts += [
            "<h2>Paired tests</h2>",
            "<p class='note'>McNemar's exact test on the decisions, DeLong's test on the AUCs"
            + (", p-values adjusted by Holm over all pairs" if len(pairs) > 1 else "")
            + ".</p>",
            _table(pairs_table(pairs).drop(columns="verdict")),
            "<ul>"
            + "".join(
                f"<li><b>{esc(p['a'])} vs {esc(p['b'])}</b>: {esc(p['verdict'])}</li>"
                for p in pairs
            )
            + "</ul>",
        ]
    reports = {run_id: curve_report(s) for run_id, s in sets.items()}
    parts += [
        "<h2>ROC and precision-recall</h2>",
        figure(plots.roc_pr(reports)),
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
        parts += [f"<h3>{esc(run.id)}</h3>", _table(operating_points(run, sets[run.id]))]
    parts += _calibration_section(runs, sets, figure)
    parts += _shift_section(runs, first, figure)
    histories = {r.id: r.history() for r in runs}
    if any(histories.values()):
        parts += ["<h2>Learning curves</h2>", figure(plots.learning_curves(histories))]
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>CXR Lab report: {esc(first.name)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )


def _calibration_section(runs: list[Run], sets: dict[str, EvalSet], figure) -> list[str]:
    curves, rows = {}, []
    for run in runs:
        saved = saved_temperature(run)
        summary = calibration_summary(sets[run.id], saved and saved["temperature"])
        curves[run.id] = summary["before"]["bins"]
        row = {
            "run": run.id,
            "ECE": round(summary["before"]["ece"], 4),
            "Brier": round(summary["before"]["brier"], 4),
        }
        if "after" in summary:
            row |= {
                "temperature (fitted on val)": round(summary["temperature"], 3),
                "ECE after": round(summary["after"]["ece"], 4),
                "Brier after": round(summary["after"]["brier"], 4),
            }
        rows.append(row)
    return [
        "<h2>Calibration</h2>",
        "<p class='note'>Does P(pneumonia) = 0.8 come true 80% of the time? ECE: the mean "
        "gap between predicted and observed over 10 bins; Brier: mean squared error of the "
        "probabilities. A temperature is only ever fitted on a run's validation split.</p>",
        _table(pd.DataFrame(rows)),
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
        parts += [f"<h3>{html.escape(run_id)}</h3>", _table(shift_table(frame))]
    return parts


def write_report(runs: list[Run], sets: dict[str, EvalSet], out: Path | str) -> Path:
    """Write :func:`html_report` to ``out`` (whole or not at all); returns the file."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder; name the report file, e.g. {out / 'report.html'}")
    atomic_write_bytes(out, html_report(runs, sets).encode())
    return out
